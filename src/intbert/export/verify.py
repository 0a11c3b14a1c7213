"""``verify_onnx``: run the PyTorch model and its ONNX export on the same batches and say how far apart they are.

The reference is the model as exported: for a ``reduce_range`` export (read from the file's ``intbert.reduce_range``
metadata) the model's 8-bit weights are temporarily given the 7 bits the graph holds, so the report measures the
export, not that deliberate change. The onnxruntime session uses ORT's full optimizations (what a deployment runs),
and the report also counts the int8 kernels in the graph ORT optimized.

``runtime="openvino"`` runs a QDQ graph in OpenVINO's CPU plugin instead (``pip install openvino``), compiled with
float32 float parts, and counts the graph's quantized GEMMs that OpenVINO's compiled model runs in int8.

Each family of graphs has its verifier, found by the file's ``intbert.exporter`` metadata in `VERIFIERS` (QDQ graphs
here, integer I-BERT graphs in ``ibert_verify``); the types they share are in ``report`` and the batch handling in
``batches``. The verifiers import nothing of this module, so the exporters and their checks import in one direction.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batches import as_inputs, check_graph_ids
from .ibert_verify import verify_ibert_onnx
from .ort_kernels import FLOAT_GEMMS, inspect_optimized_graph
from .qdq_form import reduced_weight_range
from .report import DiffTally, LoadedGraph, VerifyReport

__all__ = ["RUNTIMES", "VERIFIERS", "Verifier", "VerifyReport", "check_graph_ids", "verify_onnx"]

#: Where verify_onnx can run the graph.
RUNTIMES = ("onnxruntime", "openvino")
#: OpenVINO precisions of a runtime node that computes in 8-bit integers.
OPENVINO_INT8 = frozenset({"u8", "i8"})
#: ONNX ops that move or retype a tensor without changing its values' grid (between a DQ and the GEMM it feeds).
LAYOUT_OPS = frozenset({"Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"})


def _openvino_graph(onnx_path, proto, threads: int | None, config: Mapping | None) -> LoadedGraph:
    """The graph compiled by OpenVINO's CPU plugin, float parts in float32 unless ``config`` says otherwise.

    OpenVINO's CPU default on CPUs with bfloat16 support (AMX-BF16, AVX512-BF16) computes the float parts (LayerNorm,
    softmax, GELU, the unquantized GEMMs) in bfloat16: another model than the one exported (a 2-layer test model moved
    by up to 0.03 that way, against 7e-7 in float32). ``INFERENCE_PRECISION_HINT: "f32"`` keeps the graph's semantics;
    a deployment that wants bfloat16 passes its own ``openvino_config`` here to measure that choice.
    """
    try:
        import openvino as ov
    except ImportError as error:
        raise ImportError("verify_onnx(runtime='openvino') needs OpenVINO: pip install openvino "
                          "(or pip install 'intbert[bench]')") from error
    metadata = {p.key: p.value for p in proto.metadata_props}
    properties = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads is not None:
        properties["INFERENCE_NUM_THREADS"] = threads
    properties.update(config or {})
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", properties)
    request = compiled.create_infer_request()
    initializers = {t.name for t in proto.graph.initializer}
    input_names = [i.name for i in proto.graph.input if i.name not in initializers]
    output_names = [o.name for o in proto.graph.output]  # ONNX names: OpenVINO's own may be another alias
    outputs = [compiled.output(name) for name in output_names]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request.infer(feed)
        return [request.get_tensor(port).data.copy() for port in outputs]

    counts, unfused = _openvino_int8_gemms(proto, compiled.get_runtime_model())
    metadata["openvino.inference_precision"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return LoadedGraph(input_names, output_names, run, metadata, sum(counts.values()), counts, unfused, "openvino",
                       str(onnx_path))


def _openvino_int8_gemms(proto, runtime_model) -> tuple[dict[str, int], int]:
    """Which of the ONNX graph's quantized GEMMs OpenVINO's compiled model runs in int8.

    A quantized GEMM is a MatMul/Gemm node with an input that comes from a DequantizeLinear, directly or through
    layout-only nodes (the exporters put a Transpose after a weight's DQ and a Cast after an activation's). Each node
    of the compiled model lists the ONNX nodes it absorbed (``originalLayersNames``; a derived node may be named
    ``<onnx name>/DequantizationMultiply``) and the precision it runs in (``runtimePrecision``). A GEMM fused into a
    larger node can lose its name (the attention scores ``q k^T`` inside OpenVINO's attention ``Subgraph``, measured
    with openvino 2026.4.1): it is then found through the node that absorbed the op reading its output (the
    scaling ``Div``). A quantized GEMM found nowhere counts as unfused.
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    readers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node.name)

    def dequantized(tensor: str) -> bool:
        node = producer.get(tensor)
        while node is not None and node.op_type in LAYOUT_OPS:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    absorbed_by = {}  # ONNX node name -> (layer type, runtime precision) of the compiled node holding it
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        kind = (info["layerType"].astype(str), info["runtimePrecision"].astype(str))
        for name in info["originalLayersNames"].astype(str).split(","):
            absorbed_by.setdefault(name, kind)

    def owner(name: str):
        if name in absorbed_by:
            return absorbed_by[name]
        return next((kind for absorbed, kind in absorbed_by.items() if absorbed.startswith(name + "/")), None)

    counts: Counter = Counter()
    quantized = 0
    for node in proto.graph.node:
        if node.op_type not in FLOAT_GEMMS or not any(map(dequantized, node.input)):
            continue
        quantized += 1
        kind = owner(node.name)
        if kind is None:  # fused away under another name: follow its output to the op that reads it
            kind = next((k for out in node.output for r in readers.get(out, []) if (k := owner(r))), None)
        if kind is not None and kind[1] in OPENVINO_INT8:
            counts[kind[0]] += 1
    return dict(sorted(counts.items())), quantized - sum(counts.values())


