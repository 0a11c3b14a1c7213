"""QDQBERT -> ONNX: every head, Q/DQ counts, int8 weights, int8 kernels in onnxruntime, agreement, dynamic shapes, errors.

Tiny models (2 layers, hidden 32) calibrated with max on seeded random ids. Each layer has 14 activation quantizers
(6 QuantLinear inputs, 4 matmul inputs, 4 residual-add inputs) and 6 weight quantizers, so a graph carries 28
QuantizeLinear and 40 DequantizeLinear nodes, and 12 quantized linear layers.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from intbert.errors import UncalibratedError
from intbert.export import ExportError, export_onnx, verify_onnx
from intbert.export.qdq_form import export_form, reduced_weight_range
from intbert.export.qdq_onnx import check_int8_kernels, check_qdq_graph
from intbert.export.qdq_ops import dequantize_linear, quantize_linear
from intbert.models.qdqbert import (
    QDQBertConfig,
    QDQBertForMaskedLM,
    QDQBertForMultipleChoice,
    QDQBertForNextSentencePrediction,
    QDQBertForQuestionAnswering,
    QDQBertForSequenceClassification,
    QDQBertForTokenClassification,
    QDQBertLMHeadModel,
    QDQBertModel,
    calibrate_qdq,
)
from intbert.quantization import TensorQuantizer, disable_quantizers, quantize
from intbert.quantization.nn import QuantLinear

VOCAB, LAYERS = 99, 2
ACTIVATION_QUANTIZERS, WEIGHT_QUANTIZERS, QUANTIZED_LINEARS = 14 * LAYERS, 6 * LAYERS, 6 * LAYERS
ATTENTION_MATMULS = 2 * LAYERS

# onnxruntime vs PyTorch on these tiny models. Measured (onnxruntime 1.32, torch 2.13, x86 CPU): max |diff| <= 4.8e-7
# and mean <= 4e-8 when no quantizer rounds differently; float32 summation-order noise moves a value across a rounding
# boundary now and then (1 of 60 random batches: one level of one quantizer, max |diff| 2.2e-4, 6 elements of 111,360).
# The bounds allow such a flip with margin; a wrong scale, zero point or rounding rule moves outputs by > 1e-2.
ORT_MAX_ABS_DIFF = 1e-3
ORT_MEAN_ABS_DIFF = 1e-5


def tiny_config(**overrides) -> QDQBertConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                  intermediate_size=37, type_vocab_size=16, max_position_embeddings=64, num_labels=3)
    fields.update(overrides)
    return QDQBertConfig(**fields)


def inputs(seed: int, batch: int = 3, seq: int = 7, choices: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, seq) if choices is None else (batch, choices, seq)
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, ..., -2:] = 0  # a padded row
    return {"input_ids": torch.randint(0, VOCAB, shape, generator=g), "attention_mask": mask,
            "token_type_ids": torch.randint(0, 2, shape, generator=g)}  # fmt: skip


def calibrated(cls=QDQBertModel, choices: int | None = None, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cls(tiny_config(**config)).eval()
    calibrate_qdq(model, [inputs(10, choices=choices), inputs(11, choices=choices)], progress=False)
    return model


def other_shapes(choices: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Batches at shapes other than the export's example (batch 2, sequence 8): the axes must be dynamic."""
    if choices is None:
        return [inputs(20), inputs(21, batch=1, seq=13), inputs(22, batch=5, seq=3)]
    return [inputs(20, choices=2), inputs(21, batch=1, seq=13, choices=3)]


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def assert_agrees(report) -> None:
    assert report.max_abs_diff <= ORT_MAX_ABS_DIFF, report
    assert report.mean_abs_diff <= ORT_MEAN_ABS_DIFF, report


HEADS = [
    (QDQBertModel, {}, None),
    (QDQBertForMaskedLM, {}, None),
    (QDQBertLMHeadModel, {"is_decoder": True}, None),
    (QDQBertForNextSentencePrediction, {}, None),
    (QDQBertForSequenceClassification, {}, None),
    (QDQBertForMultipleChoice, {}, 2),
    (QDQBertForTokenClassification, {}, None),
    (QDQBertForQuestionAnswering, {"num_labels": 2}, None),
]


# ----------------------------------------------------------------------------------------------------------------------
# Every head, both exporters


