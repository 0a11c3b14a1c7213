"""I-BERT model level: config, every head in float and calibrated quant mode, positions, integrality over a whole
model, bit-exactness, force_dequant, calibration API, input errors, QAT and pipelines.

Op- and module-level checks live in test_ibert_intops.py and test_ibert_quant_modules.py; transformers parity and
checkpoints in test_ibert_checkpoints.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from intbert.errors import UncalibratedError
from intbert.models.ibert import (
    IBertConfig,
    IBertForMaskedLM,
    IBertForMultipleChoice,
    IBertForQuestionAnswering,
    IBertForSequenceClassification,
    IBertForTokenClassification,
    IBertModel,
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantEmbedding,
    QuantLinear,
    calibrate_ibert,
)
from intbert.models.ibert.modeling_ibert import IBertLayer, create_position_ids_from_input_ids
from intbert.models.ibert.quant_modules import RANGE_SENTINEL, ints_of
from intbert.quantization import intops

VOCAB, MAX_POS, PAD = 99, 40, 1
BATCH, SEQ, LAYERS, CHOICES = 3, 7, 2, 4
# float32 accumulation-order noise between two float paths of the same 2-layer, hidden-32 model.
FLOAT_ATOL = 1e-5
# value = q.float() * S in float32: two roundings of 2^-24 each, plus slack.
INT_VALUE_RTOL = 1e-6
# Head sizes: d = 8, and an odd d = 9 (hidden 36 / 4 heads).
SHAPES = {"d8": dict(hidden_size=32, num_attention_heads=4), "d9": dict(hidden_size=36, num_attention_heads=4)}


def tiny_config(quant: bool = False, shape: str = "d8", **overrides) -> IBertConfig:
    fields = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, intermediate_size=37, max_position_embeddings=MAX_POS,
                  num_labels=3, quant_mode=quant, **SHAPES[shape])
    fields.update(overrides)
    return IBertConfig(**fields)


def batch(seed: int = 0, b: int = BATCH, seq: int = SEQ, pad_last: int = 2) -> dict[str, torch.Tensor]:
    """ids in [3, VOCAB) (no pad/bos/eos), row 0 right-padded with PAD over its last ``pad_last`` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, seq), generator=g)
    mask = torch.ones(b, seq, dtype=torch.long)
    if pad_last:
        ids[0, -pad_last:] = PAD
        mask[0, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.randint(0, 2, (b, seq), generator=g)}


def mc_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    flat = batch(seed, b=BATCH * CHOICES)
    return {k: v.view(BATCH, CHOICES, SEQ) for k, v in flat.items()}


def calibrated(model, make=batch, seeds=(10, 11, 12), method="minmax"):
    return calibrate_ibert(model, [make(s) for s in seeds], method=method)


def build(cls, config, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(config, **kwargs).eval()


# ----------------------------------------------------------------------------------------------------------------------
# 1. Config


def test_config_defaults_match_the_transformers_port():
    c = IBertConfig()
    expected = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    position_embedding_type="absolute", quant_mode=False, force_dequant="none")
    assert {k: getattr(c, k) for k in expected} == expected
    assert c.model_type == "ibert"


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(force_dequant="all"), "force_dequant"),
        (dict(hidden_act="relu"), "hidden_act"),
        (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    ],
)
def test_config_refuses_bad_field_naming_it(overrides, field):
    with pytest.raises(ValueError, match=field):
        IBertConfig(**overrides)


def test_heads_that_do_not_divide_the_hidden_size_are_refused_by_the_model_not_the_config():
    """As transformers: IBertConfig(hidden_size=32) keeps the default 12 heads; building the model refuses."""
    config = IBertConfig(hidden_size=32)
    assert config.num_attention_heads == 12
    with pytest.raises(ValueError, match=r"hidden size \(32\) is not a multiple of the number of attention heads \(12\)"):
        IBertModel(config)


