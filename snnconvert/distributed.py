"""torch.distributed in one place: process-group set-up from torchrun's environment, this
process's rank, and exact reductions of counts and maxima.

Every helper is a no-op in a single process, so callers never branch on "distributed or not".
Reductions run on CPU tensors of float64/int64: sums of integer counts (below 2**53) and maxima
are exact whatever the process count, which is what makes distributed evaluation and
calibration statistics equal to a single-process run.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import sys
import time
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from .errors import OptionError

if TYPE_CHECKING:
    import torch


# The tensors handed to collectives that a backend thread may still hold. A gloo worker wakes
# the caller when a collective is done and drops its own reference a moment later; had the
# caller dropped its Python object first, the worker must take the GIL to free it, and if this
# rank has meanwhile finished and its interpreter is finalizing, Python ends that thread inside
# C++: "terminate called without an active exception", SIGABRT, and torchrun reports the run
# failed after its results were written (two-process eval, once in CI and twice in 40 runs on
# a loaded machine). Held here, a tensor is freed by this thread once the backend has let go of
# it, and a process that ends waits (`_let_go`, at exit) until the backend has let go of all.
_HANDED: list[torch.Tensor] = []


def _hand(t: torch.Tensor) -> torch.Tensor:
    """``t``, held until the backend lets go of it; those it has let go of are released."""
    _HANDED[:] = [h for h in _HANDED if h._use_count() > 1]  # 1: only our own reference
    _HANDED.append(t)
    return t


def _let_go(wait_s: float = 5.0) -> None:
    """Wait (at most ``wait_s``) for the backend to let go of the tensors still handed to it."""
    end = time.monotonic() + wait_s
    while any(h._use_count() > 1 for h in _HANDED) and time.monotonic() < end:
        time.sleep(0.001)
    _HANDED.clear()


atexit.register(_let_go)  # at exit, before the interpreter finalizes


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


def end_process(code: int) -> NoReturn:
    """End a launched rank with ``code`` once its work is done and written, without the
    interpreter's teardown (as multiprocessing ends its children): a backend thread still
    finishing its last work when the interpreter finalizes is killed mid-C++ and aborts the
    process, and torchrun then reports the whole run failed after it succeeded."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing to keep
            stream.flush()
    os._exit(code)


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

    # torch's own copy (a 0-d array stays 0-d: numpy 2 refuses int() of a 1-d one), whose
    # memory is not a numpy array's, which only a thread holding the GIL may free
    t = _hand(_on_backend(torch.tensor(np.asarray(values)), d))
    d.all_reduce(t, op=getattr(d.ReduceOp, op))
    return t.cpu().numpy()


def _on_backend(t: torch.Tensor, d) -> torch.Tensor:
    """``t`` where the backend reduces: nccl only reduces device tensors."""
    import torch

    if d.get_backend() == "nccl":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def all_sum(values: np.ndarray | float | int) -> np.ndarray:
    """Element-wise sum over ranks (exact for integer-valued float64 and int64)."""
    arr = np.asarray(values)
    dtype = np.int64 if arr.dtype.kind in "iub" else np.float64
    return _reduce(arr.astype(dtype), "SUM")


def all_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks in place, on its own device (for values that stay on a GPU)."""
    d = _dist()
    if d is not None:
        d.all_reduce(_hand(t))
    return t


def all_max(values: np.ndarray | float) -> np.ndarray:
    """Element-wise maximum over ranks."""
    return _reduce(np.asarray(values, np.float64), "MAX")


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    d = _dist()
    if d is None:
        return obj
    import torch

    # torch's broadcast_object_list, with its two tensors held by _hand
    data = pickle.dumps(obj) if d.get_rank() == 0 else b""
    size = _hand(_on_backend(torch.tensor([len(data)], dtype=torch.int64), d))
    d.broadcast(size, src=0)
    if d.get_rank() == 0:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # one copy, held by _hand
    else:
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
    payload = _hand(_on_backend(payload, d))
    d.broadcast(payload, src=0)
    return obj if d.get_rank() == 0 else pickle.loads(payload.cpu().numpy().tobytes())