def _onnxruntime_graph(onnx_path, proto, threads: int | None, config: Mapping | None) -> LoadedGraph:
    """The graph in an onnxruntime CPU session at full optimization (what a deployment runs), with the int8 kernels
    of the graph ORT optimized."""
    session, optimized = inspect_optimized_graph(onnx_path, threads=threads)
    names = [o.name for o in session.get_outputs()]
    return LoadedGraph([i.name for i in session.get_inputs()], names, lambda feed: session.run(names, feed),
                       {p.key: p.value for p in proto.metadata_props}, optimized.int8_kernels,
                       optimized.int8_kernel_counts(), optimized.unfused_dequantized_gemms, "onnxruntime",
                       str(onnx_path))


#: runtime -> loader(onnx_path, parsed proto, threads, runtime config) -> LoadedGraph.
LOADERS = {"onnxruntime": _onnxruntime_graph, "openvino": _openvino_graph}


def verify_qdq_onnx(model: nn.Module, graph: LoadedGraph, batches: Iterable) -> VerifyReport:
    """Compare a QDQBERT graph (or any graph of a model's ``ModelOutput`` fields) with ``model``, output by output.

    For a ``reduce_range`` export (``intbert.reduce_range`` metadata) the model's 8-bit weights are given the 7 bits
    the graph holds while it runs (``qdq_form.reduced_weight_range``), so the report measures the export.
    """
    metadata = graph.metadata
    exported_class = metadata.get("intbert.model_class")
    if exported_class is not None and exported_class != type(model).__name__:
        raise ValueError(f"{graph.path} was exported from a {exported_class}, not a {type(model).__name__}")
    reduce_range = metadata.get("intbert.reduce_range") == "true"

    tally = DiffTally(graph.output_names, "torch", graph.runtime)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), reduced_weight_range(model, enabled=reduce_range):
            for batch in batches:
                inputs = as_inputs(batch, graph.input_names, model.config)
                device = next(model.parameters()).device
                expected = model(**{k: v.to(device) for k, v in inputs.items()}, return_dict=True)
                for name, value in zip(graph.output_names, graph.run_inputs(inputs)):
                    tally.add(name, value, getattr(expected, name).detach().cpu().double().numpy())
                tally.batches += 1
    finally:
        model.train(was_training)
    return graph.report(tally, graph.output_names, reduce_range=reduce_range)