@pytest.mark.parametrize("cls,config,choices", HEADS, ids=lambda c: getattr(c, "__name__", ""))
def test_every_head_exports_qdq_pairs_that_run_as_int8_kernels_and_agree(tmp_path, cls, config, choices):
    model = calibrated(cls, choices, **config)
    result = export_onnx(model, tmp_path / "model.onnx", "onnxruntime", dynamo=False)
    counts = op_counts(result.path)
    assert counts["QuantizeLinear"] == result.quantize_nodes == ACTIVATION_QUANTIZERS
    assert counts["DequantizeLinear"] == result.dequantize_nodes == ACTIVATION_QUANTIZERS + WEIGHT_QUANTIZERS
    assert result.quantized_linears == QUANTIZED_LINEARS and result.int8_kernels >= QUANTIZED_LINEARS

    report = verify_onnx(model, result.path, other_shapes(choices))
    assert_agrees(report)
    # Every quantized GEMM runs as an int8 kernel: the 12 linears and both attention matmuls of each layer.
    assert report.int8_kernels == QUANTIZED_LINEARS + ATTENTION_MATMULS and report.unfused_dequantized_gemms == 0
    assert [o.name for o in ort.InferenceSession(str(result.path)).get_outputs()] == list(result.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("cls,config,choices", [HEADS[0], HEADS[5]], ids=lambda c: getattr(c, "__name__", ""))
def test_default_dynamo_exporter_keeps_every_qdq_node(tmp_path, cls, config, choices):
    """torch.onnx.export's default (dynamo) exporter ignores autograd symbolic(); the custom-op translations survive.

    One layer: torch.export's tracing time grows with the graph, and one layer has every kind of quantizer.
    """
    model = calibrated(cls, choices, num_hidden_layers=1, **config)
    result = export_onnx(model, tmp_path / "model.onnx")  # defaults: onnxruntime target, dynamo exporter
    assert result.dynamo and result.target == "onnxruntime"
    counts = op_counts(result.path)
    assert counts["QuantizeLinear"] == ACTIVATION_QUANTIZERS // LAYERS
    assert counts["DequantizeLinear"] == (ACTIVATION_QUANTIZERS + WEIGHT_QUANTIZERS) // LAYERS
    report = verify_onnx(model, result.path, other_shapes(choices))
    assert_agrees(report)
    assert report.int8_kernels == (QUANTIZED_LINEARS + ATTENTION_MATMULS) // LAYERS


@pytest.mark.parametrize("position", ["relative_key", "relative_key_query"])
def test_relative_position_embeddings_export(tmp_path, position):
    model = calibrated(position_embedding_type=position)
    result = export_onnx(model, tmp_path / "model.onnx", dynamo=False)
    assert_agrees(verify_onnx(model, result.path, other_shapes()))


def test_plain_export_loses_the_qdq_nodes_and_the_check_says_so(tmp_path):
    """What exporting the fake-quant model directly gives (Div/Round/Clip, no Q/DQ), and the check that catches it."""
    model = calibrated()
    path = tmp_path / "plain.onnx"
    example = inputs(0)
    torch.onnx.export(model, (), str(path), kwargs={**example, "return_dict": False}, dynamo=False)
    counts = op_counts(path)
    assert counts["QuantizeLinear"] == 0 and counts["Round"] > 0
    _, expected = export_form(model, "onnxruntime", reduce_range=False)
    with pytest.raises(ExportError, match="0 QuantizeLinear nodes, expected 28"):
        check_qdq_graph(onnx.load(str(path)), expected)


# ----------------------------------------------------------------------------------------------------------------------
# What the graph holds, per target


def _initializers(path) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def _zero_points(proto, op: str) -> list[np.ndarray]:
    """The zero point of every ``op`` node (the TorchScript exporter writes a repeated one as an Identity of the first)."""
    values = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return [values[node.input[2]] for node in proto.graph.node if node.op_type == op]


def test_onnxruntime_target_writes_uint8_activations_at_128_and_int8_weights(tmp_path):
    model = calibrated()
    result = export_onnx(model, tmp_path / "model.onnx", "onnxruntime", dynamo=False, reduce_range=False)
    proto = onnx.load(str(result.path))
    zero_points = _zero_points(proto, "QuantizeLinear")
    assert len(zero_points) == ACTIVATION_QUANTIZERS
    assert all(z.dtype == np.uint8 and (z == 128).all() for z in zero_points)
    weight_zero_points = [z for z in _zero_points(proto, "DequantizeLinear") if z.dtype == np.int8]
    assert len(weight_zero_points) == WEIGHT_QUANTIZERS and all((z == 0).all() for z in weight_zero_points)
    inits = _initializers(result.path)
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            q, _ = quantize(module.weight.detach(), module._weight_quantizer.amax)
            stored = inits[f"model.{name}.weight_q"]
            assert stored.dtype == np.int8 and torch.equal(torch.from_numpy(stored), q), name


def test_tensorrt_target_is_signed_int8_zero_point_zero_with_per_channel_weights(tmp_path):
    model = calibrated()
    result = export_onnx(model, tmp_path / "model.onnx", "tensorrt", dynamo=False)
    assert result.int8_kernels is None and not result.reduce_range
    proto = onnx.load(str(result.path))
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    zero_points = _zero_points(proto, "QuantizeLinear") + _zero_points(proto, "DequantizeLinear")
    assert len(zero_points) == 2 * ACTIVATION_QUANTIZERS + WEIGHT_QUANTIZERS
    assert all(z.dtype == np.int8 and (z == 0).all() for z in zero_points)
    query = model.encoder.layer[0].attention.self.query
    scale = inits["model.encoder.layer.0.attention.self.query.weight_scale"]
    # One scale per output row (axis 0 of the [out, in] weight): amax / 127.
    assert scale.shape == (32,)
    assert torch.equal(torch.from_numpy(scale), (query._weight_quantizer.amax / 127).flatten())
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("query.weight_q")]
    assert [a.i for a in weight_dq[0].attribute if a.name == "axis"] == [0]
    assert_agrees(verify_onnx(model, result.path, other_shapes()))


