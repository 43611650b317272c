"""onnxruntime kernels for the synaptic ops during CPU inference.

On CPUs onnxruntime's Conv/Gemm are several times faster than torch's (measured here: a 16→16
3×3 conv on [800,16,32,32] took 0.22 s in onnxruntime, 0.80 s in torch NCHW, 0.48 s in torch
channels-last, one thread). Training and GPU runs stay in torch.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper


FED_BYTES = 4 << 20
"""Weights at least this large are fed to their session at every run rather than held in it.

A session holding a weight keeps 2× it resident (its copy and a pre-packed form; 0.8 GB for
VGG-19's first fully-connected layer, 1.6 GB while the session is built) beside the network's own
tensor. Fed, a weight is read in place, at the same speed within the noise on VGG-sized
convolutions and 10 % slower on a 4096×25088 Gemm (one thread); small weights stay held, where
onnxruntime's packing pays (ResNet-20's evaluation ran 15 % slower with every weight fed)."""


SAME_AS_REQUESTED = 1
"""onnxruntime's ``arena_extend_strategy`` that grows the arena by what a run asks for, not by
doubling regions (the default would reserve up to twice the high-water mark)."""


@functools.cache
def _shared_arena() -> bool:
    """One onnxruntime arena for every per-node session of this process (registered on first use).

    Without it each session allocates through the C heap at every run, and a Conv's workspace
    over a time chunk (39 MB for ResNet-20's 3×3 convolutions over 300 sample-steps) passes
    glibc's 32 MB mmap ceiling, so its pages are mapped and faulted in afresh at every call:
    `eval` of ResNet-20 at T=32 spent 5.8 of 20.2 s in the kernel, 2.9 of 17.0 s with the shared
    arena, at the same peak memory. Per-session arenas would hold one high-water mark per node;
    the shared one holds the largest a single node's run needs. False where this onnxruntime
    cannot register one (the sessions then allocate on their own, as before)."""
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, SAME_AS_REQUESTED, -1, -1))
    except (AttributeError, TypeError, RuntimeError):  # an onnxruntime without the API
        return False
    return True


class OrtKernels:
    """One small onnxruntime session per node; rebuilt when a weight it holds changes, never
    for one it is fed (see :data:`FED_BYTES`)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self._cache: dict[str, tuple[tuple, ort.InferenceSession]] = {}

    def run(self, node: onnx.NodeProto, args: list[torch.Tensor | None]) -> torch.Tensor:
        consts = args[1:]
        key = tuple(None if c is None else "fed" if _fed(c) else (id(c), c._version) for c in consts)
        cached = self._cache.get(node.name)
        if cached is None or cached[0] != key:
            cached = (key, self._build(node, consts))
            self._cache[node.name] = cached
        feeds = {"x": args[0].detach().contiguous().numpy()}
        feeds.update((f"c{i}", c.detach().contiguous().numpy())
                      for i, c in enumerate(consts, 1) if c is not None and _fed(c))
        return torch.from_numpy(cached[1].run(None, feeds)[0])

    def _build(self, node: onnx.NodeProto, consts: list[torch.Tensor | None]) -> ort.InferenceSession:
        inputs, declared, inits = ["x"], [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)], []
        for i, c in enumerate(consts, 1):
            if c is None:
                inputs.append("")
                continue
            inputs.append(f"c{i}")
            if _fed(c):  # only its type here (no copy of it)
                dtype = torch.empty((), dtype=c.dtype).numpy().dtype
                declared.append(helper.make_tensor_value_info(f"c{i}", helper.np_dtype_to_tensor_dtype(dtype), None))
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(c.detach().cpu().numpy()), f"c{i}"))
        op = helper.make_node(node.op_type, inputs, ["y"], **{
            a.name: helper.get_attribute_value(a) for a in node.attribute})
        graph = helper.make_graph([op], node.name or "kernel", declared,
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
        opsets = [helper.make_opsetid("", self.opset)]
        # the oldest IR version that holds the opset, not the installed onnx's newest: any
        # onnxruntime that runs the opset reads it (onnx 1.23 writes IR 14, onnxruntime 1.30 reads 13)
        model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False  # one session per node: per-session arenas never shrink
        if _shared_arena():
            opts.add_session_config_entry("session.use_env_allocators", "1")
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        # a pool that spins after its run takes the cores from the next node's session and from
        # torch's: with spinning, 2 threads ran the sinabs CNN 3.5x slower than 1; without, 1.2x faster
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _fed(c: torch.Tensor) -> bool:
    return c.numel() * c.element_size() >= FED_BYTES