def test_config_survives_save_and_load(tmp_path):
    config = tiny_config(quant=True, force_dequant="softmax", layer_norm_eps=1e-5, type_vocab_size=1)
    config.save_pretrained(tmp_path)
    loaded = IBertConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.quant_mode is True and loaded.force_dequant == "softmax"


# ----------------------------------------------------------------------------------------------------------------------
# 2. Heads, in float and calibrated quant mode


def _labels_none(x, g):
    return {}


HEADS = {
    # name: (class, constructor kwargs, config overrides, inputs maker, labels maker, output key -> shape)
    "model": (IBertModel, {}, {}, batch, _labels_none,
              {"last_hidden_state": ("B", "L", "H"), "pooler_output": ("B", "H")}),
    "model_no_pooler": (IBertModel, dict(add_pooling_layer=False), {}, batch, _labels_none,
                        {"last_hidden_state": ("B", "L", "H")}),
    "masked_lm": (IBertForMaskedLM, {}, {}, batch,
                  lambda x, g: {"labels": torch.where(x["attention_mask"].bool(),
                                                      torch.randint(0, VOCAB, x["input_ids"].shape, generator=g),
                                                      -100)},
                  {"logits": ("B", "L", VOCAB)}),
    "seqcls_regression": (IBertForSequenceClassification, {}, dict(num_labels=1), batch,
                          lambda x, g: {"labels": torch.randn(BATCH, generator=g)}, {"logits": ("B", 1)}),
    "seqcls_single_label": (IBertForSequenceClassification, {}, {}, batch,
                            lambda x, g: {"labels": torch.randint(0, 3, (BATCH,), generator=g)}, {"logits": ("B", 3)}),
    "seqcls_multi_label": (IBertForSequenceClassification, {}, dict(problem_type="multi_label_classification"), batch,
                           lambda x, g: {"labels": torch.randint(0, 2, (BATCH, 3), generator=g).float()},
                           {"logits": ("B", 3)}),
    "multiple_choice": (IBertForMultipleChoice, {}, {}, mc_batch,
                        lambda x, g: {"labels": torch.randint(0, CHOICES, (BATCH,), generator=g)},
                        {"logits": ("B", CHOICES)}),
    "token_classification": (IBertForTokenClassification, {}, {}, batch,
                             lambda x, g: {"labels": torch.randint(0, 3, (BATCH, SEQ), generator=g)},
                             {"logits": ("B", "L", 3)}),
    "question_answering": (IBertForQuestionAnswering, {}, dict(num_labels=2), batch,
                           lambda x, g: {"start_positions": torch.randint(0, SEQ, (BATCH,), generator=g),
                                         "end_positions": torch.randint(0, SEQ, (BATCH,), generator=g)},
                           {"start_logits": ("B", "L"), "end_logits": ("B", "L")}),
}


def head_model(name: str, quant: bool, shape: str = "d8"):
    cls, kwargs, overrides, make, _, _ = HEADS[name]
    model = build(cls, tiny_config(quant, shape, **overrides), **kwargs)
    if quant:
        calibrated(model, make)
    return model


def expected_loss(name, out, labels):
    if name == "masked_lm":
        return nn.functional.cross_entropy(out.logits.view(-1, VOCAB), labels["labels"].view(-1))
    if name == "seqcls_regression":
        return nn.functional.mse_loss(out.logits.squeeze(), labels["labels"])
    if name in ("seqcls_single_label", "multiple_choice"):
        return nn.functional.cross_entropy(out.logits.view(-1, out.logits.shape[-1]), labels["labels"].view(-1))
    if name == "seqcls_multi_label":
        return nn.functional.binary_cross_entropy_with_logits(out.logits, labels["labels"])
    if name == "token_classification":
        return nn.functional.cross_entropy(out.logits.view(-1, 3), labels["labels"].view(-1))
    if name == "question_answering":
        return (nn.functional.cross_entropy(out.start_logits, labels["start_positions"])
                + nn.functional.cross_entropy(out.end_logits, labels["end_positions"])) / 2
    raise KeyError(name)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
