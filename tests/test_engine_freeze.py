"""The frozen integer engine: bit-exact with the simulation, integer-only, overflow-checked.

Every comparison is torch.equal: the engine must give the simulation's integers at every layer
boundary and the same logits, for every head, several shapes (odd head size), padding and batch > 1.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import intbert
from intbert.engine import FrozenIBert, freeze
from intbert.engine.backends import native, ort_gemm
from intbert.errors import OverflowRiskError, UncalibratedError
from intbert.models.ibert.quant_modules import ints_of

from test_ibert_modeling import HEADS, SHAPES, batch, build, calibrated, head_model, tiny_config

BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    not ort_gemm.ort_available(), reason="needs onnxruntime")), pytest.param("native", marks=pytest.mark.skipif(
    not native.native_available(), reason="native kernels not built"))]


def _outputs_equal(ref, out, real=None):
    """Equal everywhere, or, with ``real`` (the attention mask of a backend that packs tokens), equal on
    the real positions of every per-token output (padded positions are not computed there)."""
    def same(a, b):
        if real is not None and a.dim() >= 2 and tuple(a.shape[:2]) == tuple(real.shape):
            a, b = a[real], b[real]
        return torch.equal(a, b)

    for key, value in ref.items():
        if torch.is_tensor(value):
            assert same(value, out[key]), key
        elif isinstance(value, tuple):
            assert len(value) == len(out[key]) and all(same(a, b) for a, b in zip(value, out[key])), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_frozen_gives_bit_identical_outputs(name, backend):
    model = head_model(name, quant=True)
    make = HEADS[name][3]
    frozen = freeze(model, backend=backend)
    for seed in (5, 6):
        x = make(seed)
        real = x["attention_mask"].bool() if backend == "native" and x["attention_mask"].dim() == 2 else None
        with torch.no_grad():
            _outputs_equal(model(**x), frozen(**x), real)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("weight_bit", [8, 7])
def test_integers_equal_the_simulation_at_every_layer_boundary(shape, weight_bit):
    model = calibrated(build(intbert.IBertModel, tiny_config(True, shape, weight_bit=weight_bit)))
    frozen = freeze(model, backend="reference")
    x = batch(7, b=4, seq=9, pad_last=3)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(ints_of(out[0], out[1])))
             for layer in [model.embeddings] + list(model.encoder.layer)]
    with torch.no_grad():
        sim = model(**x, output_hidden_states=True, output_attentions=True)
    for h in hooks:
        h.remove()
    q, states, probs = frozen.encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"],
                                             output_hidden_states=True, output_attentions=True)
    assert len(states) == len(seen) == model.config.num_hidden_layers + 1
    for i, (sim_q, eng_q) in enumerate(zip(seen, states)):
        assert eng_q.dtype == torch.int8
        assert torch.equal(sim_q.long(), eng_q.long()), f"boundary {i}"
    for sim_p, eng_p in zip(sim.attentions, probs):
        assert eng_p.dtype == torch.uint8
        assert torch.equal(sim_p, eng_p.float() / 256)
    out = frozen(**x, output_hidden_states=True, output_attentions=True)
    _outputs_equal(sim, out)


def test_weight_bit_7_quantizes_encoder_weights_to_7_bits():
    model = calibrated(build(intbert.IBertModel, tiny_config(True, weight_bit=7)))
    frozen = freeze(model)
    for layer in frozen.encoder.layer:
        for lin in (layer.query, layer.key, layer.value, layer.attention_dense, layer.intermediate, layer.output_dense):
            assert lin.weight_bit == 7 and int(lin.weight.abs().max()) == 63  # the full 7-bit range is used


class _DtypeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.float_ops = []
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        self.count += 1
        if any(t.is_floating_point() for t in tensors):
            self.float_ops.append((str(func), [t.dtype for t in tensors]))
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_encoder_runs_no_float_op_between_ids_and_last_hidden_state(backend):
    model = head_model("seqcls_single_label", quant=True)
    frozen = freeze(model, backend=backend)
    x = batch(3)
    rec = _DtypeRecorder()
    with rec:
        q, _, _ = frozen.encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"])
    assert rec.count > 50  # the mode saw the ops (ORT GEMMs run outside torch and are integer by construction)
    assert rec.float_ops == []
    assert q.dtype == torch.int8


def test_boolean_and_integer_masks_agree_and_masked_keys_get_zero_probability():
    model = head_model("model", quant=True)
    frozen = freeze(model, backend="reference")
    x = batch(4, pad_last=3)
    ids, mask = x["input_ids"], x["attention_mask"]
    _, _, probs_int = frozen.encoder.encode(ids, mask, output_attentions=True)
    _, _, probs_bool = frozen.encoder.encode(ids, mask.bool(), output_attentions=True)
    for a, b in zip(probs_int, probs_bool):
        assert torch.equal(a, b)
        assert int(a[0, :, :, -3:].max()) == 0


def test_padding_does_not_change_a_sentence_integers():
    model = head_model("model", quant=True)
    frozen = freeze(model)
    x = batch(8, b=2, seq=9, pad_last=0)
    alone, _, _ = frozen.encoder.encode(x["input_ids"][:1, :6], torch.ones(1, 6, dtype=torch.long))
    ids = x["input_ids"].clone()
    ids[0, 6:] = 1
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    padded, _, _ = frozen.encoder.encode(ids, mask)
    assert torch.equal(alone[0], padded[0, :6])


# ---------------------------------------------------------------------------------------------------------------------
# Refusals


def test_freeze_refuses_float_uncalibrated_and_force_dequant_models():
    with pytest.raises(ValueError, match="quant_mode"):
        freeze(build(intbert.IBertModel, tiny_config(False)))
    with pytest.raises(UncalibratedError):
        freeze(build(intbert.IBertModel, tiny_config(True)))
    with pytest.raises(ValueError, match="force_dequant"):
        freeze(calibrated(build(intbert.IBertModel, tiny_config(True, force_dequant="gelu"))))
    with pytest.raises(TypeError, match="I-BERT"):
        freeze(torch.nn.Linear(2, 2))


def test_overflowing_configurations_raise_at_freeze_time():
    model = calibrated(build(intbert.IBertModel, tiny_config(True)))
    # A GELU input scale below 2^-20 could overflow the int64 i-GELU polynomial.
    act = model.encoder.layer[0].pre_intermediate_act
    act.x_min.fill_(-1e-7)
    act.x_max.fill_(1e-7)
    with pytest.raises(OverflowRiskError, match="GELU"):
        freeze(model)
    model = calibrated(build(intbert.IBertModel, tiny_config(True, max_position_embeddings=70_000)))
    with pytest.raises(OverflowRiskError, match="attention context"):
        freeze(model)


def _intermediate_row(model, row: int, weight: float, bias: float) -> None:
    dense = model.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        dense.weight[row] = 0.0
        dense.weight[row, 0] = weight
        dense.bias[row] = bias


def test_a_zero_weight_row_keeps_its_bias_in_the_simulation_and_the_engine():
    """Was: the bias of a pruned row clamped to the int32 limit at a ~1e-10 scale, 1.0 became 0.0047."""
    model = build(intbert.IBertModel, tiny_config(True))
    _intermediate_row(model, 3, 0.0, 1.0)
    calibrated(model)
    dense = model.encoder.layer[0].intermediate.dense
    seen = {}
    handle = dense.register_forward_hook(lambda m, a, out: seen.update(y=out[0].detach()))
    x = batch(2)
    sim = model(**x).last_hidden_state
    handle.remove()
    scale = dense.fc_scaling_factor[3] * model.encoder.layer[0].pre_intermediate_act.act_scaling_factor
    assert (seen["y"][..., 3] - 1.0).abs().max() <= scale / 2  # one rounding of the bias, not 1.0 -> 0.0047
    frozen = freeze(model, backend="reference")
    assert torch.equal(frozen(**x).last_hidden_state, sim)


def test_a_bias_that_does_not_fit_raises_naming_the_layer_and_channel_at_calibration_and_freeze():
    model = build(intbert.IBertModel, tiny_config(True))
    _intermediate_row(model, 5, 1e-7, 0.5)  # a tiny non-zero row: its scale is fixed by the weight
    with pytest.raises(OverflowRiskError, match=r"encoder\.layer\.0\.intermediate\.dense: .*output channel 5"):
        calibrated(model)
    model = calibrated(build(intbert.IBertModel, tiny_config(True)))
    _intermediate_row(model, 5, 1e-7, 0.5)  # edited after calibration
    with pytest.raises(OverflowRiskError, match=r"intermediate\.dense: .*output channel 5"):
        freeze(model)


def test_freeze_refuses_a_bias_edited_through_data_after_calibration_naming_the_layer():
    """An eval forward checks the bias bound once per weights, so a ``.data`` edit since then slips past it; freeze
    must still refuse (its tracing forward re-checks after eval() clears the cache, and integer_bias checks again)."""
    model = calibrated(build(intbert.IBertModel, tiny_config(True)))
    model(**batch(1))  # eval forward: bound checked for these weights
    model.encoder.layer[0].attention.self.value.bias.data[3] = 1e9
    with pytest.raises(OverflowRiskError, match=r"encoder\.layer\.0\.attention\.self\.value: .*output channel 3"):
        freeze(model)


def test_engine_refuses_inputs_embeds_head_mask_and_bad_ids():
    frozen = freeze(head_model("model", quant=True))
    x = batch(1)
    with pytest.raises(ValueError, match="input_ids"):
        frozen(inputs_embeds=torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match="head_mask"):
        frozen(**x, head_mask=torch.ones(4))
    with pytest.raises(ValueError, match="vocab_size"):
        frozen(input_ids=torch.full((1, 3), 10_000))
    with pytest.raises(ValueError, match="unknown engine backend"):
        frozen.set_backend("tpu")


@pytest.mark.parametrize("field", ["input_ids", "token_type_ids", "position_ids"])
@pytest.mark.parametrize("engine", [True, False], ids=["engine", "simulation"])
def test_negative_ids_raise_like_the_float_model_instead_of_indexing_from_the_end(field, engine):
    model = head_model("model", quant=True)
    run = freeze(model, backend="reference") if engine else model
    x = batch(1)
    x.setdefault("position_ids", torch.full_like(x["input_ids"], 3))
    x[field] = x[field].clone()
    x[field][0, 2] = -1
    with pytest.raises(ValueError, match=rf"{field} must lie in \[0, .*-1\.\."):
        run(**x)


def test_freezing_leaves_the_simulation_model_untouched_and_usable():
    model = head_model("seqcls_single_label", quant=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    freeze(model)
    assert model.training and model.ibert is not None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "reference"])
def test_on_cuda_the_engine_gives_the_cpu_integers(backend):
    model = head_model("seqcls_single_label", quant=True)
    x = batch(11, b=5, seq=24, pad_last=4)
    cpu_q, _, _ = freeze(model, backend="reference").encoder.encode(x["input_ids"], x["attention_mask"],
                                                                   x["token_type_ids"])
    frozen = freeze(model.cuda(), backend=backend)
    gpu_x = {k: v.cuda() for k, v in x.items()}
    q, _, _ = frozen.encoder.encode(gpu_x["input_ids"], gpu_x["attention_mask"], gpu_x["token_type_ids"])
    assert torch.equal(q.cpu(), cpu_q)
    with torch.no_grad():
        assert torch.equal(frozen(**gpu_x).logits, model(**gpu_x).logits)


def test_transformers_pipelines_run_on_the_frozen_head_with_the_simulations_scores():
    from transformers import AutoTokenizer, pipeline

    from intbert.data import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    config = tiny_config(True, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id, max_position_embeddings=64)
    model = build(intbert.IBertForSequenceClassification, config)
    intbert.calibrate(model, [dict(tok(["a calibration sentence", "and another, longer one"], padding=True,
                                       return_tensors="pt"))], method="minmax")
    frozen = freeze(model)
    texts = ["an integer-only encoder", "short"]
    got = pipeline("text-classification", model=frozen.model, tokenizer=tok, top_k=None)(texts)
    want = pipeline("text-classification", model=model, tokenizer=tok, top_k=None)(texts)
    assert got == want


def test_freeze_refuses_an_i_gelu_whose_output_can_exceed_47_bits():
    """At S = 2^-20 the scale floor passes but |i-GELU| reaches 2^49.5 at x = 1: the requantization's split
    (q >> 16) * m would overflow int64, silently. The worst case per channel is checked instead."""
    from intbert.engine.freeze import _check_gelu_output
    from intbert.engine.modules import GELUConstants, IntLinear
    from intbert.quantization import intops

    lin = IntLinear(torch.full((2, 64), 127), torch.zeros(2, dtype=torch.int32), 8)
    fine = GELUConstants(*intops.gelu_constants(torch.tensor([2.0**-20, 2.0**-20]))[:3])
    with pytest.raises(OverflowRiskError, match="i-GELU output of channel 0 can reach"):
        _check_gelu_output(lin, fine, "layer 0 intermediate GELU")
    coarse = GELUConstants(*intops.gelu_constants(torch.tensor([1e-3, 1e-3]))[:3])
    _check_gelu_output(lin, coarse, "layer 0 intermediate GELU")  # 64 * 127 * 128 * 1e-3 ~ 1000: fine