def test_reduce_range_writes_7_bit_weights_and_verify_compares_with_the_same_weights(tmp_path):
    model = calibrated()
    result = export_onnx(model, tmp_path / "model.onnx", "onnxruntime", dynamo=False, reduce_range=True)
    assert result.reduce_range
    weights = [v for k, v in _initializers(result.path).items() if k.endswith(".weight_q")]
    assert len(weights) == WEIGHT_QUANTIZERS and all(w.min() >= -64 and w.max() <= 63 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) == 63  # the row maximum lands on the top 7-bit level
    report = verify_onnx(model, result.path, other_shapes())
    assert report.reduce_range
    assert_agrees(report)
    # The reference really is the 7-bit model: the 8-bit one differs by far more than the export does.
    with torch.no_grad():
        eight = model(**inputs(20)).last_hidden_state
        with reduced_weight_range(model):
            seven = model(**inputs(20)).last_hidden_state
    assert (eight - seven).abs().max() > 10 * ORT_MAX_ABS_DIFF  # measured 0.029
    assert all(q.num_bits == 8 for n, q in model.named_modules() if n.endswith("_weight_quantizer"))  # restored


def test_disabled_quantizers_emit_no_nodes(tmp_path):
    model = calibrated()
    disabled = disable_quantizers(model, r"\.add_")
    assert len(disabled) == 4 * LAYERS
    result = export_onnx(model, tmp_path / "model.onnx", dynamo=False)
    counts = op_counts(result.path)
    assert counts["QuantizeLinear"] == ACTIVATION_QUANTIZERS - len(disabled)
    assert counts["DequantizeLinear"] == ACTIVATION_QUANTIZERS - len(disabled) + WEIGHT_QUANTIZERS
    assert_agrees(verify_onnx(model, result.path, other_shapes()))


# ----------------------------------------------------------------------------------------------------------------------
# Numerics: the export form and the ONNX ops are the model's own integers


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_export_form_computes_the_model_bit_for_bit(target):
    """Q/DQ ops, uint8 at 128 (or int8 at 0) and int8 weight buffers give exactly the fake-quant model's floats."""
    model = calibrated(QDQBertForQuestionAnswering, num_labels=2)
    form, _ = export_form(model, target, reduce_range=False)
    assert not any(isinstance(m, (TensorQuantizer, QuantLinear)) for m in form.modules())
    with torch.no_grad():
        for batch in other_shapes():
            expected, got = model(**batch), form(**batch)
            assert torch.equal(expected.start_logits, got.start_logits)
            assert torch.equal(expected.end_logits, got.end_logits)