@pytest.mark.parametrize("name", list(HEADS))
def test_head_outputs_have_documented_shapes_and_loss(name, quant):
    model = head_model(name, quant)
    _, _, _, make, make_labels, shapes = HEADS[name]
    x = make(1)
    labels = make_labels(x, torch.Generator().manual_seed(2))
    dims = {"B": BATCH, "L": SEQ, "H": 32}
    with torch.no_grad():
        out = model(**x, **labels)
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == tuple(dims.get(d, d) for d in shape), key
        assert torch.isfinite(out[key]).all()
    if labels:
        assert torch.isfinite(out.loss)
        torch.testing.assert_close(out.loss, expected_loss(name, out, labels))
    else:
        assert getattr(out, "loss", None) is None


# Regression: heads without a pooler once returned ``(logits,) + out[2:]`` of a ModelOutput, whose tuple view skips
# the None pooler_output, so the hidden states were dropped.
TUPLE_HEADS = list(HEADS)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
@pytest.mark.parametrize("name", TUPLE_HEADS)
def test_head_tuple_output_equals_dict_output(name, quant):
    model = head_model(name, quant)
    _, _, _, make, make_labels, shapes = HEADS[name]
    x = make(1)
    labels = make_labels(x, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(**x, **labels, output_hidden_states=True)
        tup = model(**x, **labels, output_hidden_states=True, return_dict=False)
    assert isinstance(tup, tuple)
    expected = ([out.loss] if labels else []) + [out[k] for k in shapes] + [out.hidden_states]
    assert len(tup) == len(expected)
    for got, want in zip(tup[:-1], expected[:-1]):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(tup[-1], out.hidden_states))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
@pytest.mark.parametrize("name", ["model", "multiple_choice"])
def test_hidden_states_and_attentions_have_one_entry_per_layer(name, quant, shape):
    model = head_model(name, quant, shape)
    x = HEADS[name][3](1)
    rows = BATCH * (CHOICES if name == "multiple_choice" else 1)
    hidden = SHAPES[shape]["hidden_size"]
    with torch.no_grad():
        out = model(**x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == LAYERS + 1
    assert all(tuple(h.shape) == (rows, SEQ, hidden) for h in out.hidden_states)
    assert len(out.attentions) == LAYERS
    assert all(tuple(a.shape) == (rows, 4, SEQ, SEQ) for a in out.attentions)
    if name == "model":
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    # Each attention row is a distribution over the kept keys; masked keys get exactly 0.
    keep = x["attention_mask"].reshape(rows, SEQ).bool()
    for probs in out.attentions:
        assert torch.all(probs.masked_select(~keep[:, None, None, :].expand_as(probs)) == 0)
        torch.testing.assert_close(probs.sum(-1), torch.ones(rows, 4, SEQ), atol=SEQ / 256 if quant else 1e-6,
                                   rtol=0)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
def test_head_mask_zeroes_the_masked_heads_attention_and_changes_the_output(quant):
    model = head_model("model", quant)
    x = batch(1)
    ones = torch.ones(LAYERS, 4)
    masked = ones.clone()
    masked[0, 1] = 0
    with torch.no_grad():
        plain = model(**x, output_attentions=True)
        all_ones = model(**x, head_mask=ones, output_attentions=True)
        out = model(**x, head_mask=masked, output_attentions=True)
        per_head = model(**x, head_mask=torch.tensor([1.0, 0.0, 1.0, 1.0]), output_attentions=True)
    assert torch.equal(all_ones.last_hidden_state, plain.last_hidden_state)
    assert torch.all(out.attentions[0][:, 1] == 0) and torch.equal(out.attentions[0][:, 0], plain.attentions[0][:, 0])
    assert not torch.equal(out.last_hidden_state, plain.last_hidden_state)
    # A 1-D head mask applies to every layer.
    assert all(torch.all(a[:, 1] == 0) for a in per_head.attentions)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
def test_input_embeddings_is_a_quant_embedding_returning_value_and_scale(quant):
    model = head_model("model", quant)
    emb = model.get_input_embeddings()
    assert isinstance(emb, QuantEmbedding)
    value, scale = emb(batch(1)["input_ids"])
    assert tuple(value.shape) == (BATCH, SEQ, 32)
    assert (scale is None) == (not quant)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
def test_inputs_embeds_path_runs_and_in_float_equals_the_ids_path(quant):
    model = head_model("model", quant)
    x = batch(1, pad_last=0)  # no pad tokens: the inputs_embeds path numbers positions sequentially
    with torch.no_grad():
        embed, _ = model.get_input_embeddings()(x["input_ids"])
        by_ids = model(**x).last_hidden_state
        by_embeds = model(inputs_embeds=embed, attention_mask=x["attention_mask"],
                          token_type_ids=x["token_type_ids"]).last_hidden_state
    assert torch.isfinite(by_embeds).all()
    if quant:
        # Quantized from float instead of requantized from the embedding grid: one 16-bit step apart at most.
        cos = nn.functional.cosine_similarity(by_embeds.flatten(0, 1), by_ids.flatten(0, 1))
        assert cos.min() > 0.99
    else:
        torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=FLOAT_ATOL)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
