"""The input encoders of the IR (:class:`snnconvert.ir.Encoding`) on torch tensors: what enters
the graph input at each step. The torch runtime draws its per-step input from here, and so does
every target that injects the input step by step (Lava), so a seeded rate code gives the first
layer exactly the same spike trains on every target."""
from __future__ import annotations

from typing import Callable

import torch

from .. import ir

StepInput = Callable[[int, int], torch.Tensor]
"""(start, steps) -> the inputs of steps start+1 .. start+steps, stacked [steps * B, *input]."""


def step_encoder(encoding: ir.Encoding, x: torch.Tensor, timesteps: int, time_varying: bool,
                 uniforms: torch.Tensor | None = None) -> tuple[StepInput | None, torch.Tensor | None]:
    """The per-step input of ``x`` under ``encoding`` for a run of ``timesteps`` steps, and the
    rate uniforms it used (pass them back in to reuse them), or (None, None) for analog input
    (the input is constant: ``x`` itself at every step).

    ``time_varying``: ``x`` is [B, T, *input], one input per step (any encoding); otherwise
    [B, *input]. Calls must ask for consecutive steps (the deterministic rate encoder is a state
    machine)."""
    if time_varying:
        return (lambda start, steps: x[:, start:start + steps].transpose(0, 1).reshape(
            steps * x.shape[0], *x.shape[2:])), uniforms
    if encoding.kind != "rate":
        return None, None
    p = x.clamp(0.0, 1.0)
    if encoding.mode == "deterministic":
        acc = torch.full_like(p, 0.5)

        def deterministic(start: int, steps: int) -> torch.Tensor:
            nonlocal acc
            out = []
            for _ in range(steps):
                acc = acc + p
                s = (acc >= 1.0).to(p.dtype)
                acc = acc - s
                out.append(s)
            return torch.cat(out)
        return deterministic, uniforms
    u = uniforms
    if u is None or len(u) < timesteps or u.shape[1:] != p.shape[1:] or u.device != p.device:
        u = torch.from_numpy(ir.rate_uniforms(tuple(p.shape[1:]), timesteps, encoding.seed)).to(p.device)
    return (lambda start, steps: (u[start:start + steps, None] < p[None]).to(p.dtype).reshape(
        steps * p.shape[0], *p.shape[1:])), u


def encode(encoding: ir.Encoding, x: torch.Tensor, timesteps: int, time_varying: bool) -> torch.Tensor:
    """All ``timesteps`` inputs of ``x`` at once, [B, T, *input] (analog: x repeated)."""
    step, _ = step_encoder(encoding, x, timesteps, time_varying)
    if step is None:
        return x.unsqueeze(1).expand(x.shape[0], timesteps, *x.shape[1:])
    steps = step(0, timesteps)
    return steps.reshape(timesteps, x.shape[0], *steps.shape[1:]).transpose(0, 1)
