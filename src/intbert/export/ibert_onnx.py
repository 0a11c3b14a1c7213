"""Export the frozen integer I-BERT (``intbert.freeze``) to an ONNX graph of integer ops, bit-identical in onnxruntime.

``export_ibert_onnx(model, path)`` builds the graph directly from the ``FrozenIBert``'s integer buffers with
``onnx.helper`` (no tracing): the integer part is the engine's own ``IntegerIBertModel.encode`` run on the ONNX graph
backend (``intbert.engine.backends.onnx_graph``, whose tensors are graph tensor names), so every integer operation is
the engine's, op for op, in the engine's order:

    input_ids, attention_mask, token_type_ids (int64; (batch, sequence), or (batch, choices, sequence))
    -> int8 table Gathers -> 16-bit residual adds -> integer LayerNorm -> int8
    per layer: MatMulInteger (uint8 activations at zero point 128) -> int32 + bias -> requantize -> int8
               scores = MatMulInteger(q, k^T) -> i-softmax (uint8, masked keys 0) -> MatMulInteger(p, v) -> ...
               dense + residual -> LayerNorm -> int8 -> dense -> i-GELU -> int8 -> dense + residual -> LayerNorm
    -> last_hidden_state_int8 (int8) and last_hidden_state = int8 * scale (the first float op)
    -> the head's float layers (Gemm / MatMul, Tanh, Erf GELU, LayerNormalization), as the head module computes.

This module writes what ``encode`` does not hold: inputs and outputs, the multiple-choice flattening, the
dequantization and the float heads. The integer subgraphs (requantization, i-GELU, i-softmax, isqrt, LayerNorm) are
in :mod:`intbert.engine.backends.onnx_intops`, each the twin of its ``intops`` definition. The file is checked
before it is moved into place: onnx's checker, one run in onnxruntime at full optimization whose int8 hidden states
must equal the engine's (padded positions included), and the int8 kernels in the graph onnxruntime optimized (one
``MatMulInteger`` per linear layer and two per attention).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine import FrozenIBert, freeze
from ..engine.backends import onnx_intops as oi
from ..engine.backends.onnx_graph import OnnxGraphBackend
from ..engine.backends.ort_gemm import INT8_ABS_MAX, KERNELS, MAX_K, choose_kernel
from ..engine.model import IntegerIBertModel
from ..engine.modules import IntLinear
from ..errors import OverflowRiskError
from ..models.ibert.modeling_ibert import IBertPreTrainedModel
from .errors import ExportError

__all__ = ["IBertExportResult", "HEAD_OUTPUTS", "INT8_OUTPUT", "KERNELS", "OPSET", "as_frozen", "engine_int8",
           "export_ibert_onnx", "ibert_graph"]

#: Opset of the graph: 18 has BitShift (11+), Mod (10+), LayerNormalization (17+) and Split's num_outputs (18+).
OPSET = 18
#: IR version 8 is the lowest that carries opset 18; onnxruntime >= 1.14 loads it.
IR_VERSION = 8
#: The int8 hidden states, as the engine computes them (``frozen.encoder.encode``).
INT8_OUTPUT = "last_hidden_state_int8"

#: Head -> its ModelOutput fields in the graph (before last_hidden_state and INT8_OUTPUT, added to every head).
HEAD_OUTPUTS: dict[str, tuple[str, ...]] = {
    "IBertModel": ("last_hidden_state", "pooler_output"),
    "IBertForMaskedLM": ("logits",),
    "IBertForSequenceClassification": ("logits",),
    "IBertForMultipleChoice": ("logits",),
    "IBertForTokenClassification": ("logits",),
    "IBertForQuestionAnswering": ("start_logits", "end_logits"),
}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Example shapes of the check run after export (any batch and sequence run; the graph has no fixed size).
_EXAMPLE_BATCH, _EXAMPLE_SEQUENCE, _EXAMPLE_CHOICES = 2, 8, 2


@dataclass(frozen=True)
class IBertExportResult:
    """What `export_ibert_onnx` wrote and checked.

    ``op_counts``: node types in the written graph. ``int8_kernels`` / ``int8_kernel_counts``: int8 kernels in the
    graph onnxruntime optimized. ``weight_kernel`` / ``attention_kernel``: how the int8 GEMM operands are stored
    ("u8s8": int8 right operand; "u8u8": uint8 at zero point 128).
    """

    path: Path
    model_class: str
    opset: int
    outputs: tuple[str, ...]
    weight_kernel: str
    attention_kernel: str
    op_counts: dict[str, int]
    int8_kernels: int
    int8_kernel_counts: dict[str, int]


# ----------------------------------------------------------------------------------------------
# Model checks
# ----------------------------------------------------------------------------------------------


def as_frozen(model: nn.Module) -> FrozenIBert:
    """A FrozenIBert as it is; a calibrated quant-mode I-BERT simulation is frozen here (reference backend)."""
    if isinstance(model, FrozenIBert):
        return model
    if isinstance(model, IBertPreTrainedModel):
        # freeze raises UncalibratedError (calibrate first) or ValueError (float / force_dequant model), naming the fix.
        return freeze(model, backend="reference")
    raise TypeError(f"export_ibert_onnx takes a FrozenIBert (intbert.freeze(model)) or a calibrated quant-mode I-BERT "
                    f"model, got {type(model).__name__}")


def _check_exportable(frozen: FrozenIBert) -> None:
    head = frozen.head_name
    if head not in HEAD_OUTPUTS:
        raise TypeError(f"{head} is not an exportable I-BERT head; supported: {', '.join(HEAD_OUTPUTS)}")
    config = frozen.config
    if not isinstance(config.pad_token_id, int) or isinstance(config.pad_token_id, bool):
        raise ValueError(f"config.pad_token_id is {config.pad_token_id!r}; the graph computes RoBERTa positions from "
                         "the pad id, so it must be an int (as the engine needs)")
    if head == "IBertForQuestionAnswering" and config.num_labels != 2:
        raise ValueError(f"IBertForQuestionAnswering needs num_labels=2 (start and end logits), got {config.num_labels}")
    # MLAS sums u8 x u8 raw products (<= 255 * 255) in int32: exact while K <= MAX_K (engine.backends.ort_gemm). The
    # longest reduction of the attention context is the sequence, at most max_position_embeddings.
    for name, K in (("hidden_size", config.hidden_size), ("intermediate_size", config.intermediate_size),
                    ("max_position_embeddings", config.max_position_embeddings)):
        if K > MAX_K:
            raise OverflowRiskError(f"config.{name}={K} > {MAX_K}: an int8 GEMM over it can overflow onnxruntime's "
                                    "int32 accumulator (K * 255 * 255 < 2^31)")


def _linears(encoder: IntegerIBertModel) -> list[IntLinear]:
    return [getattr(layer, name) for layer in encoder.layer
            for name in ("query", "key", "value", "attention_dense", "intermediate", "output_dense")]


def _choose_kernels(encoder: IntegerIBertModel, kernel: str | None) -> tuple[str, str]:
    """(weight kernel, attention kernel) from ``ort_gemm.choose_kernel``, for a file that may run on any CPU.

    ``None`` gives a file exact everywhere (``portable``): u8s8 for weights of at most 7 bits (|w| <= 63: no int16
    pair sum can saturate), u8u8 for 8-bit weights and for the attention GEMMs (full-range activations).
    ``"u8s8"`` everywhere is exact only on CPUs whose u8s8 kernel accumulates in int32 (VNNI, AMX, ARM): refused
    when this machine's saturation probe fails.
    """
    w_max = max((int(lin.weight.to(torch.int16).abs().max()) for lin in _linears(encoder) if lin.weight.numel()),
                default=0)
    weight = choose_kernel(kernel, w_max, "export_ibert_onnx", portable=True)
    attention = choose_kernel(kernel, INT8_ABS_MAX, "export_ibert_onnx", portable=True)
    return weight, attention


# ----------------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------------


def _np(t: torch.Tensor, dtype=None) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a.astype(dtype) if dtype is not None else a


class _GraphWriter:
    """The whole graph: inputs, the engine's ``encode`` on the ONNX graph backend, the float end (heads), outputs.

    The integer part is not written here: ``IntegerIBertModel.encode`` runs on ``OnnxGraphBackend`` (engine/backends/
    onnx_graph.py), whose ops append the nodes. This class adds what ``encode`` does not hold: the graph's inputs and
    outputs, the multiple-choice flattening, the dequantization and the head's float layers (as the head module and
    ``IntegerIBertModel.forward`` compute them).
    """

    def __init__(self, frozen: FrozenIBert, weight_kernel: str, attention_kernel: str):
        self.frozen, self.encoder, self.config = frozen, frozen.encoder, frozen.config
        self.g = oi.GraphBuilder()
        # Nodes are named after the engine module they compute with (layer.0.query.MatMulInteger., ...).
        names = {id(module): name for name, module in self.encoder.named_modules() if name}
        self.backend = OnnxGraphBackend(self.g, weight_kernel, attention_kernel, names)

    def encode(self, ids: str, mask: str, token_types: str) -> str:
        """The engine's integer forward as graph nodes: the int8 last hidden states (an int64 tensor)."""
        h, _, _ = self.encoder.encode(ids, mask, token_types, backend=self.backend)
        return h

    # -- float heads ----------------------------------------------------------------------------
    def dense(self, x: str, lin: nn.Linear, name: str, two_d: bool) -> str:
        """x @ W^T + b in float32 (Gemm for (N, H) inputs, MatMul + Add for (..., H))."""
        g = self.g
        w, b = _np(lin.weight, np.float32), _np(lin.bias, np.float32)
        if two_d:
            return g.op("Gemm", [x, g.const(w, np.float32, f"{name}.weight"), g.const(b, np.float32, f"{name}.bias")],
                        name, transB=1)
        y = g.op("MatMul", [x, g.const(np.ascontiguousarray(w.T), np.float32, f"{name}.weight_t")], f"{name}.matmul")
        return g.op("Add", [y, g.const(b, np.float32, f"{name}.bias")], name)

    def first_token(self, h: str) -> str:
        return self.g.op("Gather", [h, self.g.i64(0, "zero")], "first_token", axis=1)  # (N, L, H) -> (N, H)

    def pooler(self, h: str) -> str:
        pooler = self.encoder.pooler
        with self.g.scope("pooler."):
            return self.g.op("Tanh", [self.dense(self.first_token(h), pooler.dense, "dense", True)], "pooled")

    def head(self, h: str, ids: str) -> dict[str, str]:
        """The head's ModelOutput fields from the float hidden states h (N, L, H), as the head module computes them."""
        g, model, head = self.g, self.frozen.model, self.frozen.head_name
        with g.scope("head."):
            if head == "IBertModel":
                return {"pooler_output": self.pooler(h)} if self.encoder.pooler is not None else {}
            if head == "IBertForSequenceClassification":  # <s> -> dense -> tanh -> out_proj (dropout: identity)
                c = model.classifier
                x = g.op("Tanh", [self.dense(self.first_token(h), c.dense, "dense", True)], "tanh")
                return {"logits": self.dense(x, c.out_proj, "out_proj", True)}
            if head == "IBertForTokenClassification":
                return {"logits": self.dense(h, model.classifier, "classifier", False)}
            if head == "IBertForQuestionAnswering":
                both = self.dense(h, model.qa_outputs, "qa_outputs", False)  # (N, L, 2)
                start, end = g.op("Split", [both], outputs=[g.fresh("start"), g.fresh("end")], axis=-1, num_outputs=2)
                last = g.i64([-1], "last_axis")
                return {"start_logits": g.op("Squeeze", [start, last], "start_logits"),
                        "end_logits": g.op("Squeeze", [end, last], "end_logits")}
            if head == "IBertForMultipleChoice":  # pooler -> classifier -> (batch, choices)
                score = self.dense(self.pooler(h), model.classifier, "classifier", True)  # (B * C, 1)
                choices = g.op("Shape", [ids], "choices", start=1, end=2)
                shape = g.op("Concat", [g.i64([-1], "minus_one"), choices], "logits_shape", axis=0)
                return {"logits": g.op("Reshape", [score, shape], "logits")}
            if head == "IBertForMaskedLM":  # dense -> gelu (erf) -> LayerNorm -> decoder
                lm = model.lm_head
                x = self.dense(h, lm.dense, "dense", False)
                # transformers' gelu = F.gelu: x * 0.5 * (1 + erf(x / sqrt 2))
                erf = g.op("Erf", [g.op("Mul", [x, g.const(1 / math.sqrt(2), np.float32, "inv_sqrt2")], "x_s")], "erf")
                gelu = g.op("Mul", [g.op("Mul", [x, g.const(0.5, np.float32, "half")], "half_x"),
                                    g.op("Add", [erf, g.const(1.0, np.float32, "one_f")], "one_plus_erf")], "gelu")
                ln = lm.layer_norm
                x = g.op("LayerNormalization", [gelu, g.const(_np(ln.weight, np.float32), np.float32, "ln.weight"),
                                                g.const(_np(ln.bias, np.float32), np.float32, "ln.bias")],
                         "layer_norm", axis=-1, epsilon=float(ln.eps))
                return {"logits": self.dense(x, lm.decoder, "decoder", False)}
        raise TypeError(f"no ONNX head for {head}")

    # -- the whole graph ----------------------------------------------------------------------
    def build(self):
        from onnx import helper

        g, config = self.g, self.config
        H = config.hidden_size
        multiple_choice = self.frozen.head_name == "IBertForMultipleChoice"
        axes = ["batch", "choices", "sequence"] if multiple_choice else ["batch", "sequence"]
        inputs = [g.reserve(name) for name in INPUT_NAMES]
        ids, mask, token_types = inputs
        if multiple_choice:  # (B, C, L) -> (B * C, L), as IBertForMultipleChoice.forward flattens
            ids, mask, token_types = (g.op("Flatten", [x], f"{x}_flat", axis=2) for x in inputs)
        h = self.encode(ids, mask, token_types)
        scale = self.encoder.layer[-1].output_out.scale if len(self.encoder.layer) else self.encoder.embeddings.out.scale
        # The engine's float end: value = int8 * scale in float32 (one exact cast, one rounding).
        with g.scope("dequantize."):
            h_int8 = g.op("Cast", [h], "int8", to=oi.INT8)
            h_float = g.op("Mul", [g.op("Cast", [h], "float", to=oi.FLOAT), g.const(_np(scale, np.float32), np.float32,
                                                                                    "scale")], "value")
        head_fields = self.head(h_float, inputs[0])
        hidden = {"last_hidden_state": h_float, INT8_OUTPUT: h_int8}
        if multiple_choice:  # hidden states back to (B, C, L, H)
            shape = g.op("Concat", [g.op("Shape", [inputs[0]], "input_shape"), g.i64([H], "hidden")], "hidden_shape4",
                         axis=0)
            hidden = {name: g.op("Reshape", [t, shape], f"{name}_4d") for name, t in hidden.items()}
        # The head's fields in ModelOutput order, then the float and the int8 hidden states.
        fields = {name: head_fields.get(name, hidden.get(name)) for name in HEAD_OUTPUTS[self.frozen.head_name]}
        fields = {name: t for name, t in fields.items() if t is not None}  # IBertModel without a pooler
        fields.update({name: t for name, t in hidden.items() if name not in fields})

        value_axes = axes + ["hidden"]
        dims = {INT8_OUTPUT: value_axes, "last_hidden_state": value_axes, "pooler_output": ["batch", H],
                "start_logits": ["batch", "sequence"], "end_logits": ["batch", "sequence"]}
        head = self.frozen.head_name
        if head == "IBertForMultipleChoice":
            dims["logits"] = ["batch", "choices"]
        elif head in ("IBertForSequenceClassification",):
            dims["logits"] = ["batch", config.num_labels]
        elif head == "IBertForTokenClassification":
            dims["logits"] = ["batch", "sequence", config.num_labels]
        elif head == "IBertForMaskedLM":
            dims["logits"] = ["batch", "sequence", config.vocab_size]
        outputs = []
        for name, tensor in fields.items():
            g.nodes.append(helper.make_node("Identity", [tensor], [g.reserve(name)], name=g.fresh("output.")))
            dtype = oi.INT8 if name == INT8_OUTPUT else oi.FLOAT
            shape = [H if d == "hidden" else d for d in dims[name]]
            outputs.append(helper.make_tensor_value_info(name, dtype, shape))
        graph = helper.make_graph(
            g.nodes, f"intbert_{head}",
            [helper.make_tensor_value_info(name, oi.INT64, axes) for name in INPUT_NAMES], outputs,
            initializer=g.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="intbert")
        model.ir_version = IR_VERSION
        return model