def test_masked_lm_decoder_shares_storage_with_word_embeddings(quant):
    model = head_model("masked_lm", quant)
    word = model.ibert.embeddings.word_embeddings.weight
    assert model.get_output_embeddings() is model.lm_head.decoder
    assert model.lm_head.decoder.weight.data_ptr() == word.data_ptr()
    assert model.lm_head.decoder.bias is model.lm_head.bias


def test_problem_type_is_inferred_from_labels():
    for num_labels, labels, expected in [
        (1, torch.randn(BATCH), "regression"),
        (3, torch.randint(0, 3, (BATCH,)), "single_label_classification"),
        (3, torch.randint(0, 2, (BATCH, 3)).float(), "multi_label_classification"),
    ]:
        model = build(IBertForSequenceClassification, tiny_config(num_labels=num_labels))
        with torch.no_grad():
            model(**batch(1), labels=labels)
        assert model.config.problem_type == expected


def test_resize_token_embeddings_is_refused():
    with pytest.raises(NotImplementedError):
        build(IBertModel, tiny_config()).resize_token_embeddings(120)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Position ids


def test_position_ids_skip_padding_and_start_after_padding_idx():
    ids = torch.tensor([[12, 31, 13, PAD]])
    assert torch.equal(create_position_ids_from_input_ids(ids, padding_idx=PAD), torch.tensor([[2, 3, 4, 1]]))


def test_position_ids_from_inputs_embeds_are_sequential_after_padding_idx():
    embeddings = build(IBertModel, tiny_config()).embeddings
    got = embeddings.create_position_ids_from_inputs_embeds(torch.empty(2, 4, 30))
    assert torch.equal(got, torch.tensor([[2, 3, 4, 5]] * 2))


def test_left_and_right_padding_give_the_same_token_states_in_float():
    """Pads take position padding_idx, so the real tokens see positions 2, 3, ... whichever side is padded."""
    model = head_model("model", False)
    ids = torch.tensor([[5, 6, 7, 8, PAD, PAD], [PAD, PAD, 5, 6, 7, 8]])
    mask = (ids != PAD).long()
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(h[0, :4], h[1, 2:], rtol=0, atol=FLOAT_ATOL)


# ----------------------------------------------------------------------------------------------------------------------
# 6. Integrality over a whole calibrated quant model

QUANT_TYPES = (QuantAct, QuantLinear, IntGELU, IntSoftmax, IntLayerNorm, QuantEmbedding)


