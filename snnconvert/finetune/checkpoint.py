"""Per-epoch training checkpoints, written atomically so that a crash never leaves a torn file."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .. import ir
from ..errors import DataError

FORMAT = "snnconvert-finetune-1"


def save(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    ir.atomic_write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save`; anything else is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path} is not a snnconvert fine-tuning checkpoint")
    return state
