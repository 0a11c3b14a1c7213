"""Export a calibrated QDQBERT head to ONNX with QuantizeLinear/DequantizeLinear at every active quantizer.

``export_qdqbert_onnx(model, path, target=...)``:

1. checks the model (every active quantizer calibrated, no option the graph cannot carry) and builds its export form
   (`qdq_form`): Q/DQ custom ops, weights as int8 buffers, the caller's model untouched;
2. runs ``torch.onnx.export`` with the dynamo exporter (torch's default) or the TorchScript one (``dynamo=False``),
   with dynamic batch and sequence axes (and choices, for multiple choice);
3. checks the written graph: one QuantizeLinear per activation quantizer, each read by a DequantizeLinear, and one
   DequantizeLinear per weight quantizer reading an int8 initializer. A graph that lost its Q/DQ nodes (what an
   exporter that ignores the translations produces) fails here instead of deploying as float;
4. for ``target="onnxruntime"``: loads the graph in onnxruntime, runs it once, reads back the graph ORT optimized, and
   requires one int8 kernel (``MatMulIntegerToFloat``, ``QLinearMatMul``, ...) per quantized linear layer;
5. only then moves the file to ``path`` (written beside it under a temporary name, then ``os.replace``).

The graph's inputs are ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64); its outputs are the head's
``ModelOutput`` fields (`HEAD_OUTPUTS`). Past key values (decoder caching) and cross-attention are not exported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from intbert.models.qdqbert import (
    QDQBertForMaskedLM,
    QDQBertForMultipleChoice,
    QDQBertForNextSentencePrediction,
    QDQBertForQuestionAnswering,
    QDQBertForSequenceClassification,
    QDQBertForTokenClassification,
    QDQBertLMHeadModel,
    QDQBertModel,
    QDQBertPreTrainedModel,
)

from .errors import ExportError
from .qdq_form import TARGETS, QDQCounts, export_form
from .qdq_ops import MIN_OPSET, dynamo_translation_table, register_torchscript_symbolics

__all__ = ["QDQExportResult", "HEAD_OUTPUTS", "export_qdqbert_onnx", "check_qdq_graph", "check_int8_kernels",
           "DEFAULT_OPSET"]

# 18: LayerNormalization is a single node (17+), and the dynamo exporter builds opset 18 natively (another opset goes
# through onnx's version converter). Per-channel Q/DQ needs 13 (`MIN_OPSET`).
DEFAULT_OPSET = 18
# The newest opset onnx's version converter and ORT 1.32 both handle for this graph.
MAX_OPSET = 21

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Head class -> (output field, its dynamic axes); checked in this order (subclasses first).
HEAD_OUTPUTS: dict[type, tuple[tuple[str, tuple[str, ...]], ...]] = {
    QDQBertForMaskedLM: (("logits", ("batch", "sequence")),),
    QDQBertLMHeadModel: (("logits", ("batch", "sequence")),),
    QDQBertForNextSentencePrediction: (("logits", ("batch",)),),
    QDQBertForSequenceClassification: (("logits", ("batch",)),),
    QDQBertForMultipleChoice: (("logits", ("batch", "choices")),),
    QDQBertForTokenClassification: (("logits", ("batch", "sequence")),),
    QDQBertForQuestionAnswering: (("start_logits", ("batch", "sequence")), ("end_logits", ("batch", "sequence"))),
    QDQBertModel: (("last_hidden_state", ("batch", "sequence")), ("pooler_output", ("batch",))),
}

# Example shapes the graph is traced at. Sizes >= 2: torch.export specialises dimensions of size 0 and 1.
_EXAMPLE_BATCH, _EXAMPLE_SEQUENCE, _EXAMPLE_CHOICES = 2, 8, 2


@dataclass(frozen=True)
class QDQExportResult:
    """What `export_qdqbert_onnx` wrote and checked.

    ``int8_kernels`` / ``int8_kernel_counts``: the int8 kernels in onnxruntime's optimized graph (onnxruntime target;
    ``None`` for tensorrt, whose engine builder decides for itself).
    """

    path: Path
    target: str
    opset: int
    dynamo: bool
    reduce_range: bool
    quantize_nodes: int
    dequantize_nodes: int
    quantized_linears: int
    outputs: tuple[str, ...]
    int8_kernels: int | None = None
    int8_kernel_counts: dict[str, int] | None = None


def _head_outputs(model: nn.Module) -> tuple[tuple[str, tuple[str, ...]], ...]:
    for cls, outputs in HEAD_OUTPUTS.items():
        if isinstance(model, cls):
            if cls is QDQBertModel and model.pooler is None:
                return outputs[:1]
            return outputs
    supported = ", ".join(cls.__name__ for cls in HEAD_OUTPUTS)
    raise TypeError(f"{type(model).__name__} is not an exportable QDQBERT head; supported: {supported}")


def _check_config(model: QDQBertPreTrainedModel) -> None:
    config = model.config
    if config.add_cross_attention:
        raise ValueError(
            "cross-attention (config.add_cross_attention=True) takes encoder_hidden_states, which the exported graph "
            "has no input for; export an encoder or a decoder without cross-attention"
        )


class _OnnxEntry(nn.Module):
    """The traced function: (input_ids, attention_mask, token_type_ids) -> the head's output fields.

    The word-embedding lookup runs here and the model gets ``inputs_embeds``: the model's own input check reads
    ``int(input_ids.min())`` to name an out-of-vocabulary id, a data-dependent value torch.export cannot trace. The
    graph is the same (a Gather on the embedding table), and onnxruntime's Gather rejects out-of-range ids itself.
    """

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs
        # Decoders (is_decoder) would build a cache; the graph has no past inputs/outputs, so the cache stays off.
        self.no_cache = isinstance(model, (QDQBertModel, QDQBertLMHeadModel))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        kwargs = dict(inputs_embeds=self.model.get_input_embeddings()(input_ids), attention_mask=attention_mask,
                      token_type_ids=token_type_ids, return_dict=True)  # fmt: skip
        if self.no_cache:
            kwargs["use_cache"] = False
        out = self.model(**kwargs)
        return tuple(getattr(out, name) for name in self.outputs)


def _example_inputs(model: QDQBertPreTrainedModel) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    config = model.config
    sequence = max(2, min(_EXAMPLE_SEQUENCE, config.max_position_embeddings))
    if isinstance(model, QDQBertForMultipleChoice):
        shape, axes = (_EXAMPLE_BATCH, _EXAMPLE_CHOICES, sequence), ("batch", "choices", "sequence")
    else:
        shape, axes = (_EXAMPLE_BATCH, sequence), ("batch", "sequence")
    count = 1
    for size in shape:
        count *= size
    input_ids = (torch.arange(count) * 7 % config.vocab_size).reshape(shape)  # deterministic, in the vocabulary
    attention_mask = torch.ones(shape, dtype=torch.long)
    attention_mask[0, ..., -1] = 0  # one padded position, so the traced mask path is the general one
    token_type_ids = torch.zeros(shape, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}, axes


def _torch_export(entry: nn.Module, inputs: dict, input_axes: tuple[str, ...], outputs, file: str, opset: int,
                  dynamo: bool, max_sequence: int) -> None:
    output_names = [name for name, _ in outputs]
    with warnings.catch_warnings():
        # Tracer warnings about Python branches on shapes: the branches are shape checks that hold for every input
        # the dynamic axes allow (batch and sequence sizes never change the path through the model).
        warnings.simplefilter("ignore")
        if dynamo:
            try:
                table = dynamo_translation_table()
            except ImportError as err:
                raise ImportError(
                    "torch.onnx.export(dynamo=True) needs onnxscript: pip install 'intbert[onnx]' (or onnxscript), "
                    "or export with dynamo=False"
                ) from err
            dims = {name: torch.export.Dim(name, min=1) for name in input_axes if name != "sequence"}
            dims["sequence"] = torch.export.Dim("sequence", min=1, max=max_sequence)
            dynamic_shapes = {name: {i: dims[axis] for i, axis in enumerate(input_axes)} for name in INPUT_NAMES}
            # torch's registry logs one warning per torchvision op it cannot find; BERT uses none of them.
            registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
            level = registry_log.level
            registry_log.setLevel(logging.ERROR)
            try:
                # optimize=False: onnxscript's optimizer merges Q/DQ pairs that read the same tensor with equal scales
                # (q/k/v and the residual quantizers), which breaks one pair per quantizer; onnxruntime optimizes the
                # graph when it loads it anyway.
                torch.onnx.export(
                    entry, (), file, kwargs=inputs, input_names=list(INPUT_NAMES), output_names=output_names,
                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, custom_translation_table=table,
                    external_data=False, verbose=False, optimize=False,
                )  # fmt: skip
            finally:
                registry_log.setLevel(level)
        else:
            register_torchscript_symbolics()
            dynamic_axes = {name: dict(enumerate(input_axes)) for name in INPUT_NAMES}
            dynamic_axes.update({name: dict(enumerate(axes)) for name, axes in outputs})
            torch.onnx.export(
                entry, (), file, kwargs=inputs, input_names=list(INPUT_NAMES), output_names=output_names,
                opset_version=opset, dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True,
            )  # fmt: skip


def check_qdq_graph(model_proto, counts: QDQCounts) -> None:
    """Raise `ExportError` unless the graph holds exactly the Q/DQ nodes ``counts`` asks for.

    Activation quantizers: a QuantizeLinear whose output a DequantizeLinear reads. Weight quantizers: a
    DequantizeLinear reading an 8-bit integer initializer (the weight folded to int8, not a float weight quantized at
    run time).
    """
    from onnx import TensorProto

    graph = model_proto.graph
    constants = {init.name: init.data_type for init in graph.initializer}
    for node in graph.node:  # the TorchScript exporter may write a folded tensor as a Constant node
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = attribute.t.data_type
    # ... and writes each repeated initializer once, the repeats as Identity nodes reading it.
    identities = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    for name in identities:
        source = name
        while source in identities:
            source = identities[source]
        if source in constants:
            constants[name] = constants[source]
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    q_outputs = {n.output[0] for n in quantize}
    paired = [n for n in dequantize if n.input[0] in q_outputs]
    weight_dq = [n for n in dequantize if n.input[0] in constants]
    int8_types = (TensorProto.INT8, TensorProto.UINT8)
    float_weights = [n.input[0] for n in weight_dq if constants[n.input[0]] not in int8_types]
    unread = q_outputs - {n.input[0] for n in paired}
    problems = []
    if len(quantize) != counts.quantize_nodes:
        problems.append(f"{len(quantize)} QuantizeLinear nodes, expected {counts.quantize_nodes} (one per activation "
                        "quantizer)")
    if unread:
        problems.append(f"{len(unread)} QuantizeLinear outputs read by no DequantizeLinear")
    if len(paired) != counts.activation_quantizers:
        problems.append(f"{len(paired)} Q->DQ pairs, expected {counts.activation_quantizers}")
    if len(weight_dq) != counts.weight_quantizers:
        problems.append(f"{len(weight_dq)} DequantizeLinear nodes on initializers, expected {counts.weight_quantizers} "
                        "(one per weight quantizer)")
    if float_weights:
        problems.append(f"weights not folded to int8: {float_weights[:3]}")
    if len(dequantize) != counts.dequantize_nodes:
        problems.append(f"{len(dequantize)} DequantizeLinear nodes, expected {counts.dequantize_nodes}")
    if problems:
        raise ExportError(
            "the exported graph does not carry the model's quantizers: " + "; ".join(problems)
            + ". The exporter dropped or rewrote Q/DQ nodes; try the other exporter (dynamo=True/False) and report it"
        )


def check_int8_kernels(file: str, counts: QDQCounts, example: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    """Load ``file`` in onnxruntime, run it once on ``example`` and require one int8 kernel per quantized linear.

    The run matters: ORT can fuse a pattern into a kernel that then refuses its inputs at run time (a per-channel
    activation scale fused into MatMulIntegerToFloat fails with "Per-Channel is not supported yet" on the first run).
    """
    from .ort_kernels import inspect_optimized_graph

    try:
        session, graph = inspect_optimized_graph(file)
        session.run(None, {name: value.numpy() for name, value in example.items()})
    except Exception as err:  # ORT's own errors carry no common base class
        raise ExportError(
            f"onnxruntime could not run the exported graph: {err}. For target='onnxruntime', keep activation "
            "quantizers per tensor (ORT's int8 kernels take one activation scale), or export with target='tensorrt'"
        ) from err
    if graph.int8_kernels < counts.quantized_linears:
        raise ExportError(
            f"onnxruntime runs {graph.int8_kernels} int8 kernels ({graph.int8_kernel_counts()}) for "
            f"{counts.quantized_linears} quantized linear layers: {graph.unfused_dequantized_gemms} quantized MatMul/Gemm "
            "nodes stay float32 on dequantized values. ORT fuses DQ->MatMul into an int8 GEMM only with per-tensor "
            "activation scales, dynamic (not fully static) shapes, and uint8 activations where one quantized tensor "
            "feeds several MatMuls (int8 ones then stay float)"
        )
    return graph.int8_kernels, graph.int8_kernel_counts()


def _resolve_reduce_range(target: str, reduce_range: bool | None) -> bool:
    if target == "tensorrt":
        if reduce_range:
            raise ValueError("reduce_range applies to target='onnxruntime' only (TensorRT has no u8 x s8 saturation)")
        return False
    if reduce_range is None:
        from ..engine.backends.ort_gemm import u8s8_is_exact_for_8bit

        return not u8s8_is_exact_for_8bit()
    return bool(reduce_range)


def export_qdqbert_onnx(
    model: QDQBertPreTrainedModel,
    path: str | os.PathLike,
    target: str = "onnxruntime",
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    reduce_range: bool | None = None,
) -> QDQExportResult:
    """Export a calibrated QDQBERT head to ``path`` for ``target`` ("onnxruntime" or "tensorrt"); see the module doc.

    Args:
        model: any QDQBERT head (`HEAD_OUTPUTS`), calibrated (every enabled quantizer has an amax).
        path: the ``.onnx`` file to write (replaced atomically; nothing is written if the export fails).
        target: "onnxruntime" (uint8 activations with zero point 128, int8 weights, checked for int8 kernels in ORT)
            or "tensorrt" (signed int8, zero point 0, every QDQBERT placement).
        opset: ONNX opset, 13 (per-channel Q/DQ) to 21.
        dynamo: use torch's dynamo exporter (torch's default; needs onnxscript) or, with False, the TorchScript one.
        reduce_range: onnxruntime target only: write 8-bit weights with 7 bits so that AVX2 CPUs without VNNI cannot
            saturate (see `qdq_form`). ``None``: only when this machine's CPU is such a CPU.

    Raises:
        UncalibratedError: an enabled quantizer has no amax (named in the message).
        ValueError: unknown target, unsupported opset or model option (cross-attention, a quantizer setting Q/DQ
            cannot express).
        TypeError: the model is not a QDQBERT head.
        ExportError: the written graph lacks the expected Q/DQ nodes, or onnxruntime does not run it with int8 kernels.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset={opset!r} is unsupported: per-channel Q/DQ needs >= {MIN_OPSET}; use up to {MAX_OPSET}")
    outputs = _head_outputs(model)
    _check_config(model)
    reduce_range = _resolve_reduce_range(target, reduce_range)
    form, counts = export_form(model, target, reduce_range)
    form = form.cpu()
    entry = _OnnxEntry(form, tuple(name for name, _ in outputs)).eval()
    inputs, input_axes = _example_inputs(model)

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file path such as {path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)  # same filesystem: os.replace is atomic
    try:
        raw, final = os.path.join(folder, "exported.onnx"), os.path.join(folder, "checked.onnx")
        with torch.no_grad():
            _torch_export(entry, inputs, input_axes, outputs, raw, opset, dynamo, model.config.max_position_embeddings)
        import onnx

        proto = onnx.load(raw)
        check_qdq_graph(proto, counts)
        onnx.helper.set_model_props(proto, {
            "intbert.exporter": "qdqbert",
            "intbert.model_class": type(model).__name__,
            "intbert.target": target,
            "intbert.reduce_range": str(reduce_range).lower(),
        })  # fmt: skip
        onnx.save(proto, final)
        kernels = kernel_counts = None
        if target == "onnxruntime":
            kernels, kernel_counts = check_int8_kernels(final, counts, inputs)
        os.replace(final, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return QDQExportResult(
        path=path, target=target, opset=opset, dynamo=dynamo, reduce_range=reduce_range,
        quantize_nodes=counts.quantize_nodes, dequantize_nodes=counts.dequantize_nodes,
        quantized_linears=counts.quantized_linears, outputs=tuple(name for name, _ in outputs),
        int8_kernels=kernels, int8_kernel_counts=kernel_counts,
    )  # fmt: skip
