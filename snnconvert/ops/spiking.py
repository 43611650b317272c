"""The spiking IR's own ops (domain ``snnconvert``): the IF/LIF neuron and the spiking max-pool.

The neuron's dynamics run in the runtime's neuron loop (:mod:`snnconvert.runtime.neurons`); its
entry here gives its rate-limit kernel (the ONNX function: clip(x, 0, θ)), which also serves
as its shape rule."""
from __future__ import annotations

import torch

from .. import ir
from .base import OpEntry, Verdict
from .pooling import max_pool, max_pool_verdict, pool_args
from .base import window_sum
from .registry import register


@register
class IF(OpEntry):
    op_type = ir.NEURON_OP
    domain = ir.DOMAIN
    family = "spiking"

    def verdict(self, node, attrs, graph):
        kind = "LIF" if attrs.get("leak", 0.0) else "IF"
        return Verdict("neuron", f"{kind} neuron, reset by {attrs.get('reset', 'subtract')}")

    def kernel(self, attrs, x, threshold, v_init=None, step_bias=None):
        """The rate limit; the step bias sums to zero over its steps (no term here)."""
        return torch.minimum(torch.relu(x), threshold)


@register
class SpikingMaxPool(OpEntry):
    op_type = ir.SPIKING_MAX_POOL
    domain = ir.DOMAIN
    family = "spiking"
    stateful = True

    def verdict(self, node, attrs, graph):
        return max_pool_verdict(node, attrs, graph)

    def kernel(self, attrs, x):
        """The rate limit (and the output on a time-invariant input): MaxPool."""
        return max_pool(attrs, x)

    def step(self, attrs, x, state):
        """Max-pool gated by accumulated input (Rueckauer et al. 2017), exact in the total.

        Each window emits, at every step, the increase of the largest running input sum among
        its units: while one unit leads this is that unit's input (the classic gate); when
        another overtakes, only the excess passes. The output sum over t steps is therefore
        exactly the max of the accumulated inputs, instead of losing a spike at every change of
        leader as a plain gate does. Spike inputs of one channel share their threshold, so the
        output stays in {0, θ}. ``x`` is [T, B, ...]; ``state`` the running sums and their
        pooled max (None at start)."""
        if state is None:
            acc = torch.zeros_like(x[0])
            prev = max_pool(attrs, acc)
        else:
            acc, prev = state
        out = []
        for t in range(x.shape[0]):
            acc = acc + x[t]
            top = max_pool(attrs, acc)
            out.append(top - prev)
            prev = top
        return torch.stack(out), (acc, prev)

    def events(self, attrs, inputs, consts):
        x = inputs[0]
        k, s, pads, ceil = pool_args(attrs, x)
        return window_sum(x, k, s, pads, ceil)