def int_bound(module) -> tuple[int, int]:
    """The documented integer range of each module's output."""
    if isinstance(module, QuantAct):
        return intops.quant_bounds(module.activation_bit)
    if isinstance(module, IntSoftmax):
        return 0, 2**module.output_bit - 1
    if isinstance(module, QuantEmbedding):
        return intops.quant_bounds(module.weight_bit, narrow_range=True)
    if isinstance(module, IntGELU):
        return -(2**intops.GELU_OUTPUT_BITS), 2**intops.GELU_OUTPUT_BITS
    return intops.INT32_MIN, intops.INT32_MAX  # QuantLinear accumulators, IntLayerNorm outputs


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_quant_module_output_is_exact_integers_times_scale_within_its_width(shape):
    model = calibrated(build(IBertForSequenceClassification, tiny_config(True, shape)))
    seen, problems = set(), []

    def check(name, module, output):
        value, scale = output
        seen.add(name)
        q = ints_of(value, scale)
        lo, hi = int_bound(module)
        if q.is_floating_point():
            problems.append(f"{name}: integers have dtype {q.dtype}")
        elif not (int(q.min()) >= lo and int(q.max()) <= hi):
            problems.append(f"{name}: integers {int(q.min())}..{int(q.max())} outside [{lo}, {hi}]")
        expected = q.double() * scale.double()
        if not torch.allclose(value.double(), expected, rtol=INT_VALUE_RTOL, atol=0):
            problems.append(f"{name}: value != ints * scale (max |d| {(value.double() - expected).abs().max():.3g})")

    handles = [m.register_forward_hook(lambda mod, args, out, n=n: check(n, mod, out))
               for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)]
    with torch.no_grad():
        model(**batch(5))
    for h in handles:
        h.remove()
    assert not problems, problems
    # Every quant module ran, except the two kept only for checkpoint compatibility.
    idle = {n for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)} - seen
    assert idle and all(n.endswith(("softmax.act", "LayerNorm.activation")) for n in idle), sorted(idle)


def test_each_layer_receives_the_previous_layers_output_scale_and_integer_inputs():
    """tf#26738: the transformers port hands the embeddings' scale to every layer."""
    model = calibrated(build(IBertModel, tiny_config(True)))
    inputs, outputs = [], []
    hooks = [model.embeddings.output_activation.register_forward_hook(lambda m, a, o: outputs.append(o))]
    for layer in model.encoder.layer:
        hooks.append(layer.register_forward_pre_hook(lambda m, a: inputs.append(a[:2])))
        hooks.append(layer.register_forward_hook(lambda m, a, o: outputs.append(o[:2])))
    with torch.no_grad():
        model(**batch(5))
    for h in hooks:
        h.remove()
    assert len(inputs) == LAYERS and len(outputs) == LAYERS + 1
    for i, (x, s) in enumerate(inputs):
        assert torch.equal(s, outputs[i][1]), f"layer {i} input scale is not the previous output's"
        ratio = x.double() / s.double()
        assert (ratio - ratio.round()).abs().max() < 1e-3, f"layer {i} input is not integer on its scale"
        assert ratio.abs().max() <= 128
    assert not torch.equal(outputs[0][1], outputs[-1][1])  # the scales do differ, so the check above can fail


# ----------------------------------------------------------------------------------------------------------------------
# 7. Bit-exactness, determinism, batch invariance


def test_two_forwards_of_a_calibrated_model_are_bit_identical():
    model = head_model("seqcls_single_label", True)
    x = batch(5)
    with torch.no_grad():
        a = model(**x, output_hidden_states=True)
        b = model(**x, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(p, q) for p, q in zip(a.hidden_states, b.hidden_states))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_sentence_alone_and_in_a_padded_batch_gives_identical_integers(shape):
    model = head_model("model", True, shape)
    g = torch.Generator().manual_seed(7)
    short = torch.randint(3, VOCAB, (1, 4), generator=g)
    others = torch.randint(3, VOCAB, (2, 9), generator=g)
    padded = torch.cat([torch.cat([short, torch.full((1, 5), PAD)], 1), others])
    mask = (padded != PAD).long()
    with torch.no_grad():
        alone = model(input_ids=short).last_hidden_state
        in_batch = model(input_ids=padded, attention_mask=mask).last_hidden_state
        # Another batch composition (different neighbours, different padded length).
        other = torch.cat([torch.cat([short, torch.full((1, 2), PAD)], 1), others[:1, :6]])
        in_other = model(input_ids=other, attention_mask=(other != PAD).long()).last_hidden_state
    assert torch.equal(in_batch[0, :4], alone[0])
    assert torch.equal(in_other[0, :4], alone[0])
    assert torch.equal(in_other[1], model(input_ids=others[:1, :6]).last_hidden_state[0])