@pytest.mark.parametrize("flag", ["narrow_range", "clip"])
def test_narrow_range_and_clipping_are_exported_as_clamps(tmp_path, flag):
    model = calibrated()
    output = model.encoder.layer[-1].output  # its add quantizers feed LayerNorm directly: a changed level shows
    quantizers = (output.add_local_input_quantizer, output.add_residual_input_quantizer)
    with torch.no_grad():
        plain = model(**inputs(20)).last_hidden_state
        for q in quantizers:  # smaller ranges, so that inputs fall below -amax and the flag changes results
            q.amax = q.amax * 0.3
        shrunk = model(**inputs(20)).last_hidden_state
        for q in quantizers:
            if flag == "narrow_range":
                q.narrow_range = True
            else:
                q.enable_clip()
        flagged = model(**inputs(20)).last_hidden_state
    assert not torch.equal(plain, shrunk) and not torch.equal(shrunk, flagged)  # the flag matters on these inputs
    form, _ = export_form(model, "onnxruntime", reduce_range=False)
    with torch.no_grad():
        for batch in other_shapes():
            assert torch.equal(model(**batch).last_hidden_state, form(**batch).last_hidden_state)
    result = export_onnx(model, tmp_path / "model.onnx", dynamo=False)
    assert_agrees(verify_onnx(model, result.path, other_shapes()))


def _run_onnx_qdq(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int):
    """onnxruntime's QuantizeLinear and DequantizeLinear on one tensor (optimizations off: the ops themselves)."""
    zp_type = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("q", zp_type, list(x.shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zero_point, "z")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("zero_point", [0, 128], ids=["int8_zp0", "uint8_zp128"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_quantize_linear_ops_equal_onnxruntime_and_the_fake_quant_integers(zero_point, per_channel):
    """Our torch Q/DQ bodies = ORT's kernels bit for bit (x / s, ties to even, saturation), and = intbert's quantize."""
    g = torch.Generator().manual_seed(3)
    channels = 17
    amax = torch.rand(channels, generator=g) * 3 + 0.1 if per_channel else torch.tensor(1.7)
    scale = amax / 127
    s = scale.reshape(1, channels) if per_channel else scale
    x = torch.randn(33, channels, generator=g) * 2  # beyond +-amax too: saturation
    ties = (torch.randint(-140, 140, (33, channels), generator=g) + 0.5) * s  # k + 0.5 levels: round half to even
    x = torch.cat([x, ties, torch.tensor([[0.0] * channels])]).to(torch.float32)
    dtype = torch.uint8 if zero_point else torch.int8
    zp = torch.full((channels,) if per_channel else (), zero_point, dtype=dtype)
    q = quantize_linear(x, scale, zp, 1)
    y = dequantize_linear(q, scale, zp, 1)
    ort_q, ort_y = _run_onnx_qdq(x.numpy(), scale.numpy(), zp.numpy(), 1)
    assert torch.equal(q, torch.from_numpy(ort_q))
    assert torch.equal(y, torch.from_numpy(ort_y))
    reference, _ = quantize(x, amax.reshape(1, channels) if per_channel else amax)  # intbert's one definition
    assert torch.equal(q.to(torch.int16) - zero_point, reference.to(torch.int16))


# ----------------------------------------------------------------------------------------------------------------------
# Errors and atomic writes


def test_uncalibrated_model_is_refused_naming_the_quantizer(tmp_path):
    model = QDQBertModel(tiny_config()).eval()
    path = tmp_path / "model.onnx"
    with pytest.raises(UncalibratedError, match=r"encoder\.layer\.0\.attention\.self\.query\._input_quantizer has no amax"):
        export_onnx(model, path, dynamo=False)
    assert not path.exists()


def test_a_quantizer_still_calibrating_is_refused(tmp_path):
    model = calibrated()
    model.encoder.layer[1].output.add_local_input_quantizer.enable_calib()
    with pytest.raises(UncalibratedError, match=r"layer\.1\.output\.add_local_input_quantizer is still collecting"):
        export_onnx(model, tmp_path / "model.onnx", dynamo=False)


@pytest.mark.parametrize("case,error,match", [
    ("cross_attention", ValueError, "cross-attention"),
    ("unknown_target", ValueError, "unknown target 'tflite'"),
    ("old_opset", ValueError, "per-channel Q/DQ needs >= 13"),
    ("four_bit_activations", ValueError, "matmul_a_input_quantizer quantizes activations to 4 bits"),
    ("unsigned_for_tensorrt", ValueError, "TensorRT takes signed int8"),
    ("reduce_range_for_tensorrt", ValueError, "reduce_range applies to target='onnxruntime' only"),
    ("zero_amax", ValueError, "<= 2\\^-24"),
    ("pre_quant_scale", ValueError, "matmul_a_input_quantizer has a pre_quant_scale"),
])  # fmt: skip
def test_unsupported_options_are_refused(tmp_path, case, error, match):
    if case == "cross_attention":  # its quantizers cannot even be calibrated without encoder states
        model = QDQBertModel(tiny_config(is_decoder=True, add_cross_attention=True)).eval()
    else:
        model = calibrated()
    quantizer = model.encoder.layer[0].attention.self.matmul_a_input_quantizer
    target, options = "onnxruntime", {}
    if case == "unknown_target":
        target = "tflite"
    elif case == "old_opset":
        options["opset"] = 12
    elif case == "four_bit_activations":
        quantizer.num_bits = 4
    elif case == "unsigned_for_tensorrt":
        quantizer._unsigned, target = True, "tensorrt"
    elif case == "reduce_range_for_tensorrt":
        target, options["reduce_range"] = "tensorrt", True
    elif case == "zero_amax":
        with torch.no_grad():
            quantizer.amax = torch.zeros(())
    elif case == "pre_quant_scale":  # would be dropped by a QuantizeLinear: refused, not lost
        quantizer.pre_quant_scale = torch.full((1,), 2.0)
    path = tmp_path / "model.onnx"
    with pytest.raises(error, match=match):
        export_onnx(model, path, target, dynamo=False, **options)
    assert not path.exists()


def test_models_no_exporter_handles_get_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="no exporter for Linear; supported: QDQBERT heads"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_graph_onnxruntime_cannot_run_is_refused_and_the_old_file_kept(tmp_path):
    """ORT fuses a per-channel activation scale into MatMulIntegerToFloat, then refuses to run it: caught at export."""
    model = calibrated()
    for layer in model.encoder.layer:
        quantizer = layer.intermediate.dense._input_quantizer
        amax = quantizer.amax.item()
        quantizer.amax = None
        quantizer.amax = torch.full((1, 1, 32), amax)  # one scale per hidden channel of the (B, S, H) input
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError, match="onnxruntime could not run the exported graph.*Per-Channel"):
        export_onnx(model, path, "onnxruntime", dynamo=False)
    assert path.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary file left behind
    # TensorRT takes per-channel activation scales; the graph is valid ONNX and ORT's reference path agrees.
    result = export_onnx(model, path, "tensorrt", dynamo=False)
    assert result.quantize_nodes == ACTIVATION_QUANTIZERS


def test_too_few_int8_kernels_is_an_export_error(tmp_path):
    """int8 activations with one Q feeding q/k/v (TorchScript merges their equal zero points): ORT leaves those
    MatMuls in float32. That is why the onnxruntime target writes uint8; the check catches a graph that lost them."""
    model = calibrated()
    result = export_onnx(model, tmp_path / "model.onnx", "tensorrt", dynamo=False)
    _, counts = export_form(model, "tensorrt", reduce_range=False)
    with pytest.raises(ExportError, match=r"onnxruntime runs \d+ int8 kernels .* for 12 quantized linear layers"):
        check_int8_kernels(str(result.path), counts, inputs(0))


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = calibrated(QDQBertForSequenceClassification).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "model.onnx", dynamo=False)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, QuantLinear)


