"""``verify_onnx``: run the PyTorch model and its ONNX export on the same batches and say how far apart they are.

The reference is the model as exported: for a ``reduce_range`` export (read from the file's ``intbert.reduce_range``
metadata) the model's 8-bit weights are temporarily given the 7 bits the graph holds, so the report measures the
export, not that deliberate change. The onnxruntime session uses ORT's full optimizations (what a deployment runs),
and the report also counts the int8 kernels in the graph ORT optimized.

``runtime="openvino"`` runs a QDQ graph in OpenVINO's CPU plugin instead (``pip install openvino``), compiled with
float32 float parts, and counts the graph's quantized GEMMs that OpenVINO's compiled model runs in int8.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .ort_kernels import FLOAT_GEMMS, inspect_optimized_graph
from .qdq_form import reduced_weight_range

__all__ = ["RUNTIMES", "VerifyReport", "check_graph_ids", "verify_onnx"]

#: Where verify_onnx can run the graph.
RUNTIMES = ("onnxruntime", "openvino")
#: OpenVINO precisions of a runtime node that computes in 8-bit integers.
OPENVINO_INT8 = frozenset({"u8", "i8"})
#: ONNX ops that move or retype a tensor without changing its values' grid (between a DQ and the GEMM it feeds).
LAYOUT_OPS = frozenset({"Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class VerifyReport:
    """Agreement between a model and its ONNX export on some batches.

    ``max_abs_diff`` / ``mean_abs_diff``: over every element of every output of every batch. ``per_output``: the same
    two numbers per output name. ``int8_kernels``: int8 kernels in onnxruntime's optimized graph (by op type in
    ``int8_kernel_counts``); ``unfused_dequantized_gemms``: quantized MatMul/Gemm nodes ORT left in float32.
    With ``runtime == "openvino"``: ``int8_kernels`` counts the graph's quantized GEMMs (MatMul/Gemm fed by a
    DequantizeLinear) that OpenVINO's compiled model runs in an int8 node (``int8_kernel_counts`` by that node's
    layer type; a fused attention ``Subgraph`` holds two), ``unfused_dequantized_gemms`` the others, and
    ``metadata["openvino.inference_precision"]`` the precision its float parts were compiled to.
    ``int8_hidden_equal``: I-BERT graphs only, whether ``last_hidden_state_int8`` equals the engine's int8 states in
    every batch (that output is then left out of ``max_abs_diff`` / ``mean_abs_diff``, which cover the float outputs).
    """

    max_abs_diff: float
    mean_abs_diff: float
    per_output: dict[str, tuple[float, float]]
    int8_kernels: int
    int8_kernel_counts: dict[str, int]
    unfused_dequantized_gemms: int
    batches: int
    target: str | None = None
    reduce_range: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    int8_hidden_equal: bool | None = None
    runtime: str = "onnxruntime"

    def __str__(self) -> str:
        kernels = ", ".join(f"{op} {n}" for op, n in self.int8_kernel_counts.items()) or "none"
        text = (f"max |diff| {self.max_abs_diff:.3g}, mean |diff| {self.mean_abs_diff:.3g} over {self.batches} batches; "
                f"int8 kernels in {self.runtime}: {self.int8_kernels} ({kernels})")
        if self.int8_hidden_equal is not None:
            text += f"; int8 hidden states bit-identical: {'yes' if self.int8_hidden_equal else 'NO'}"
        return text


class DiffTally:
    """Per-output max, sum and count of |runtime - model| over the compared batches (both families)."""

    def __init__(self, names: list[str], source: str, runtime: str = "onnxruntime"):
        self.source = source  # how the error message names the reference ("torch", "the model")
        self.runtime = runtime
        self.max = dict.fromkeys(names, 0.0)
        self.sum = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)
        self.batches = 0

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        if want.shape != got.shape:
            raise ValueError(f"output {name}: {self.runtime} gave shape {got.shape}, {self.source} {want.shape}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        self.max[name] = max(self.max[name], float(diff.max(initial=0.0)))
        self.sum[name] += float(diff.sum())
        self.count[name] += diff.size

    def summary(self, overall: list[str]) -> dict:
        """VerifyReport's difference fields; ``overall`` names the outputs in max_abs_diff / mean_abs_diff."""
        if not self.batches:
            raise ValueError("batches is empty; give at least one batch to compare on")
        total = sum(self.count[name] for name in overall)
        return {
            "max_abs_diff": max((self.max[name] for name in overall), default=0.0),
            "mean_abs_diff": sum(self.sum[name] for name in overall) / max(total, 1),
            "per_output": {name: (self.max[name], self.sum[name] / max(self.count[name], 1)) for name in self.max},
            "batches": self.batches,
        }


#: Id inputs and the config field that bounds each. The exported graphs do not check ids (see check_graph_ids).
ID_BOUNDS = (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size"))


def check_graph_ids(inputs: dict[str, torch.Tensor], config) -> None:
    """Refuse ids outside [0, size) before they reach an exported graph, which does not check them.

    Both exporters look ids up with ONNX ``Gather``, which reads a negative index as counting from the end of
    the table: ``token_type_ids = -1`` gives the last type's embedding and ``input_ids = -1`` the last word, a
    silent wrong answer, where the PyTorch models raise. onnxruntime fails on an id at or past the table's end
    (an ``INVALID_ARGUMENT`` error from the Gather node). Call this on inputs before ``session.run``.
    """
    for name, field in ID_BOUNDS:
        t, size = inputs.get(name), getattr(config, field, None)
        if t is None or size is None or not t.numel():
            continue
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} must lie in [0, {size}) (config.{field}), got values {lo}..{hi}; the ONNX "
                             "graph does not check ids (a negative id reads the table from its end)")


