"""Which ONNX nodes map to spiking neurons, synapses, pools or structure, and which cannot be converted."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UnsupportedModelError
from .loader import read_model

STATUSES = ("neuron", "synapse", "pool", "structural", "absorbed", "dropped", "unsupported")

_STRUCTURAL = {
    "Concat": "concatenation (routing, no computation)",
    "Flatten": "reshape (routing)",
    "Reshape": "reshape (routing)",
    "Squeeze": "reshape (routing)",
    "Unsqueeze": "reshape (routing)",
    "Transpose": "permutation (routing)",
    "Slice": "slice (routing)",
}
_RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_AFFINE = ("Mul", "Div", "Add", "Sub")
_RETRAIN_RELU = "Hint: retrain the network with ReLU (or ReLU6 / Clip(0, max))."
_UNSUPPORTED = {
    "LeakyRelu": "a negative slope needs signed neurons, which are not supported. "
                 "Hint: retrain with ReLU.",
    "PRelu": "a negative slope needs signed neurons, which are not supported. Hint: retrain with ReLU.",
    "LRN": "local response normalization has no spiking equivalent. "
           "Hint: remove it and retrain, or replace it by BatchNormalization.",
    "Sigmoid": "a saturating non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "Tanh": "a signed saturating non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "HardSigmoid": "a saturating non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "Elu": "a signed non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "Selu": "a signed non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "Celu": "a signed non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "Gelu": "a signed non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "HardSwish": "a signed non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "Softplus": "a smooth non-linearity has no integrate-and-fire equivalent. " + _RETRAIN_RELU,
    "ConvTranspose": "transposed convolution is not supported. "
                     "Hint: use Resize (mode nearest) followed by Conv.",
    "LSTM": "recurrent layers cannot be converted. Hint: use a feed-forward network.",
    "GRU": "recurrent layers cannot be converted. Hint: use a feed-forward network.",
    "RNN": "recurrent layers cannot be converted. Hint: use a feed-forward network.",
    "LayerNormalization": "normalization over activations at run time has no spiking equivalent. "
                          "Hint: use BatchNormalization.",
    "InstanceNormalization": "normalization over activations at run time has no spiking equivalent. "
                             "Hint: use BatchNormalization.",
}


@dataclass
class NodeMapping:
    """How one ONNX node maps onto the spiking network (``status`` is one of STATUSES)."""

    name: str
    op_type: str
    status: str
    detail: str

    @property
    def node(self) -> str:
        """Alias of ``name`` (the node's name in the normalized graph)."""
        return self.name


def coverage(model: onnx.ModelProto | str | os.PathLike) -> list[NodeMapping]:
    """Classify every node of ``model`` (raw or returned by load_model), in graph order."""
    if not isinstance(model, onnx.ModelProto):
        model = read_model(model)
    return _Classifier(model).run()


def check_supported(model: onnx.ModelProto | str | os.PathLike) -> list[NodeMapping]:
    """Return the coverage, or raise UnsupportedModelError naming every unsupported node and a hint."""
    if not isinstance(model, onnx.ModelProto):
        model = read_model(model)
    mapping = coverage(model)
    problems = [(m.name, m.op_type, m.detail) for m in mapping if m.status == "unsupported"]
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        problems.insert(0, ("<graph>", "Input",
                            f"the graph has {len(inputs)} inputs ({', '.join(inputs) or 'none'}); exactly "
                            "one is supported. Hint: merge the inputs or export a single-input model."))
    if len(problems) == 1:
        name, op, reason = problems[0]
        if name == "<graph>":
            raise UnsupportedModelError(reason, problems=problems)
        raise UnsupportedModelError(reason, node=name, op=op, problems=problems)
    if problems:
        lines = [f"node '{n}' ({op}): {reason}" for n, op, reason in problems]
        raise UnsupportedModelError(
            f"{len(problems)} unsupported node(s) in the model: " + " | ".join(lines), problems=problems)
    return mapping


class _Classifier:
    """One pass over a topologically sorted graph, tracking which tensors are constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.values = {t.name: t for t in graph.initializer}
        self.consts = set(self.values)
        self.outputs = {o.name for o in graph.output}
        self.inputs = {vi.name for vi in graph.input} - self.consts
        self.nodes = list(graph.node)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in self.nodes:
            for t in node.input:
                self.consumers.setdefault(t, []).append(node)
            for t in node.output:
                self.producer[t] = node
        self.input_chain = set(self.inputs)

    def run(self) -> list[NodeMapping]:
        result = []
        for k, node in enumerate(self.nodes):
            name = node.name or f"{node.op_type}_{k}"
            status, detail = self.classify(node)
            if status == "structural" and detail.startswith("constant"):
                self.consts.update(node.output)
            result.append(NodeMapping(name, node.op_type, status, detail))
        return result

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.consts

    def const_value(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return numpy_helper.to_array(self.values[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.asarray(onnx.helper.get_attribute_value(attr))
        return None

    def classify(self, node: onnx.NodeProto) -> tuple[str, str]:
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        data_inputs = [t for t in node.input if t and not self.is_const(t)]
        if op in ("Constant", "Shape", "Size") or not data_inputs:
            return "structural", "constant expression; load_model folds it into an initializer"
        if op in ("Dropout", "Identity"):
            return "dropped", "no effect at inference; load_model removes it"
        if op in ("Softmax", "LogSoftmax"):
            if self.trailing(node.output[0]):
                return "dropped", "final softmax; removed by load_model (the class argmax is unchanged)"
            return "unsupported", ("a softmax inside the network couples all neurons of a layer and has no "
                                   "spiking equivalent. Hint: remove it; only a final softmax is allowed.")
        if op == "Relu":
            return "neuron", "IF neuron (its firing rate approximates ReLU)"
        if op == "Clip":
            return self.clip(node, attrs)
        if op in ("Conv", "Gemm", "MatMul"):
            return self.linear(node, attrs)
        if op == "BatchNormalization":
            src = self.producer.get(node.input[0])
            if src is not None and src.op_type in ("Conv", "Gemm") and len(self.consumers[node.input[0]]) == 1:
                return "absorbed", f"folded into the preceding {src.op_type} '{src.name}'"
            return "synapse", "per-channel scale and bias applied to the input current"
        if op in _AFFINE:
            return self.affine(node, data_inputs)
        if op == "Sum":
            return "synapse", "sum of input currents"
        if op in ("AveragePool", "GlobalAveragePool"):
            return "pool", "average pooling of input currents (linear)"
        if op in ("MaxPool", "GlobalMaxPool"):
            return self.maxpool(node, attrs)
        if op == "Slice":
            return self.slice(node)
        if op in _STRUCTURAL:
            return "structural", _STRUCTURAL[op]
        if op == "Pad":
            return self.pad(node, attrs)
        if op in ("Resize", "Upsample"):
            mode = attrs.get("mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode == "nearest":
                return "structural", "nearest-neighbour upsampling (routing)"
            return "unsupported", (f"Resize mode '{mode}' interpolates between neurons. "
                                   "Hint: use mode 'nearest' (e.g. nn.Upsample(mode='nearest')).")
        if op in _UNSUPPORTED:
            return "unsupported", _UNSUPPORTED[op]
        return "unsupported", (f"operator {op} has no spiking mapping in snnconvert. Hint: remove it or "
                               "replace it by supported operators (Conv, Gemm, ReLU, pooling, Add, Concat).")

    def trailing(self, tensor: str) -> bool:
        while tensor not in self.outputs:
            users = self.consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type not in _RESHAPING + ("Identity", "Dropout"):
                return False
            tensor = users[0].output[0]
        return not self.consumers.get(tensor)

    def clip(self, node: onnx.NodeProto, attrs: dict) -> tuple[str, str]:
        if len(node.input) > 1:
            lo = self.const_value(node.input[1]) if node.input[1] else None
            hi_name = node.input[2] if len(node.input) > 2 else ""
            hi = self.const_value(hi_name) if hi_name else None
            if hi_name and hi is None:
                return "unsupported", "Clip max must be a constant. Hint: export it with a fixed max."
        else:
            lo, hi = attrs.get("min"), attrs.get("max")
        if lo is None or float(np.asarray(lo)) != 0.0:
            shown = "unset" if lo is None else f"{float(np.asarray(lo)):g}"
            return "unsupported", (f"Clip with min {shown} is not a ReLU-like activation (neurons cannot go "
                                   "negative). Hint: use min 0 (ReLU6 = Clip(0, 6)).")
        top = "" if hi is None else f", saturating at {float(np.asarray(hi)):g}"
        return "neuron", f"IF neuron (clipped ReLU{top})"

    def linear(self, node: onnx.NodeProto, attrs: dict) -> tuple[str, str]:
        op = node.op_type
        weight_idx = 1
        if op == "MatMul" and self.is_const(node.input[0]) and not self.is_const(node.input[1]):
            weight_idx = 0
        if not self.is_const(node.input[weight_idx]):
            return "unsupported", (f"{op} of two activations is a multiplicative interaction with no spiking "
                                   "equivalent. Hint: the weight operand must be a constant.")
        w = self.const_value(node.input[weight_idx])
        if op == "Conv":
            group = attrs.get("group", 1)
            kind = "depthwise " if group > 1 and w is not None and w.shape[1] == 1 else (
                f"grouped ({group}) " if group > 1 else "")
            if w is None:
                return "synapse", f"{kind}convolution weights feeding the next neurons"
            kernel = "x".join(str(d) for d in w.shape[2:])
            strides = attrs.get("strides", [])
            stride = f", stride {'x'.join(map(str, strides))}" if any(v != 1 for v in strides) else ""
            return "synapse", (f"{kind}{kernel} convolution, {w.shape[1] * group}->{w.shape[0]} channels{stride}: "
                               "weights feeding the next neurons")
        if w is None or w.ndim != 2:
            return "synapse", "dense weights feeding the next neurons"
        n_in, n_out = (w.shape[::-1] if attrs.get("transB", 0) else w.shape) if weight_idx == 1 else w.shape[::-1]
        return "synapse", f"dense {n_in}->{n_out}: weights feeding the next neurons"

    def affine(self, node: onnx.NodeProto, data_inputs: list[str]) -> tuple[str, str]:
        op = node.op_type
        if len(data_inputs) == 2:
            if op in ("Add", "Sub"):
                return "synapse", "sum of input currents"
            return "unsupported", (f"{op} of two activations is a multiplicative interaction with no spiking "
                                   "equivalent. Hint: one operand must be a constant.")
        if op == "Div" and data_inputs[0] != node.input[0]:
            return "unsupported", ("dividing a constant by an activation has no spiking equivalent. "
                                   "Hint: divide by a constant only.")
        if data_inputs[0] in self.input_chain:
            self.input_chain.update(node.output)
            return "absorbed", ("input normalization: load_model folds it into the first Conv/Gemm when "
                                "exact; otherwise it is computed once (time-invariant)")
        if op in ("Mul", "Div"):
            return "synapse", "scaling of the input current by a constant"
        return "synapse", "constant current added to the input current"

    def maxpool(self, node: onnx.NodeProto, attrs: dict) -> tuple[str, str]:
        if attrs.get("ceil_mode", 0):
            return "unsupported", ("MaxPool with ceil_mode=1 is not supported. "
                                   "Hint: pad the input explicitly and use ceil_mode=0.")
        if any(d != 1 for d in attrs.get("dilations", [])):
            return "unsupported", "dilated MaxPool is not supported. Hint: use dilations of 1."
        if len(node.output) > 1 and node.output[1] and self.consumers.get(node.output[1]):
            return "unsupported", "MaxPool indices output is not supported. Hint: use only the pooled values."
        k = "x".join(str(v) for v in attrs.get("kernel_shape", [])) or "global"
        return "pool", (f"{k} max pooling of spikes, gated by accumulated input (exact in the rate); "
                        "MaxPoolToAvgPool can swap it for an average pool")

    def slice(self, node: onnx.NodeProto) -> tuple[str, str]:
        if any(name and not self.is_const(name) for name in node.input[1:]):
            return "unsupported", ("Slice with run-time starts/ends/axes/steps is not supported. "
                                   "Hint: export the slice with constant bounds.")
        steps = self.const_value(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if steps is not None and np.any(np.asarray(steps) <= 0):
            return "unsupported", (f"Slice steps {np.asarray(steps).tolist()} reverse an axis, which "
                                   "is not supported (only forward slices). Hint: reverse the axis in "
                                   "the weights instead (e.g. flip the next layer's kernel), or slice "
                                   "with a positive step.")
        return "structural", _STRUCTURAL["Slice"]

    def pad(self, node: onnx.NodeProto, attrs: dict) -> tuple[str, str]:
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            return "unsupported", (f"Pad mode '{mode}' is not supported. Hint: use zero padding "
                                   "(mode 'constant', value 0).")
        if len(node.input) > 1 and not self.is_const(node.input[1]):
            return "unsupported", "Pad with run-time pads is not supported. Hint: use constant pads."
        value = attrs.get("value", 0.0)
        if len(node.input) > 2 and node.input[2]:
            v = self.const_value(node.input[2])
            value = np.nan if v is None else float(np.asarray(v).reshape(-1)[0])
        if value != 0.0:
            return "unsupported", (f"Pad with value {value:g} is not supported (a constant input current). "
                                   "Hint: use zero padding.")
        return "structural", "zero padding (routing)"
