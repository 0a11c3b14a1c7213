"""What onnxruntime actually runs: its optimized graph and the int8 kernels in it.

An ONNX file full of Q/DQ nodes proves nothing about speed: ORT runs a Q/DQ graph as float32 unless its QDQ fusion
turns ``DQ -> MatMul`` into an integer kernel, and it silently skips the fusion when a condition fails (static shapes
folded into a float Gemm first, int8 activations fanned out to several MatMuls, per-channel activation scales). So the
graph ORT has optimized (``SessionOptions.optimized_model_filepath``) is read back and its node types counted.

Whether ORT's u8 x s8 kernel saturates on this CPU is measured, not read from CPU flags, by one probe:
``intbert.engine.backends.ort_gemm.u8s8_is_exact_for_8bit`` (its module docstring says why).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["INT8_KERNELS", "OptimizedGraph", "inspect_optimized_graph", "make_session"]

# ORT CPU ops that multiply 8-bit integers (contrib ops in the com.microsoft domain included).
INT8_KERNELS = frozenset({
    "MatMulIntegerToFloat",  # DQ(x) x DQ(W) -> MatMul, float output (the usual QDQ linear fusion)
    "QLinearMatMul",  # Q -> DQ -> MatMul -> Q (quantized output)
    "MatMulInteger",  # int32 output, rescaled by later nodes
    "DynamicQuantizeMatMul",  # quantize_dynamic's fused activation quantization + int8 GEMM
    "QGemm",
    "QAttention",
    "QLinearConv",
    "ConvInteger",
})
# Float GEMM ops: after optimization, one fed by a DequantizeLinear is a quantized layer ORT did not fuse.
FLOAT_GEMMS = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm"})


@dataclass(frozen=True)
class OptimizedGraph:
    """Node-type counts of ORT's optimized graph.

    ``unfused_dequantized_gemms``: float MatMul/Gemm nodes with a DequantizeLinear input after optimization, i.e.
    quantized layers that run in float32 on dequantized values.
    """

    op_counts: dict[str, int]
    unfused_dequantized_gemms: int

    @property
    def int8_kernels(self) -> int:
        return sum(n for op, n in self.op_counts.items() if op in INT8_KERNELS)

    def int8_kernel_counts(self) -> dict[str, int]:
        return {op: n for op, n in sorted(self.op_counts.items()) if op in INT8_KERNELS}


def make_session(onnx_path: str | os.PathLike, *, threads: int | None = None, optimized_path: str | None = None):
    """A CPU InferenceSession with ORT's default (full) graph optimizations, optionally saving the optimized graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    # ORT warns that a graph saved at level ALL may hold hardware-specific layouts; it is only read back here.
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _count(model) -> OptimizedGraph:
    produced_by = {out: node.op_type for node in model.graph.node for out in node.output}
    counts = Counter(node.op_type for node in model.graph.node)
    unfused = sum(
        1 for node in model.graph.node
        if node.op_type in FLOAT_GEMMS and any(produced_by.get(i) == "DequantizeLinear" for i in node.input)
    )  # fmt: skip
    return OptimizedGraph(dict(counts), unfused)


def inspect_optimized_graph(onnx_path: str | os.PathLike, *, threads: int | None = 1):
    """Build a session for ``onnx_path``; return ``(session, OptimizedGraph)`` of the graph ORT will run.

    The optimized model is written to a temporary folder (removed afterwards) and read back with ``onnx``.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="intbert-ort-") as folder:
        optimized = str(Path(folder) / "optimized.onnx")
        session = make_session(onnx_path, threads=threads, optimized_path=optimized)
        graph = _count(onnx.load(optimized, load_external_data=False))
    return session, graph