# ----------------------------------------------------------------------------------------------------------------------
# 8. force_dequant

DEQUANTIZED = {"none": (), "gelu": (IntGELU,), "softmax": (IntSoftmax,), "layernorm": (IntLayerNorm,),
               "nonlinear": (IntGELU, IntSoftmax, IntLayerNorm)}


@pytest.fixture(scope="module")
def float_reference():
    model = build(IBertModel, tiny_config())
    with torch.no_grad():
        return model.state_dict(), model(**batch(5)).last_hidden_state


@pytest.mark.parametrize("mode", list(DEQUANTIZED))
def test_force_dequant_runs_exactly_the_named_functions_in_float(mode, float_reference):
    state, reference = float_reference
    model = build(IBertModel, tiny_config(True, force_dequant=mode))
    model.load_state_dict(state)
    calibrated(model)
    float_ops, int_ops = set(), set()

    def record(module, args, out):
        (float_ops if out[1] is None else int_ops).add(type(module))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (IntGELU, IntSoftmax, IntLayerNorm))]
    with torch.no_grad():
        h = model(**batch(5)).last_hidden_state
    for hk in hooks:
        hk.remove()
    assert float_ops == set(DEQUANTIZED[mode])
    assert int_ops == {IntGELU, IntSoftmax, IntLayerNorm} - set(DEQUANTIZED[mode])
    keep = batch(5)["attention_mask"].bool()
    cos = nn.functional.cosine_similarity(h[keep], reference[keep])
    print(f"force_dequant={mode}: max |d| to float {(h - reference)[keep].abs().max():.4f}, mean cosine {cos.mean():.6f}")
    assert cos.min() > 0.99


# ----------------------------------------------------------------------------------------------------------------------
# 9. Calibration API


def test_uncalibrated_quant_model_in_eval_raises_naming_calibrate():
    model = build(IBertModel, tiny_config(True))
    with pytest.raises(UncalibratedError, match="calibrate"):
        with torch.no_grad():
            model(**batch(1))
    calibrate_ibert(model, [batch(10)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch(1)).last_hidden_state).all()


def test_calibrate_refuses_a_float_model():
    with pytest.raises(ValueError, match="quant"):
        calibrate_ibert(build(IBertModel, tiny_config()), [batch(10)])


def test_calibrate_refuses_unknown_method():
    with pytest.raises(ValueError, match="method"):
        calibrate_ibert(build(IBertModel, tiny_config(True)), [batch(10)], method="percentile")


def test_calibrate_with_no_batches_raises():
    with pytest.raises(ValueError, match="no batches"):
        calibrate_ibert(build(IBertModel, tiny_config(True)), [])


@pytest.mark.parametrize("method", ["minmax", "mse", "ema"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_calibrate_refuses_non_finite_data_and_keeps_the_model(method, bad):
    """Was: NaN ranges accepted, every later output NaN (QDQ's calibrators refuse it)."""
    model = calibrated(build(IBertModel, tiny_config(True)))
    ranges = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("x_min", "x_max", "shift"))}
    out = model(**batch(1)).last_hidden_state
    embeds = torch.randn(2, SEQ, 32, generator=torch.Generator().manual_seed(3))
    embeds[1, 2, 5] = bad
    with pytest.raises(ValueError, match="NaN or inf.*first seen by embeddings"):
        calibrate_ibert(model, [batch(10), {"inputs_embeds": embeds}], method=method)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ranges.items())
    assert torch.equal(model(**batch(1)).last_hidden_state, out)


