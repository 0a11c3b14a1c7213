"""Frozen integer I-BERT -> ONNX: each integer subgraph equals its intops twin in onnxruntime, every head exports and
runs bit-identical to the engine at shapes other than the export's, the GEMMs run as int8 kernels, and bad input is
refused with nothing written.

Subgraph tests build a graph of one builder (``onnx_intops``), run it in onnxruntime at full optimization and compare
with the ``intops`` function with ``np.array_equal`` on range edges (int64 extremes, 2^31 - 1, 47-bit values, every
shift 0..63, fully masked rows, constant rows). Whole-model tests use the tiny I-BERT heads of test_ibert_modeling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import intbert  # noqa: E402
from _sizes import AWKWARD_SIZES, gen, randint  # noqa: E402
from intbert.engine import FrozenIBert, freeze  # noqa: E402
from intbert.engine.backends import onnx_intops as oi, ort_gemm  # noqa: E402
from intbert.errors import OverflowRiskError, UncalibratedError  # noqa: E402
from intbert.export import ExportError, export_onnx, verify_onnx  # noqa: E402
from intbert.export import ibert_onnx  # noqa: E402
from intbert.export.ibert_onnx import INT8_OUTPUT, export_ibert_onnx, ibert_graph  # noqa: E402
from intbert.export.ort_kernels import inspect_optimized_graph  # noqa: E402
from intbert.quantization import intops  # noqa: E402
from onnx import helper  # noqa: E402

from test_ibert_modeling import HEADS, LAYERS, MAX_POS, PAD, VOCAB, batch, build, calibrated, head_model, tiny_config  # noqa: E402,I001

# onnxruntime's float32 head layers vs torch's on the same float hidden states (which are bit-identical): the two sum
# the GEMMs in different orders, a few ulps of values below ~1. Measured over 20 batches of every tiny head: max
# 1.5e-7 (masked LM logits), mean <= 2e-8. A wrong weight, transpose or missing bias moves logits by > 1e-2.
FLOAT_HEAD_ATOL = 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# Subgraphs against their intops twins


def run_subgraph(build_fn, *inputs: np.ndarray) -> np.ndarray:
    """Run ``build_fn(g, *input_names)`` as a one-output graph in onnxruntime (all optimizations on)."""
    g = oi.GraphBuilder()
    names = [g.reserve(f"in{i}") for i in range(len(inputs))]
    out = build_fn(g, *names)
    g.nodes.append(helper.make_node("Identity", [out], ["out"]))
    types = {np.dtype(np.int64): oi.INT64, np.dtype(np.bool_): oi.BOOL}
    graph = helper.make_graph(
        g.nodes, "subgraph",
        [helper.make_tensor_value_info(n, types[x.dtype], [f"{n}_{j}" for j in range(x.ndim)])
         for n, x in zip(names, inputs)],
        [helper.make_tensor_value_info("out", oi.INT64, None)], initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ibert_onnx.OPSET)])
    model.ir_version = ibert_onnx.IR_VERSION
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs)))[0]


INT64_EDGES = torch.tensor([-(2**63), 2**63 - 1, -(2**62), 2**62, -1, 0, 1, -(2**31), 2**31 - 1, -(2**47), 2**47 - 1])


def _wide(seed: int, n: int, bits: int) -> torch.Tensor:
    return torch.cat([randint(seed, -(2**bits) + 1, 2**bits, (n,)), INT64_EDGES.clamp(-(2**bits) + 1, 2**bits - 1)])


@pytest.mark.parametrize("shift", [0, 1, 14, 16, 31, 32, 47, 62, 63])
def test_floor_shift_equals_arithmetic_shift_over_the_whole_int64_range(shift):
    """Offset binary through uint64 BitShift is the signed floor shift for every int64, shift 63 included."""
    x = torch.cat([randint(shift, -(2**63), 2**63 - 1, (4000,)), INT64_EDGES])
    got = run_subgraph(lambda g, a: oi.shift_right(g, a, np.array(shift)), x.numpy())
    assert np.array_equal(got, (x >> shift).numpy())


@pytest.mark.parametrize("shift", [0, 1, 16, 62, 63])
def test_round_half_up_shift_equals_intops_including_ties(shift):
    x = _wide(shift, 4000, 61)
    if shift:  # exact ties k * 2^s + 2^(s-1), both signs
        ties = torch.tensor([3, -3, 0, -1]) * (1 << min(shift, 59)) + (1 << (shift - 1))
        x = torch.cat([x, ties.clamp(-(2**61), 2**61)])
    got = run_subgraph(lambda g, a: oi.shift_right(g, a, np.array(shift), "half"), x.numpy())
    assert np.array_equal(got, intops._round_shift(x, torch.tensor(shift)).numpy())


def test_per_element_shift_tensor_equals_intops():
    x = _wide(1, 6000, 61)
    s = randint(2, 0, 64, x.shape)
    got = run_subgraph(lambda g, a, b: oi.shift_right(g, a, b, "half"), x.numpy(), s.numpy())
    assert np.array_equal(got, intops._round_shift(x, s).numpy())


def test_floor_division_equals_torch_floor_div():
    a = torch.cat([_wide(3, 5000, 53), torch.tensor([-7, 7, -6, 6, 0])])
    d = torch.cat([randint(4, 1, 2**32, (a.numel() - 5,)), torch.tensor([2, 2, 3, 3, 1])])
    got = run_subgraph(lambda g, p, q: oi.floor_div(g, p, q), a.numpy(), d.numpy())
    assert np.array_equal(got, torch.div(a, d, rounding_mode="floor").numpy())


# Per-channel dyadics on both sides of the split path's e = 16, the largest mantissa and e = 63.
REQUANT_M = torch.tensor([2**30, 2**31 - 1, 0, 1234567890, 2**30 + 1, 2**31 - 2, 5])
REQUANT_E = torch.tensor([0, 15, 16, 17, 40, 62, 63])


@pytest.mark.parametrize("input_bits", [8, 31, 32, 47])
@pytest.mark.parametrize("bits", [8, 16, 22, 32])
def test_requantize_equals_intops_on_narrow_wide_and_mixed_channels(input_bits, bits):
    q = torch.cat([randint(input_bits, -(2 ** (input_bits - 1)) + 1, 2 ** (input_bits - 1), (400, 7)),
                   torch.tensor([[-(2 ** (input_bits - 1)) + 1], [2 ** (input_bits - 1) - 1], [0], [-1], [1]])
                   .expand(5, 7)])  # fmt: skip
    for m, e in ((REQUANT_M, REQUANT_E), (REQUANT_M[3:4], REQUANT_E[3:4]), (REQUANT_M[1:2], REQUANT_E[1:2])):
        got = run_subgraph(lambda g, a: oi.requantize(g, a, m.numpy(), e.numpy(), bits, input_bits), q.numpy())
        assert np.array_equal(got, intops.requantize(q, m, e, bits, input_bits).numpy()), (m.tolist(), e.tolist())


@pytest.mark.parametrize("scale", [intops.GELU_MIN_INPUT_SCALE, 1e-3, 0.05, 2.0**-7])
def test_int_gelu_equals_intops_at_the_clip_point_and_int32_edges(scale):
    scales = torch.tensor([scale, scale * 3, scale / 2 if scale > intops.GELU_MIN_INPUT_SCALE else scale])
    b, c, one, _ = intops.gelu_constants(scales)
    q = torch.cat([randint(5, -(2**31) + 1, 2**31, (300, 3)), randint(6, -4000, 4000, (300, 3)),
                   torch.tensor([[-(2**31) + 1], [2**31 - 1], [0], [1], [-1]]).expand(5, 3),
                   -b[None] - 1, -b[None], -b[None] + 1, b[None] - 1, b[None], b[None] + 1])  # fmt: skip
    got = run_subgraph(lambda g, a: oi.int_gelu(g, a, b.numpy(), c.numpy(), one.numpy()), q.numpy())
    assert np.array_equal(got, intops.int_gelu(q, b, c, one).numpy())


@pytest.mark.parametrize("scale", [2.0**-20, 2.0**-14, 1e-3, 0.02, 0.5])
@pytest.mark.parametrize("length", [1, 7, 17, 33])
def test_int_softmax_equals_intops_with_masks_and_extreme_scores(scale, length):
    consts = intops.softmax_constants(torch.tensor([scale]))
    ints = {k: int(v) for k, v in consts.items()}
    wide = randint(7, -(2**31) + 1, 2**31, (3, 2, 5, length))
    wide[0, 0, 0] = 2**31 - 1
    wide[0, 0, 1] = -(2**31) + 1
    wide[0, 1, 2] = torch.tensor([2**31 - 1, -(2**31) + 1] * length)[:length]
    wide[1, 0, 0] = 0  # an all-equal row
    narrow = randint(8, -3000, 3000, (3, 2, 5, length))
    keep = torch.rand(3, 1, 1, length, generator=gen(9)) > 0.3
    keep[0, ..., 0] = True
    keep[2] = False  # fully masked rows give zeros
    for scores in (wide, narrow):
        got = run_subgraph(lambda g, a, k: oi.int_softmax(g, a, k, ints, 8), scores.numpy(), keep.numpy())
        assert np.array_equal(got, intops.int_softmax(scores, keep, consts, 8).numpy())
        got = run_subgraph(lambda g, a: oi.int_softmax(g, a, None, ints, 8), scores.numpy())
        assert np.array_equal(got, intops.int_softmax(scores, None, consts, 8).numpy())


def test_isqrt_equals_intops_around_squares_and_powers_of_two():
    squares = [torch.tensor([k * k - 1, k * k, k * k + 1]) for k in (2, 3, 12345, 2**20, 2**31 - 1, 3037000499)]
    powers = [torch.tensor([(1 << k) - 1, 1 << k, (1 << k) + 1]) for k in range(1, 62)]
    n = torch.cat([torch.tensor([0, 1, 2**62 - 1]), randint(10, 0, 2**62, (3000,)), *squares, *powers])
    got = run_subgraph(lambda g, a: oi.isqrt(g, a), n[:, None].numpy())
    assert np.array_equal(got[:, 0], intops.isqrt(n).numpy())


@pytest.mark.parametrize("channels", AWKWARD_SIZES)
def test_int_layernorm_equals_intops_on_22_bit_rows(channels):
    q = randint(channels, -(2**21), 2**21, (4, 3, channels))
    q[0, 0] = 2**21 - 1
    q[0, 1] = -(2**21)
    q[0, 2, ::2] = -(2**21)
    q[1, 0] = 5  # a constant row: std 0 -> 1
    q[1, 1] = torch.arange(channels) % 2 * (2**22 - 1) - (2**21)  # alternating extremes
    shift = intops.layernorm_shift(q)
    weight, bias = torch.randn(channels, generator=gen(11)), torch.randn(channels, generator=gen(12)) * 3
    weight[0] = 0.0  # raised to the int32-safe minimum by layernorm_constants
    sign, bias_int, _ = intops.layernorm_constants(weight, bias, channels)
    got = run_subgraph(lambda g, a: oi.int_layernorm(g, a, channels, int(shift), sign.numpy(), bias_int.numpy()),
                       q.numpy())
    assert np.array_equal(got, intops.int_layernorm(q, shift, sign, bias_int).numpy())


# ----------------------------------------------------------------------------------------------------------------------
# Whole models


def _frozen(name: str, shape: str = "d8") -> FrozenIBert:
    return freeze(head_model(name, quant=True, shape=shape), backend="reference")


def _inputs(name: str, seed: int, b: int, seq: int) -> dict[str, torch.Tensor]:
    if name == "multiple_choice":
        flat = batch(seed, b=b * 2, seq=seq, pad_last=min(2, seq - 1))
        return {k: v.view(b, 2, seq) for k, v in flat.items()}
    return batch(seed, b=b, seq=seq, pad_last=min(2, seq - 1))


def _run(path, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v.numpy() for k, v in inputs.items()})))


# Shapes other than the export check's (2, 8): a single token, the longest sequence the tiny position table allows
# (MAX_POS - PAD - 1 = 38), odd sizes.
RUN_SHAPES = [(1, 1), (1, MAX_POS - PAD - 1), (5, 3), (3, 17)]


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_exports_and_runs_bit_identical_at_other_shapes(tmp_path, name):
    frozen = _frozen(name)
    path = tmp_path / "model.onnx"
    result = export_onnx(frozen, path)
    assert path.is_file() and result.path == path and result.model_class == frozen.head_name
    expected_fields = [f for f in ibert_onnx.HEAD_OUTPUTS[frozen.head_name]
                       if f != "pooler_output" or frozen.encoder.pooler is not None]
    assert list(result.outputs[: len(expected_fields)]) == expected_fields
    assert set(result.outputs) >= {"last_hidden_state", INT8_OUTPUT}
    for i, (b, seq) in enumerate(RUN_SHAPES):
        x = _inputs(name, 20 + i, b, seq)
        got = _run(path, x)
        q = ibert_onnx.engine_int8(frozen, x)
        assert got[INT8_OUTPUT].dtype == np.int8 and np.array_equal(got[INT8_OUTPUT], q.numpy()), (b, seq)
        scale = frozen.encoder.boundary_scales()[-1]
        assert np.array_equal(got["last_hidden_state"], (q.float() * scale).numpy()), (b, seq)
        out = frozen(**x)
        for field in expected_fields:
            want = getattr(out, field).numpy()
            assert got[field].shape == want.shape, field
            np.testing.assert_allclose(got[field], want, rtol=0, atol=FLOAT_HEAD_ATOL, err_msg=field)


@pytest.mark.parametrize("shape", ["d8", "d9"])
@pytest.mark.parametrize("weight_bit", [8, 7])
def test_verify_reports_bit_identical_int8_states_and_int8_kernels(tmp_path, shape, weight_bit):
    model = calibrated(build(intbert.IBertModel, tiny_config(True, shape, weight_bit=weight_bit)))
    frozen = freeze(model)
    path = tmp_path / "m.onnx"
    result = export_onnx(frozen, path)
    assert result.weight_kernel == ("u8s8" if weight_bit == 7 else "u8u8")  # u8s8 only where it cannot saturate
    assert result.attention_kernel == "u8u8"
    assert result.int8_kernel_counts == {"MatMulInteger": 8 * LAYERS}
    batches = [batch(s, b=4, seq=9, pad_last=3) for s in range(4)]
    report = verify_onnx(frozen, path, batches)
    assert report.int8_hidden_equal is True
    assert report.per_output["last_hidden_state"] == (0.0, 0.0)
    assert report.per_output["pooler_output"][0] <= FLOAT_HEAD_ATOL
    assert report.int8_kernel_counts == {"MatMulInteger": 8 * LAYERS} and report.batches == 4
    assert "bit-identical: yes" in str(report)
    # The simulation it was frozen from verifies the same (the engine is bit-identical to it).
    assert verify_onnx(model, path, batches[:1]).int8_hidden_equal is True


def test_narrow_calibration_saturates_every_clamp_and_stays_bit_identical(tmp_path):
    """Calibrated on one short batch, run on others: requantizations clip, softmax rows saturate, all exact."""
    model = calibrated(build(intbert.IBertForTokenClassification, tiny_config(True)),
                       make=lambda s: batch(s, b=1, seq=2, pad_last=0), seeds=(0,))
    frozen = freeze(model, backend="reference")
    export_onnx(frozen, tmp_path / "m.onnx")
    x = batch(3, b=4, seq=30, pad_last=5)
    x["attention_mask"][1] = 0  # a row with every key masked: probabilities 0
    x["input_ids"][2] = x["input_ids"][2, 0]  # one repeated token
    got = _run(tmp_path / "m.onnx", x)
    q = ibert_onnx.engine_int8(frozen, x)
    assert q.abs().max() >= 127  # the clamps are reached
    assert np.array_equal(got[INT8_OUTPUT], q.numpy())
    np.testing.assert_allclose(got["logits"], frozen(**x).logits.numpy(), rtol=0, atol=FLOAT_HEAD_ATOL)


def test_a_calibrated_simulation_is_frozen_and_exported(tmp_path):
    model = head_model("seqcls_single_label", quant=True)
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result.model_class == "IBertForSequenceClassification"
    x = batch(4)
    got = _run(tmp_path / "m.onnx", x)
    with torch.no_grad():
        want = model(**x).logits.numpy()
    np.testing.assert_allclose(got["logits"], want, rtol=0, atol=FLOAT_HEAD_ATOL)


def test_graph_is_integer_from_the_inputs_to_the_dequantize(tmp_path):
    """Every tensor before the hidden states' dequantize is an integer or bool (the engine's no-float rule)."""
    frozen = _frozen("model")
    proto = onnx.shape_inference.infer_shapes(ibert_graph(frozen), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.output]}
    integer = {oi.INT8, oi.UINT8, oi.INT32, oi.INT64, oi.UINT64, oi.BOOL}
    encoder = [n for n in proto.graph.node if not n.name.startswith(("dequantize.", "head.", "output."))
               and not any(o.startswith(("dequantize.", "head.")) for o in n.output)]
    assert len(encoder) > 500
    floats = [(n.op_type, o) for n in encoder for o in n.output if types.get(o) not in integer]
    assert not floats, floats[:5]
    gemms = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    assert len(gemms) == 8 * LAYERS
    assert not [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and not n.output[0].startswith("head.")]


def test_onnxruntimes_optimized_graph_runs_every_gemm_as_matmulinteger(tmp_path):
    frozen = _frozen("masked_lm")
    result = export_onnx(frozen, tmp_path / "m.onnx")
    _, graph = inspect_optimized_graph(tmp_path / "m.onnx")
    assert graph.int8_kernel_counts() == {"MatMulInteger": 8 * LAYERS} == result.int8_kernel_counts
    assert result.op_counts["MatMulInteger"] == 8 * LAYERS


def test_weights_are_stored_as_the_chosen_kernel_needs(tmp_path):
    frozen = _frozen("model")
    weights = {}
    for kernel in ("u8u8", None):
        proto = ibert_graph(frozen, kernel)
        inits = {i.name: i for i in proto.graph.initializer}
        first = next(n for n in proto.graph.node if n.op_type == "MatMulInteger")
        weights[kernel] = onnx.numpy_helper.to_array(inits[first.input[1]])
    w = frozen.encoder.layer[0].query.weight.numpy().T
    assert weights["u8u8"].dtype == np.uint8 and np.array_equal(weights["u8u8"].astype(np.int16) - 128, w)
    assert weights[None].dtype == np.uint8  # 8-bit weights: u8u8 by default, exact on every CPU


@pytest.mark.skipif(not ort_gemm.u8s8_is_exact_for_8bit(), reason="this CPU's u8 x s8 kernel saturates")
def test_u8s8_kernel_where_exact_stores_int8_operands_and_is_bit_identical(tmp_path):
    frozen = _frozen("model")
    result = export_onnx(frozen, tmp_path / "m.onnx", kernel="u8s8")
    assert (result.weight_kernel, result.attention_kernel) == ("u8s8", "u8s8")
    x = batch(5, b=3, seq=11)
    assert np.array_equal(_run(tmp_path / "m.onnx", x)[INT8_OUTPUT], ibert_onnx.engine_int8(frozen, x).numpy())


def test_u8s8_kernel_is_refused_where_it_saturates(tmp_path, monkeypatch):
    monkeypatch.setattr(ort_gemm, "u8s8_is_exact_for_8bit", lambda: False)  # the one saturation answer
    with pytest.raises(OverflowRiskError, match="saturates"):
        export_onnx(_frozen("model"), tmp_path / "m.onnx", kernel="u8s8")
    assert not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Errors


def test_uncalibrated_and_float_models_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(UncalibratedError):
        export_onnx(build(intbert.IBertModel, tiny_config(True)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="quant_mode=True"):
        export_onnx(build(intbert.IBertModel, tiny_config(False)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="force_dequant"):
        export_onnx(calibrated(build(intbert.IBertModel, tiny_config(True, force_dequant="softmax"))),
                    tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, error, match", [
    (dict(target="tensorrt"), ValueError, "onnxruntime"),
    (dict(kernel="s8s8"), ValueError, "kernel"),
    (dict(opset=13), TypeError, "opset"),
])  # fmt: skip
def test_unsupported_options_are_refused(tmp_path, case, error, match):
    frozen = _frozen("model_no_pooler")
    with pytest.raises(error, match=match):
        export_onnx(frozen, tmp_path / "m.onnx", **case)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_model_options_are_refused(tmp_path):
    qa = build(intbert.IBertForQuestionAnswering, tiny_config(True, num_labels=3))
    calibrated(qa.ibert)  # the head's own forward cannot run with 3 labels (it unpacks start and end)
    with pytest.raises(ValueError, match="num_labels=2"):
        export_ibert_onnx(qa, tmp_path / "m.onnx")
    frozen = _frozen("model_no_pooler")
    frozen.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_token_id"):
        export_ibert_onnx(frozen, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="FrozenIBert"):
        export_ibert_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="folder"):
        export_ibert_onnx(_frozen("model_no_pooler"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_graph_that_disagrees_with_the_engine_is_refused_and_the_old_file_kept(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous export")
    frozen = _frozen("model_no_pooler")
    real = oi.shift_right
    # A wrong rounding rule (floor where intops rounds half up) must not reach the file.
    monkeypatch.setattr(oi, "shift_right", lambda g, x, shift, offset=None, **kw: real(
        g, x, shift, None if isinstance(offset, str) else offset, **kw))
    with pytest.raises(ExportError, match="differ from the engine"):
        export_onnx(frozen, path)
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_too_few_int8_kernels_is_an_export_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ibert_onnx, "_check_in_onnxruntime", _with_expected_gemms(ibert_onnx._check_in_onnxruntime, 99))
    with pytest.raises(ExportError, match="int8 kernels"):
        export_onnx(_frozen("model_no_pooler"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def _with_expected_gemms(check, expected):
    return lambda file, frozen, _: check(file, frozen, expected)


def test_verify_refuses_a_file_from_another_head(tmp_path):
    export_onnx(_frozen("model_no_pooler"), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="IBertModel"):
        verify_onnx(_frozen("token_classification"), tmp_path / "m.onnx", [batch(0)])


def test_export_constants_are_the_frozen_models(tmp_path):
    """The dyadic multipliers in the file are the engine's buffers (no second derivation of the constants)."""
    frozen = _frozen("model_no_pooler")
    proto = ibert_graph(frozen)
    values = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer]
    rq = frozen.encoder.layer[1].gelu_act
    assert any(v.dtype == np.int64 and v.shape == tuple(rq.m.shape) and np.array_equal(v, rq.m.numpy())
               for v in values)
    word = frozen.encoder.embeddings.word.numpy()
    assert any(v.dtype == np.int8 and np.array_equal(v, word) for v in values)
    assert VOCAB == word.shape[0]


