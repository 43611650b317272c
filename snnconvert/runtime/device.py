"""The torch device a user names, checked once, before any work: a name torch does not know,
or a GPU torch cannot see, is the user's error (the CLI exits 2), not a failure deep inside a run."""
from __future__ import annotations

import torch

from ..errors import OptionError


def torch_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device, refused with a hint when torch cannot run on it here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown torch device '{name}'", hint="Use cpu or cuda (cuda:N for the N-th GPU).") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device '{name}' asked for but torch sees no CUDA device",
                              hint="Use --device cpu, or install a torch build with CUDA.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"device '{name}' asked for but torch sees {torch.cuda.device_count()} CUDA device(s)",
                              hint=f"Use cuda:0 … cuda:{torch.cuda.device_count() - 1}.")
    elif device.type != "cpu":
        raise OptionError(f"device '{name}' is not supported", hint="Use cpu or cuda.")
    return device