def test_failed_calibration_leaves_a_calibrated_model_unchanged():
    model = calibrated(build(IBertModel, tiny_config(True)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        calibrate_ibert(model, iter([]))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("training", [False, True])
def test_calibrate_restores_train_or_eval_mode(training):
    model = build(IBertModel, tiny_config(True)).train(training)
    calibrate_ibert(model, [batch(10)])
    assert all(m.training == training for m in model.modules())


def test_calibrate_accepts_plain_id_tensors_and_a_forward_fn():
    a = calibrate_ibert(build(IBertModel, tiny_config(True)), [batch(10, pad_last=0)["input_ids"]])
    calls = []

    def forward_fn(model, b):
        calls.append(b)
        model(input_ids=b["ids"])

    b = calibrate_ibert(build(IBertModel, tiny_config(True)), [{"ids": batch(10, pad_last=0)["input_ids"]}],
                        forward_fn=forward_fn)
    assert len(calls) == 1
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def _embedding_sums(model, batches):
    """The float sums that embeddings_act1 sees: quantized word + token-type embeddings, computed independently."""
    emb = model.embeddings
    out = []
    with torch.no_grad():
        for x in batches:
            word, _ = emb.word_embeddings(x["input_ids"])
            types, _ = emb.token_type_embeddings(x["token_type_ids"])
            out.append(types + word)
    return out


def test_minmax_calibration_gives_the_exact_range_over_all_batches():
    model = build(IBertModel, tiny_config(True))
    batches = [batch(s) for s in (10, 11, 12)]
    calibrate_ibert(model, batches, method="minmax")
    sums = _embedding_sums(model, batches)
    act = model.embeddings.embeddings_act1
    assert torch.equal(act.x_min, min(s.min() for s in sums).reshape(1))
    assert torch.equal(act.x_max, max(s.max() for s in sums).reshape(1))


def test_ema_calibration_follows_the_running_average_from_the_first_batch():
    model = build(IBertModel, tiny_config(True))
    batches = [batch(s) for s in (10, 11, 12)]
    calibrate_ibert(model, batches, method="ema", momentum=0.9)
    lo = hi = None
    for s in _embedding_sums(model, batches):
        lo = s.min() if lo is None else 0.9 * lo + 0.1 * s.min()
        hi = s.max() if hi is None else 0.9 * hi + 0.1 * s.max()
    act = model.embeddings.embeddings_act1
    torch.testing.assert_close(act.x_min, lo.reshape(1), rtol=INT_VALUE_RTOL, atol=0)
    torch.testing.assert_close(act.x_max, hi.reshape(1), rtol=INT_VALUE_RTOL, atol=0)
    assert act.act_range_momentum == 0.95  # the module's own momentum is restored


def test_recalibration_forgets_earlier_ranges_and_shifts():
    once = calibrate_ibert(build(IBertModel, tiny_config(True)), [batch(20)])
    twice = calibrate_ibert(build(IBertModel, tiny_config(True)), [batch(10, seq=11), batch(11, seq=11)])
    calibrate_ibert(twice, [batch(20)])
    for k, v in once.state_dict().items():
        assert torch.equal(v, twice.state_dict()[k]), k


def test_calibration_sets_every_range_and_layernorm_shift_to_what_its_inputs_need():
    model = build(IBertModel, tiny_config(True))
    needs: dict[str, int] = {}

    def record(name):
        def hook(module, args):
            q = ints_of(args[0], args[1])
            needs[name] = max(needs.get(name, 0), int(intops.layernorm_shift(q).max()))
        return hook

    norms = {n: m for n, m in model.named_modules() if isinstance(m, IntLayerNorm)}
    hooks = [m.register_forward_pre_hook(record(n)) for n, m in norms.items()]
    calibrated(model)
    for h in hooks:
        h.remove()
    assert set(needs) == set(norms)
    assert {n: int(m.shift) for n, m in norms.items()} == needs
    assert any(needs.values())  # 16/22-bit LayerNorm inputs of 32 channels need a shift: the check has teeth
    live = [m for n, m in model.named_modules() if isinstance(m, QuantAct) and not n.endswith(("softmax.act", "activation"))]
    assert all(m.is_calibrated() and float(m.x_max) > RANGE_SENTINEL for m in live)


# ----------------------------------------------------------------------------------------------------------------------
# 10. Bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.tensor([[5, VOCAB]])), "vocab_size"),
        (dict(input_ids=torch.tensor([[5, -1]])), "vocab_size"),
        (dict(input_ids=torch.full((1, MAX_POS - 1), 5)), "position table"),
        (dict(input_ids=torch.full((2, 5), 5), attention_mask=torch.ones(2, 6)), "attention_mask"),
        (dict(input_ids=torch.full((2, 5), 5), inputs_embeds=torch.zeros(2, 5, 32)), "exactly one"),
        (dict(), "exactly one"),
        (dict(input_ids=torch.full((5,), 5)), r"\(batch, sequence\)"),
        (dict(input_ids=torch.full((2, 5), 5), token_type_ids=torch.full((2, 5), 2)), "type_vocab_size"),
    ],
    ids=["id_too_large", "negative_id", "too_long", "mask_shape", "both_inputs", "no_input", "one_dim", "token_type"],
)
def test_bad_input_raises_value_error_naming_the_problem(kwargs, message):
    model = build(IBertModel, tiny_config())
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_longest_sequence_the_position_table_allows_runs():
    model = build(IBertModel, tiny_config())
    with torch.no_grad():
        out = model(input_ids=torch.full((1, MAX_POS - PAD - 1), 5))
    assert out.last_hidden_state.shape[1] == MAX_POS - 2


