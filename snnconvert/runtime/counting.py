"""Error statistics of an IF/LIF layer under K candidate parameter sets, without materializing
spikes (numba when available, torch otherwise).

Calibration tries many thresholds, biases and initial potentials on the same input current and
needs, per candidate, only each channel's (or neuron's) squared error to a target and its mean
rate; writing the [T, B, ...] spike tensor once per candidate would cost more memory traffic
than the recurrence itself. The current is read once for all K candidates. Same float32
arithmetic as the fused kernel (bias added to the current before integration).
"""
from __future__ import annotations

import numpy as np
import torch

from . import neurons as nrn

try:
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

BLOCK = 256

if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _stats(current, v0, theta, bias, target, group, steps, decay, leaky, subtract,
               err, total):  # pragma: no cover
        n = target.shape[0]
        k_count, per = theta.shape
        constant = current.shape[0] == 1
        v = np.empty((k_count, BLOCK), np.float32)
        th = np.empty((k_count, BLOCK), np.float32)
        bb = np.empty((k_count, BLOCK), np.float32)
        cnt = np.zeros((k_count, BLOCK), np.float32)
        pidx = np.empty(BLOCK, np.int64)
        for i0 in range(0, n, BLOCK):
            m = min(BLOCK, n - i0)
            for j in range(m):
                pidx[j] = (i0 + j) % per
            for k in range(k_count):
                for j in range(m):
                    p = pidx[j]
                    v[k, j] = v0[k, p]
                    th[k, j] = theta[k, p]
                    bb[k, j] = bias[k, p]
                    cnt[k, j] = 0.0
            for t in range(steps):
                cur = current[0 if constant else t, i0:i0 + m]
                for k in range(k_count):
                    vk, tk, bk, ck = v[k], th[k], bb[k], cnt[k]
                    for j in range(m):
                        vi = vk[j] * decay if leaky else vk[j]
                        vi = vi + (cur[j] + bk[j])
                        s = np.float32(1.0) if vi >= tk[j] else np.float32(0.0)
                        ck[j] += s
                        vk[j] = vi - s * tk[j] if subtract else vi * (np.float32(1.0) - s)
            for k in range(k_count):
                for j in range(m):
                    p = pidx[j]
                    r = cnt[k, j] * th[k, j] / steps
                    d = r - target[i0 + j]
                    g = group[p]
                    err[k, g] += d * d
                    total[k, g] += r


def layer_stats(current: torch.Tensor, steps: int, v0: torch.Tensor, theta: torch.Tensor,
                bias: torch.Tensor, target: torch.Tensor, group: torch.Tensor, groups: int,
                reset: str = "subtract", leak: float = 0.0,
                into: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate k and group g: (sum of squared rate errors, sum of rates), each [K, groups],
    float64; with ``into`` (the result of a call on the samples before), added to it, so that
    chunks of samples in order give exactly the sums of one call on all of them.

    ``current``: [T, B, *S] or constant [B, *S]; ``target`` [B, *S] (the rate to reach);
    ``v0``, ``theta``, ``bias``: [K, *S'] broadcastable to [K, *S]; ``group``: [*S] int, the
    group of each neuron of one sample (e.g. its channel, or its own index). The rate of a
    neuron is θ·(spike count)/T.
    """
    sample = tuple(target.shape[1:])
    k_count = theta.shape[0]
    full = lambda t: torch.broadcast_to(t.detach().to(torch.float32), (k_count, *sample))
    v0, theta, bias = full(v0), full(theta), full(bias)
    if numba is None:
        err, total = _stats_torch(current, steps, v0, theta, bias, target, group, groups, reset, leak)
        return (err, total) if into is None else (into[0] + err, into[1] + total)
    constant = current.dim() == target.dim()
    cur = current.detach().to(torch.float32).contiguous().numpy().reshape(1 if constant else steps, -1)
    flat = lambda t: t.contiguous().numpy().reshape(k_count, -1)
    if into is None:
        err, total = np.zeros((k_count, groups), np.float64), np.zeros((k_count, groups), np.float64)
    else:
        err, total = into[0].numpy(), into[1].numpy()
    _stats(cur, flat(v0), flat(theta), flat(bias), target.detach().to(torch.float32).contiguous()
           .numpy().reshape(-1), group.to(torch.int64).contiguous().numpy().reshape(-1), steps,
           np.float32(1.0 - leak), bool(leak), reset == "subtract", err, total)
    return torch.from_numpy(err), torch.from_numpy(total)


def _stats_torch(current, steps, v0, theta, bias, target, group, groups, reset, leak):
    """Reference implementation of :func:`layer_stats` (one simulation per candidate)."""
    errs, totals = [], []
    idx = group.to(torch.int64).reshape(-1)
    for k in range(theta.shape[0]):
        v = torch.zeros_like(target) + v0[k]
        s, _ = nrn.if_neuron_fast(current + bias[k], steps, v, theta[k], reset, leak)
        rate = (s > 0).sum(0).to(torch.float32) * theta[k] / steps
        sq = ((rate - target) ** 2).reshape(target.shape[0], -1).sum(0).to(torch.float64)
        rs = rate.reshape(target.shape[0], -1).sum(0).to(torch.float64)
        errs.append(torch.zeros(groups, dtype=torch.float64).index_add_(0, idx, sq))
        totals.append(torch.zeros(groups, dtype=torch.float64).index_add_(0, idx, rs))
    return torch.stack(errs), torch.stack(totals)