@dataclass(frozen=True)
class Verifier:
    """How ``verify_onnx`` checks one family of graphs: ``verify(model, graph, batches)``, in ``runtimes`` only
    (``refusal``: why another runtime is refused, with ``{path}``)."""

    verify: Callable[[nn.Module, LoadedGraph, Iterable], VerifyReport]
    runtimes: tuple[str, ...] = RUNTIMES
    refusal: str = ""


#: Graph family (the file's ``intbert.exporter`` metadata) -> its verifier: the one place to add a family. A file
#: without that metadata is compared output by output, as a QDQ graph.
VERIFIERS: dict[str, Verifier] = {
    "qdqbert": Verifier(verify_qdq_onnx),
    # Measured with openvino 2026.4.1 on a 2-layer test model: the integer I-BERT graph loads and runs in OpenVINO,
    # but its int8 hidden states differ from onnxruntime's (= the engine's) by up to 252. OpenVINO's CPU plugin runs
    # int64 tensors as int32, and the graph's integer chains need 64 bits (47-bit requantization inputs, uint64
    # shifts).
    "ibert": Verifier(verify_ibert_onnx, ("onnxruntime",),
                      "{path} is an integer I-BERT graph, which OpenVINO's CPU plugin does not compute exactly (it "
                      "runs int64 tensors as int32); verify and deploy it with runtime='onnxruntime'"),
}
DEFAULT_FAMILY = "qdqbert"


def verify_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    batches: Iterable,
    *,
    threads: int | None = None,
    runtime: str = "onnxruntime",
    openvino_config: Mapping | None = None,
) -> VerifyReport:
    """Compare ``model`` (eval, no grad) with the ONNX file run in ``runtime`` (CPU) on ``batches``.

    ``batches``: dicts of model inputs (``input_ids`` and optionally ``attention_mask``, ``token_type_ids``) or
    tensors of input ids. Outputs are matched by name (the graph's outputs are ``ModelOutput`` fields). The file's
    ``intbert.exporter`` metadata picks the verifier (`VERIFIERS`): an integer I-BERT graph is compared with the
    engine's integers (``int8_hidden_equal``), any other output by output with the model's.

    ``runtime``: "onnxruntime" (both graph families), or "openvino" for a QDQBERT graph (``pip install openvino``),
    compiled for OpenVINO's CPU plugin with float32 float parts (``INFERENCE_PRECISION_HINT: "f32"``; OpenVINO's
    default on CPUs with bfloat16 support is bfloat16). ``openvino_config``: more ``compile_model`` properties,
    which override those. ``threads``: the runtime's intra-op threads (its default when None).

    The graphs do not check ids (ONNX ``Gather`` reads a negative id from the end of the table, and onnxruntime
    fails on ids past its end), so every batch's ``input_ids`` and ``token_type_ids`` are checked here against
    the model's config first; check ids the same way (:func:`check_graph_ids`) wherever the graph is deployed.

    Raises:
        ValueError: the file was exported from another model class or by an unknown exporter, no batch was given, a
            batch holds ids outside [0, vocab_size) / [0, type_vocab_size), ``runtime`` is unknown, or an integer
            I-BERT graph is given to OpenVINO (which does not compute its int64 arithmetic exactly).
        ImportError: ``runtime="openvino"`` without OpenVINO installed (the message gives the pip command).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if openvino_config is not None and runtime != "openvino":
        raise ValueError("openvino_config is only for runtime='openvino'")
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    family = next((p.value for p in proto.metadata_props if p.key == "intbert.exporter"), DEFAULT_FAMILY)
    verifier = VERIFIERS.get(family)
    if verifier is None:
        raise ValueError(f"{onnx_path} was written by an exporter verify_onnx does not know ({family!r}); known: "
                         f"{sorted(VERIFIERS)}")
    if runtime not in verifier.runtimes:
        raise ValueError(verifier.refusal.format(path=onnx_path) or
                         f"{family} graphs are verified with runtime in {verifier.runtimes}, not {runtime!r}")
    graph = LOADERS[runtime](onnx_path, proto, threads, openvino_config)
    return verifier.verify(model, graph, batches)
