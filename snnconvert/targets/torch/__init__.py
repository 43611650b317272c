"""The PyTorch target: a trainable nn.Module (CPU or CUDA) built from the IR.

Artifact: a ``.pt`` file holding the IR bytes and the module's state, loadable with
:func:`load` into a :class:`~snnconvert.runtime.SpikingNetwork`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import onnx
import torch

from ... import ir
from ...errors import OptionError
from ...runtime import SpikingNetwork
from ...runtime.device import torch_device
from ...results import SimResult

from .support import supports

__all__ = ["compile", "load", "evaluate", "simulator", "read_ir", "supports", "SpikingNetwork"]

TIME_VARYING_INPUT = True
"""Runs one input per step (x [N, T, ...]) and every input encoding and readout of the IR."""

STEP_BIAS = True
"""Neuron step biases run in the runtime (as fixed buffers, not trained)."""


def compile(model: onnx.ModelProto, out: str | os.PathLike, **options) -> Path:
    """Write ``out`` (.pt): the IR and the module state, written whole or not at all."""
    net = SpikingNetwork(model, **options)
    buf = io.BytesIO()
    torch.save({"ir": model.SerializeToString(), "state_dict": net.state_dict(),
                "options": options}, buf)
    ir.atomic_write_bytes(out, buf.getvalue())
    return Path(out)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> SpikingNetwork:
    """A SpikingNetwork from a ``.pt`` artifact or a ``.snn.onnx`` file."""
    path, device = str(path), torch_device(device)
    if path.endswith(".pt"):
        blob = torch.load(path, map_location=device, weights_only=False)
        net = SpikingNetwork(onnx.load_from_string(blob["ir"]), **blob.get("options", {}))
        missing, unexpected = net.load_state_dict(blob["state_dict"], strict=False)
        if unexpected or any(not k.startswith("leaks.") for k in missing):  # older artifacts: leaks from the IR
            net.load_state_dict(blob["state_dict"])
        return net.to(device)
    return SpikingNetwork(ir.load(path)).to(device)


PRECISIONS = ("fp32", "bf16")


def _network(source: onnx.ModelProto | str | os.PathLike, device: str, precision: str,
             options: dict) -> SpikingNetwork:
    """The network for ``source`` on ``device``; bf16 runs every kernel in torch (onnxruntime's
    CPU kernels would ignore autocast)."""
    device = torch_device(device)
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision '{precision}'", hint=f"Use one of: {', '.join(PRECISIONS)}.")
    if precision == "bf16":
        options = {**options, "cpu_kernels": "torch"}
    if isinstance(source, onnx.ModelProto) or options:
        model = source if isinstance(source, onnx.ModelProto) else read_ir(source)
        return SpikingNetwork(model, **options).to(device)
    return load(source, device)


def _simulate(net: SpikingNetwork, x: np.ndarray, timesteps: list[int], batch_size: int, device: str,
              precision: str, progress: bool = False) -> SimResult:
    """net.simulate, under bfloat16 autocast (synaptic ops in bf16, membranes in fp32) for bf16."""
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return net.simulate(x, timesteps, batch_size=batch_size, progress=progress)


def evaluate(source: onnx.ModelProto | str | os.PathLike, x: np.ndarray, timesteps: list[int],
             batch_size: int = 256, device: str = "cpu", progress: bool = False,
             precision: str = "fp32", **options) -> SimResult:
    """Simulate on ``device`` and return the readout at each T in ``timesteps``."""
    net = _network(source, device, precision, options)
    return _simulate(net, x, timesteps, batch_size, device, precision, progress)


def simulator(source: onnx.ModelProto | str | os.PathLike, timesteps: list[int], batch_size: int = 256,
              device: str = "cpu", progress: bool = False, precision: str = "fp32", **options):
    """A function x -> SimResult that reuses one network built on ``device`` (for streams)."""
    net = _network(source, device, precision, options)
    return lambda x: _simulate(net, x, timesteps, batch_size, device, precision)


def read_ir(path: str | os.PathLike) -> onnx.ModelProto:
    """The IR inside a ``.pt`` artifact (or a bare .snn.onnx)."""
    if str(path).endswith(".pt"):
        return onnx.load_from_string(torch.load(str(path), map_location="cpu", weights_only=False)["ir"])
    return ir.load(path)
