"""A small torch simulator of NIR graph semantics, to check exported graphs without a third-party
simulator: dt = 1, layer-synchronous and zero-delay like the IR runtime (but for Delay nodes:
y_t = x_{t - delay}), fan-in summed, neurons fire on ``v > v_threshold`` and reset to
``v_reset``, all state starts at 0."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import DataError, TargetError
from ...results import SimResult


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.array(a, np.float32))


def _pair(v) -> tuple[int, int]:
    v = np.asarray(v).reshape(-1)
    return (int(v[0]), int(v[-1]))


class NirSimulator:
    """Step a ``nir.NIRGraph`` on a constant (analog) input, or on one input per step (x with a
    time axis at 1, [N, T, ...]), and average its output over T."""

    def __init__(self, graph) -> None:
        import nir

        self.nir = nir
        self.graph = graph
        self.nodes = dict(graph.nodes)
        self.preds: dict[str, list[str]] = {k: [] for k in self.nodes}
        for a, b in graph.edges:
            self.preds[b].append(a)
        self.order = self._toposort()
        self.inputs = [k for k, n in self.nodes.items() if isinstance(n, nir.Input)]
        self.outputs = [k for k, n in self.nodes.items() if isinstance(n, nir.Output)]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise TargetError(f"the NIR simulator needs one Input and one Output node, found "
                              f"{len(self.inputs)} and {len(self.outputs)}")
        self.neurons = [k for k in self.order if isinstance(self.nodes[k], (nir.IF, nir.LIF))]
        self.tensors = {k: self._params(n) for k, n in self.nodes.items()}

    def _toposort(self) -> list[str]:
        seen: dict[str, int] = {}
        order: list[str] = []

        def visit(k: str) -> None:
            if seen.get(k) == 1:
                raise TargetError(f"NIR graph has a cycle through '{k}'; recurrent graphs are "
                                  "not simulated")
            if seen.get(k) == 2:
                return
            seen[k] = 1
            for p in self.preds[k]:
                visit(p)
            seen[k] = 2
            order.append(k)

        for k in self.nodes:
            visit(k)
        return order

    def _params(self, n) -> dict[str, torch.Tensor]:
        names = ("weight", "bias", "r", "v_threshold", "v_reset", "tau", "v_leak", "scale", "delay")
        return {a: _t(getattr(n, a)) for a in names if getattr(n, a, None) is not None
                and not isinstance(getattr(n, a), str)}

    def _apply(self, key: str, x: torch.Tensor, state: dict) -> torch.Tensor:
        nir, n, p = self.nir, self.nodes[key], self.tensors[key]
        if isinstance(n, (nir.Affine, nir.Linear)):
            return F.linear(x, p["weight"], p.get("bias"))
        if isinstance(n, nir.Conv2d):
            pad = n.padding if isinstance(n.padding, str) else _pair(n.padding)
            return F.conv2d(x, p["weight"], p["bias"], stride=_pair(n.stride), padding=pad,
                            dilation=_pair(n.dilation), groups=int(n.groups))
        if isinstance(n, nir.SumPool2d):
            k = _pair(n.kernel_size)
            return F.avg_pool2d(x, k, _pair(n.stride), _pair(n.padding),
                                divisor_override=1)
        if isinstance(n, nir.AvgPool2d):
            return F.avg_pool2d(x, _pair(n.kernel_size), _pair(n.stride), _pair(n.padding),
                                count_include_pad=True)
        if isinstance(n, nir.Flatten):
            start, end = int(n.start_dim), int(n.end_dim)  # NIR dims exclude the batch axis
            return torch.flatten(x, start + 1 if start >= 0 else start,
                                 end + 1 if end >= 0 else end)
        if isinstance(n, nir.Scale):
            return x * p["scale"]
        if isinstance(n, nir.Threshold):
            return (x > p["v_threshold"]).to(x.dtype)
        if isinstance(n, (nir.IF, nir.LIF)):
            v = state.get(key)
            v = torch.zeros_like(x) if v is None else v
            if isinstance(n, nir.IF):
                v = v + p["r"] * x
            else:
                v = v + (p["v_leak"] - v + p["r"] * x) / p["tau"]
            s = (v > p["v_threshold"]).to(x.dtype)
            state[key] = torch.where(s > 0, p["v_reset"].expand_as(v), v)
            state.setdefault(("count", key), torch.zeros_like(s))
            state[("count", key)] = state[("count", key)] + s
            return s
        if isinstance(n, nir.Delay):  # y_t = x_{t - delay}, per element; 0 before the first step
            d = p["delay"].round().long().expand_as(x)
            top = int(d.max()) if d.numel() else 0
            past = [x] + state.get(("past", key), [])           # past[k] = x_{t-k}
            state[("past", key)] = past[:top]
            stacked = torch.stack(past + [torch.zeros_like(x)] * (top + 1 - len(past)))
            return stacked.gather(0, d.unsqueeze(0)).squeeze(0)
        if isinstance(n, (nir.Input, nir.Output)):
            return x
        raise TargetError(f"NIR node '{key}' of type {type(n).__name__} is not supported by the "
                          "NIR simulator")

    def step(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for key in self.order:
            if key in self.inputs:
                inp = x
            else:
                ins = [values[p] for p in self.preds[key]]
                if not ins:
                    raise TargetError(f"NIR node '{key}' has no input edge")
                inp = ins[0] if len(ins) == 1 else torch.stack(ins).sum(0)
            values[key] = self._apply(key, inp, state)
        return values[self.outputs[0]]

    @torch.no_grad()
    def simulate(self, x: np.ndarray, timesteps: list[int] | int, batch_size: int = 256
                 ) -> tuple[SimResult, dict[str, np.ndarray]]:
        """Readout at each T (one run of max T steps) and total spikes per neuron layer,
        [N, *shape]."""
        ts = [timesteps] if isinstance(timesteps, int) else sorted(set(timesteps))
        rank = np.asarray(self.nodes[self.inputs[0]].input_type["input"]).size
        per_step = np.ndim(x) == rank + 2
        if per_step and ts[-1] > np.shape(x)[1]:
            raise DataError(f"the input holds T={np.shape(x)[1]} steps per sample; T={ts[-1]} was "
                            "asked for")
        readout: dict[int, list[np.ndarray]] = {t: [] for t in ts}
        spikes_at: dict[int, dict[str, float]] = {t: {k: 0.0 for k in self.neurons} for t in ts}
        counts: dict[str, list[np.ndarray]] = {k: [] for k in self.neurons}
        sizes: dict[str, int] = {}
        for start in range(0, len(x), batch_size):
            xb = _t(x[start:start + batch_size])
            state: dict = {}
            total = None
            for t in range(1, ts[-1] + 1):
                out = self.step(xb[:, t - 1] if per_step else xb, state)
                total = out if total is None else total + out
                if t in readout:
                    readout[t].append((total / t).numpy())
                    for k in self.neurons:
                        c = state[("count", k)]
                        sizes[k] = int(np.prod(c.shape[1:]))
                        spikes_at[t][k] += float(c.sum())
            for k in self.neurons:
                counts[k].append(state[("count", k)].numpy())
        n = len(x)
        result = SimResult(readout={t: np.concatenate(v) for t, v in readout.items()})
        for t in ts:
            result.add_rates(t, spikes_at[t], sizes, n)
        return result, {k: np.concatenate(v) for k, v in counts.items()}