def _as_inputs(batch, names: list[str], config=None) -> dict[str, torch.Tensor]:
    """A batch (dict of model inputs, or a tensor of input ids) as the graph's inputs, with the model's defaults;
    with ``config``, ids are checked first (:func:`check_graph_ids`)."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError("each batch must be a dict with 'input_ids' (e.g. a tokenizer's output) or a tensor of ids")
    ids = batch["input_ids"]
    defaults = {"attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    missing = [name for name in names if name not in batch and name not in defaults]
    if missing:
        raise ValueError(f"the graph needs inputs {missing}, which the batch lacks")
    inputs = {name: batch[name] if name in batch else defaults[name] for name in names}
    if config is not None:
        check_graph_ids(inputs, config)
    return inputs


@dataclass(frozen=True)
class _LoadedGraph:
    """A QDQ graph ready to run in one runtime: its names, a run function and the int8 GEMMs the runtime chose."""

    input_names: list[str]
    output_names: list[str]
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    metadata: dict[str, str]
    int8_kernels: int
    int8_kernel_counts: dict[str, int]
    unfused_dequantized_gemms: int


def _openvino_graph(onnx_path, threads: int | None, config: Mapping | None) -> _LoadedGraph:
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
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    metadata = {p.key: p.value for p in proto.metadata_props}
    if metadata.get("intbert.exporter") == "ibert":
        # Measured with openvino 2026.4.1 on a 2-layer test model: the graph loads and runs, but its int8 hidden
        # states differ from onnxruntime's (= the engine's) by up to 252. OpenVINO's CPU plugin runs int64 tensors as
        # int32, and the graph's integer chains need 64 bits (47-bit requantization inputs, uint64 shifts).
        raise ValueError(f"{onnx_path} is an integer I-BERT graph, which OpenVINO's CPU plugin does not compute "
                         "exactly (it runs int64 tensors as int32); verify and deploy it with runtime='onnxruntime'")
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
    return _LoadedGraph(input_names, output_names, run, metadata, sum(counts.values()), counts, unfused)


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
    tensors of input ids. Outputs are matched by name (the graph's outputs are ``ModelOutput`` fields).

    ``runtime``: "onnxruntime" (both graph families), or "openvino" for a QDQBERT graph (``pip install openvino``),
    compiled for OpenVINO's CPU plugin with float32 float parts (``INFERENCE_PRECISION_HINT: "f32"``; OpenVINO's
    default on CPUs with bfloat16 support is bfloat16). ``openvino_config``: more ``compile_model`` properties,
    which override those. ``threads``: the runtime's intra-op threads (its default when None).

    The graphs do not check ids (ONNX ``Gather`` reads a negative id from the end of the table, and onnxruntime
    fails on ids past its end), so every batch's ``input_ids`` and ``token_type_ids`` are checked here against
    the model's config first; check ids the same way (:func:`check_graph_ids`) wherever the graph is deployed.

    Raises:
        ValueError: the file was exported from another model class, no batch was given, a batch holds ids
            outside [0, vocab_size) / [0, type_vocab_size), ``runtime`` is unknown, or an integer I-BERT graph is
            given to OpenVINO (which does not compute its int64 arithmetic exactly).
        ImportError: ``runtime="openvino"`` without OpenVINO installed (the message gives the pip command).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if openvino_config is not None and runtime != "openvino":
        raise ValueError("openvino_config is only for runtime='openvino'")
    if runtime == "openvino":
        graph = _openvino_graph(onnx_path, threads, openvino_config)
    else:
        session, optimized = inspect_optimized_graph(onnx_path, threads=threads)
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        if metadata.get("intbert.exporter") == "ibert":  # integer I-BERT graph: compared with the engine's integers
            from .ibert_onnx import verify_ibert_onnx

            return verify_ibert_onnx(model, session, optimized, metadata, batches)
        names = [o.name for o in session.get_outputs()]
        graph = _LoadedGraph([i.name for i in session.get_inputs()], names,
                             lambda feed: session.run(names, feed), metadata, optimized.int8_kernels,
                             optimized.int8_kernel_counts(), optimized.unfused_dequantized_gemms)
    metadata = graph.metadata
    exported_class = metadata.get("intbert.model_class")
    if exported_class is not None and exported_class != type(model).__name__:
        raise ValueError(f"{onnx_path} was exported from a {exported_class}, not a {type(model).__name__}")
    reduce_range = metadata.get("intbert.reduce_range") == "true"

    tally = DiffTally(graph.output_names, "torch", runtime)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), reduced_weight_range(model, enabled=reduce_range):
            for batch in batches:
                inputs = _as_inputs(batch, graph.input_names, model.config)
                device = next(model.parameters()).device
                expected = model(**{k: v.to(device) for k, v in inputs.items()}, return_dict=True)
                got = graph.run({k: v.cpu().numpy().astype(np.int64) for k, v in inputs.items()})
                for name, value in zip(graph.output_names, got):
                    tally.add(name, value, getattr(expected, name).detach().cpu().double().numpy())
                tally.batches += 1
    finally:
        model.train(was_training)
    return VerifyReport(
        **tally.summary(graph.output_names),
        int8_kernels=graph.int8_kernels,
        int8_kernel_counts=graph.int8_kernel_counts,
        unfused_dequantized_gemms=graph.unfused_dequantized_gemms,
        target=metadata.get("intbert.target"),
        reduce_range=reduce_range,
        metadata=metadata,
        runtime=runtime,
    )