# ----------------------------------------------------------------------------------------------------------------------
# 12. Quantization-aware training


def test_qat_steps_reduce_the_loss_and_reach_every_quant_linear_weight():
    torch.manual_seed(0)
    model = head_model("seqcls_single_label", True)
    x = batch(30, b=8)
    labels = (x["input_ids"][:, 1] % 3)  # learnable from the tokens
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = model(**x, labels=labels).loss
        loss.backward()
        if step == 0:
            linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
            assert len(linears) == 6 * LAYERS
            no_grad = [n for n, m in linears.items() if m.weight.grad is None or not m.weight.grad.abs().sum() > 0]
            assert not no_grad, no_grad
            assert model.ibert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


# ----------------------------------------------------------------------------------------------------------------------
# 13. Pipelines, with a tokenizer built offline


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0, 1, 2 = bos, pad, eos as in IBertConfig
    vocab = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(VOCAB - len(special))])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=MAX_POS - 2)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
def test_fill_mask_pipeline_ranks_the_models_own_top_tokens(tokenizer, quant):
    from transformers import pipeline

    model = head_model("masked_lm", quant)
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    got = fill("w1 w2 <mask> w3", top_k=3)
    assert len(got) == 3
    with torch.no_grad():
        logits = model(**tokenizer("w1 w2 <mask> w3", return_tensors="pt")).logits[0, 3]
    assert [r["token"] for r in got] == logits.topk(3).indices.tolist()
    assert all(r["sequence"].startswith("w1 w2 ") for r in got)


@pytest.mark.parametrize("quant", [False, True], ids=["float", "quant"])
def test_text_classification_pipeline_labels_a_padded_batch(tokenizer, quant):
    from transformers import pipeline

    model = head_model("seqcls_single_label", quant)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    texts = ["w1 w2 w3 w4 w5", "w6"]
    got = classify(texts)
    assert len(got) == 2
    with torch.no_grad():
        probs = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    for result, p in zip(got, probs):
        assert result["label"] == f"LABEL_{int(p.argmax())}"
        assert result["score"] == pytest.approx(float(p.max()), abs=1e-5)
