"""torch.distributed in one place: process-group set-up from torchrun's environment, this
process's rank, and exact reductions of counts and maxima.

Every helper is a no-op in a single process, so callers never branch on "distributed or not".
Reductions run on CPU tensors of float64/int64: sums of integer counts (below 2**53) and maxima
are exact whatever the process count, which is what makes distributed evaluation and
calibration statistics equal to a single-process run.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .errors import OptionError


def _dist():
    if "torch" not in sys.modules:  # no process group can exist yet: do not pay torch's import
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> str:
    """Join the process group torchrun describes (``gloo`` for CPU, ``nccl`` for CUDA).

    Returns the device this rank should use (``cuda:LOCAL_RANK`` for CUDA). Outside a
    launcher it does nothing and returns ``device`` unchanged.
    """
    if not launched():
        return device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise OptionError("--device cuda asked for but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (before the process exits, so no rank waits on a dead peer)."""
    d = _dist()
    if d is not None:
        d.destroy_process_group()


def rank() -> int:
    d = _dist()
    return d.get_rank() if d is not None else 0


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d is not None else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    d = _dist()
    if d is not None:
        d.barrier()


def _reduce(values: np.ndarray, op: str) -> np.ndarray:
    d = _dist()
    if d is None:
        return values
    import torch

    t = torch.from_numpy(np.array(values, order="C"))  # a copy that keeps a 0-d array 0-d
    # (np.ascontiguousarray made it 1-d, and numpy 2 refuses int() of a 1-d array)
    if d.get_backend() == "nccl":  # nccl reduces device tensors only
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    d.all_reduce(t, op=getattr(d.ReduceOp, op))
    return t.cpu().numpy()


def all_sum(values: np.ndarray | float | int) -> np.ndarray:
    """Element-wise sum over ranks (exact for integer-valued float64 and int64)."""
    arr = np.asarray(values)
    dtype = np.int64 if arr.dtype.kind in "iub" else np.float64
    return _reduce(arr.astype(dtype), "SUM")


def all_max(values: np.ndarray | float) -> np.ndarray:
    """Element-wise maximum over ranks."""
    return _reduce(np.asarray(values, np.float64), "MAX")


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    d = _dist()
    if d is None:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0)
    return box[0]