@pytest.mark.parametrize("field", ["input_ids", "token_type_ids"])
def test_the_graph_reads_a_negative_id_from_the_end_so_verify_refuses_it(tmp_path, field):
    """The documented behaviour (docs/export.md): ONNX Gather counts -1 from the table's end; verify_onnx says so."""
    frozen = _frozen("model")
    path = tmp_path / "model.onnx"
    export_onnx(frozen, path)
    size = frozen.config.vocab_size if field == "input_ids" else frozen.config.type_vocab_size
    x = batch(3)
    negative, last = dict(x), dict(x)
    negative[field], last[field] = x[field].clone(), x[field].clone()
    negative[field][1, 2], last[field][1, 2] = -1, size - 1
    assert np.array_equal(_run(path, negative)[INT8_OUTPUT], _run(path, last)[INT8_OUTPUT])
    with pytest.raises(ValueError, match=rf"{field} must lie in \[0, {size}\).*does not check ids"):
        verify_onnx(frozen, path, [negative])


def test_verify_dispatches_on_the_files_exporter_and_refuses_an_unknown_one(tmp_path):
    """verify_onnx picks the verifier by the file's intbert.exporter (export/verify.py VERIFIERS)."""
    from intbert.export.verify import VERIFIERS

    assert set(VERIFIERS) == {"ibert", "qdqbert"} and VERIFIERS["ibert"].runtimes == ("onnxruntime",)
    frozen = _frozen("model_no_pooler")
    proto = ibert_graph(frozen)
    helper.set_model_props(proto, {"intbert.exporter": "someone_else"})
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="exporter verify_onnx does not know .'someone_else'."):
        verify_onnx(frozen, tmp_path / "m.onnx", [batch(0)])