def ibert_graph(model: nn.Module, kernel: str | None = None):
    """The ONNX ModelProto of a FrozenIBert (or a calibrated simulation, frozen here), unchecked and unsaved.

    Use `export_ibert_onnx` to write a file; this is the graph it writes, for inspection.
    """
    frozen = as_frozen(model)
    _check_exportable(frozen)
    weight_kernel, attention_kernel = _choose_kernels(frozen.encoder, kernel)
    proto = _GraphWriter(frozen, weight_kernel, attention_kernel).build()
    from onnx import helper

    helper.set_model_props(proto, {
        "intbert.exporter": "ibert",
        "intbert.model_class": frozen.head_name,
        "intbert.target": "onnxruntime",
        "intbert.weight_kernel": weight_kernel,
        "intbert.attention_kernel": attention_kernel,
    })  # fmt: skip
    return proto


# ----------------------------------------------------------------------------------------------
# Export and checks
# ----------------------------------------------------------------------------------------------


def _example_inputs(frozen: FrozenIBert) -> dict[str, torch.Tensor]:
    """Deterministic ids in the vocabulary (not the pad id), one padded position in row 0."""
    config = frozen.config
    longest = config.max_position_embeddings - config.pad_token_id - 1
    sequence = max(1, min(_EXAMPLE_SEQUENCE, longest))
    shape = (_EXAMPLE_BATCH, _EXAMPLE_CHOICES, sequence) if frozen.head_name == "IBertForMultipleChoice" else (
        _EXAMPLE_BATCH, sequence)
    ids = torch.arange(math.prod(shape)).reshape(shape) * 7 % config.vocab_size
    if config.vocab_size > 1:
        ids[ids == config.pad_token_id] = (config.pad_token_id + 1) % config.vocab_size
    mask = torch.ones(shape, dtype=torch.long)
    if sequence > 1:
        ids[0, ..., -1], mask[0, ..., -1] = config.pad_token_id, 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(shape, dtype=torch.long)}


