"""The op registry: one entry per op type, grouped by family, each owning attribute
normalization, its shape rule, the coverage verdict and hint, the torch kernel and the
synaptic-event rule. The front-end's coverage, the runtime, the report and the profiles read
it; targets declare which entries they can hold (``supports``)."""
from . import activations, arithmetic, delays, linear, pooling, routing, spiking, structural  # noqa: F401 (registers)
from .base import STATUSES, GraphView, OpEntry, Verdict, refuse
from .registry import REGISTRY, entry, known, lookup, register
from .shapes import tensor_shapes

__all__ = ["REGISTRY", "STATUSES", "GraphView", "OpEntry", "Verdict", "entry", "known", "lookup",
           "refuse", "register", "tensor_shapes"]