def test_verify_refuses_a_file_from_another_head(tmp_path):
    model = calibrated()
    result = export_onnx(model, tmp_path / "model.onnx", dynamo=False)
    with pytest.raises(ValueError, match="exported from a QDQBertModel, not a QDQBertForMaskedLM"):
        verify_onnx(calibrated(QDQBertForMaskedLM), result.path, other_shapes())
    with pytest.raises(ValueError, match="batches is empty"):
        verify_onnx(model, result.path, [])


@pytest.mark.parametrize("field", ["input_ids", "token_type_ids"])
def test_the_graph_reads_a_negative_id_from_the_end_so_verify_refuses_it(tmp_path, field):
    """The documented behaviour (docs/export.md): ONNX Gather counts -1 from the table's end; verify_onnx says so."""
    model = calibrated()
    path = export_onnx(model, tmp_path / "model.onnx", "onnxruntime", dynamo=False).path
    size = model.config.vocab_size if field == "input_ids" else model.config.type_vocab_size
    x = inputs(3)
    negative, last = dict(x), dict(x)
    negative[field], last[field] = x[field].clone(), x[field].clone()
    negative[field][1, 2], last[field][1, 2] = -1, size - 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda feed: session.run(None, {k: v.numpy() for k, v in feed.items()})[0]  # noqa: E731
    assert np.array_equal(run(negative), run(last))
    with pytest.raises(ValueError, match=rf"{field} must lie in \[0, {size}\).*does not check ids"):
        verify_onnx(model, path, [negative])