def engine_int8(frozen: FrozenIBert, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The engine's int8 last hidden states for graph inputs (flattened and restored for multiple choice), padded
    positions included (the graph computes them)."""
    ids = inputs["input_ids"]
    flat = {k: v.reshape(-1, v.shape[-1]).to(frozen.device) for k, v in inputs.items()}
    with frozen.encoder.padded():
        q, _, _ = frozen.encoder.encode(flat["input_ids"], flat.get("attention_mask"), flat.get("token_type_ids"))
    return q.cpu().reshape(*ids.shape, q.shape[-1])


def _check_in_onnxruntime(file: str, frozen: FrozenIBert, expected_gemms: int) -> tuple[int, dict[str, int]]:
    """Run the file once in onnxruntime (full optimization), compare its int8 states with the engine's, count kernels."""
    from .ort_kernels import inspect_optimized_graph

    example = _example_inputs(frozen)
    try:
        session, graph = inspect_optimized_graph(file)
        got = session.run([INT8_OUTPUT], {k: v.numpy() for k, v in example.items()})[0]
    except Exception as err:  # ORT's own errors carry no common base class
        raise ExportError(f"onnxruntime could not run the exported I-BERT graph: {err}") from err
    want = engine_int8(frozen, example).numpy()
    if got.shape != want.shape or not np.array_equal(got, want):
        wrong = int((got != want).sum()) if got.shape == want.shape else got.size
        raise ExportError(f"the graph's int8 hidden states differ from the engine's on the check batch ({wrong} of "
                          f"{want.size} values); this is a bug in the exporter or in onnxruntime's kernels, report it")
    if graph.int8_kernels < expected_gemms:
        raise ExportError(
            f"onnxruntime runs {graph.int8_kernels} int8 kernels ({graph.int8_kernel_counts()}) for {expected_gemms} "
            "integer GEMMs: its optimizer rewrote a MatMulInteger into something else; report it with the "
            "onnxruntime version")
    return graph.int8_kernels, graph.int8_kernel_counts()


def export_ibert_onnx(model: nn.Module, path: str | os.PathLike, target: str = "onnxruntime", *,
                      kernel: str | None = None) -> IBertExportResult:
    """Export a frozen integer I-BERT to the ONNX file ``path``, bit-identical to the engine in onnxruntime.

    Args:
        model: a `FrozenIBert` (``intbert.freeze(model)``), any head; or a calibrated quant-mode I-BERT simulation,
            which is frozen here first (it gives the same integers, the engine being bit-identical to it).
        path: the ``.onnx`` file (written beside it under a temporary name, moved into place after every check).
        target: "onnxruntime" only: the graph uses int64 Mod / BitShift / CumSum, which TensorRT does not run.
        kernel: None (default: int8 GEMM operands stored so that the file is exact on every CPU), "u8u8" (every
            right operand uint8 at zero point 128) or "u8s8" (int8 right operands: about 1.3x faster GEMMs on CPUs
            with VNNI, exact only there; refused on a machine whose u8s8 kernel saturates).

    Returns an `IBertExportResult` (outputs, kernels, op counts, int8 kernels onnxruntime runs).

    Raises:
        UncalibratedError: a simulation model that was never calibrated (calibrate it, then export).
        ValueError: unknown target, a float or force_dequant simulation (freeze's message), a head option the graph
            cannot carry (QA with num_labels != 2, no pad_token_id), or ``path`` is a folder.
        OverflowRiskError: kernel="u8s8" on a CPU that saturates it, or a reduction longer than the int32-exact bound.
        TypeError: not an I-BERT model, or an unknown keyword option.
        ExportError: onnxruntime cannot run the graph, its int8 states differ from the engine's, or it does not run
            the GEMMs as int8 kernels. Nothing is written then.
    """
    if target != "onnxruntime":
        raise ValueError(f"target={target!r}: the I-BERT integer graph is exported for 'onnxruntime' only (it needs "
                         "int64 Mod, BitShift and CumSum, which TensorRT does not run)")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file path such as {path / 'model.onnx'}")
    frozen = as_frozen(model)
    proto = ibert_graph(frozen, kernel)
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    op_counts: dict[str, int] = {}
    for node in proto.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    expected_gemms = 8 * len(frozen.encoder.layer)  # q, k, v, attention dense, 2 FFN linears, scores, context
    metadata = {p.key: p.value for p in proto.metadata_props}

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)  # same filesystem: os.replace is atomic
    try:
        file = os.path.join(folder, "model.onnx")
        onnx.save(proto, file)
        kernels, kernel_counts = _check_in_onnxruntime(file, frozen, expected_gemms)
        os.replace(file, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return IBertExportResult(
        path=path, model_class=frozen.head_name, opset=OPSET, outputs=tuple(o.name for o in proto.graph.output),
        weight_kernel=metadata["intbert.weight_kernel"], attention_kernel=metadata["intbert.attention_kernel"],
        op_counts=dict(sorted(op_counts.items())), int8_kernels=kernels, int8_kernel_counts=kernel_counts,
    )  # fmt: skip
