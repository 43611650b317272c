"""The pass API: every pass maps an ONNX model to an ONNX model under a shared context.

A pass is any callable ``(model, ctx) -> model`` with a ``name``; subclass :class:`Pass`
for the usual case. Passes must not mutate their input model: copy it first
(:func:`copy_model`); :class:`Pass` does. They report what they did through ``ctx.log``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx


@dataclass
class PassContext:
    """State shared by the passes of one pipeline run.

    calib      calibration inputs (float32, model input layout), or None
    timesteps  the T the network is tuned for (data-optimized init uses it)
    stats      activation statistics from the calibration pass, keyed by tensor name
    log        (pass name, message) pairs, printed by the CLI
    options    free-form options for user passes
    device     the torch device of the passes that train (the distillation); the others run on the CPU
    """

    calib: np.ndarray | None = None
    timesteps: int = 32
    stats: dict[str, Any] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    device: str = "cpu"

    def info(self, pass_name: str, message: str) -> None:
        self.log.append((pass_name, message))


@runtime_checkable
class PassLike(Protocol):
    name: str

    def __call__(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto: ...


class Pass:
    """Base class: override :meth:`run`, which may change the model it is given in place;
    ``__call__`` gives it a copy. A pipeline that owns the model (no one else holds it) calls
    :meth:`run` on it directly: one copy of the weights fewer per pass (575 MB on VGG-19).
    A pass that keeps its input as it came sets ``changes_input = False`` and copies itself."""

    name: str = "pass"
    changes_input: bool = True

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        return self.run(copy_model(model) if self.changes_input else model, ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
