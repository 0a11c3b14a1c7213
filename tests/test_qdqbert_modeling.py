"""QDQBERT modeling: heads, BERT parity with quantizers off, decoding cache, positions, pruning, QAT, input errors."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import BertConfig

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
    clip_gelu,
    fuse_qkv,
)
from intbert.models.qdqbert.helpers import UncalibratedQuantizerError
from intbert.quantization import TensorQuantizer
from intbert.quantization.nn import QuantLinear

# float32 accumulation-order noise between our eager attention and transformers' BERT, on hidden 32.
PARITY_ATOL = 1e-5
BATCH, SEQ, VOCAB = 3, 7, 99


def tiny_config(**overrides) -> QDQBertConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, type_vocab_size=16, max_position_embeddings=64, num_labels=3)
    fields.update(overrides)
    return QDQBertConfig(**fields)


def inputs(seed: int = 0, batch: int = BATCH, seq: int = SEQ) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, -2:] = 0  # one padded row
    return {
        "input_ids": torch.randint(0, VOCAB, (batch, seq), generator=g),
        "attention_mask": mask,
        "token_type_ids": torch.randint(0, 2, (batch, seq), generator=g),
    }


def quantizers(model: torch.nn.Module) -> dict[str, TensorQuantizer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, TensorQuantizer)}


def disable_quantizers(model: torch.nn.Module) -> None:
    for q in quantizers(model).values():
        q.disable()


def calibrated(model: torch.nn.Module, seeds=(10, 11)) -> torch.nn.Module:
    calibrate_qdq(model, [inputs(s) for s in seeds], method="max", progress=False)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Structure


def test_quantizers_sit_where_the_reference_puts_them():
    model = QDQBertModel(tiny_config())
    names = set(quantizers(model))
    layer = "encoder.layer.0."
    expected_layer = {
        layer + f"attention.self.{p}._{kind}_quantizer" for p in ("query", "key", "value") for kind in ("input", "weight")
    } | {layer + f"attention.self.matmul_{p}_input_quantizer" for p in "qkva"} | {
        layer + f"{block}.dense._{kind}_quantizer"
        for block in ("attention.output", "intermediate", "output") for kind in ("input", "weight")
    } | {layer + f"{block}.add_{p}_input_quantizer" for block in ("attention.output", "output") for p in ("local", "residual")}
    assert {n for n in names if n.startswith(layer)} == expected_layer
    assert len(expected_layer) == 20 and len(names) == 40
    assert not any(n.startswith(("embeddings", "pooler")) for n in names)
    assert all(isinstance(m, QuantLinear) for n, m in model.named_modules() if n.endswith((".query", ".dense")) and "pooler" not in n)
    assert type(model.pooler.dense) is torch.nn.Linear


def test_uncalibrated_model_has_no_amax_keys():
    """A plain BERT checkpoint then loads without a single missing quantizer key."""
    assert not [k for k in QDQBertForMaskedLM(tiny_config()).state_dict() if "quantizer" in k]


# ----------------------------------------------------------------------------------------------------------------------
# Heads


def _head_cases():
    def labels_seq(num):
        return torch.tensor([0, 2, 1][:num])

    return [
        (QDQBertModel, {}, {}, lambda o: o.last_hidden_state.shape == (BATCH, SEQ, 32) and o.pooler_output.shape == (BATCH, 32)),
        (QDQBertForMaskedLM, {}, {"labels": torch.full((BATCH, SEQ), 5)}, lambda o: o.logits.shape == (BATCH, SEQ, VOCAB)),
        (QDQBertLMHeadModel, {"is_decoder": True}, {"labels": torch.full((BATCH, SEQ), 5)},
         lambda o: o.logits.shape == (BATCH, SEQ, VOCAB)),
        (QDQBertForNextSentencePrediction, {}, {"labels": torch.tensor([0, 1, 0])}, lambda o: o.logits.shape == (BATCH, 2)),
        (QDQBertForSequenceClassification, {}, {"labels": labels_seq(BATCH)}, lambda o: o.logits.shape == (BATCH, 3)),
        (QDQBertForTokenClassification, {}, {"labels": torch.ones(BATCH, SEQ, dtype=torch.long)},
         lambda o: o.logits.shape == (BATCH, SEQ, 3)),
        (QDQBertForQuestionAnswering, {"num_labels": 2},
         {"start_positions": torch.tensor([1, 2, 100]), "end_positions": torch.tensor([3, 4, 5])},
         lambda o: o.start_logits.shape == (BATCH, SEQ) and o.end_logits.shape == (BATCH, SEQ)),
    ]


@pytest.mark.parametrize("cls,config_kw,label_kw,shape_ok", _head_cases(), ids=lambda c: getattr(c, "__name__", ""))
def test_every_head_gives_its_shapes_and_a_finite_loss(cls, config_kw, label_kw, shape_ok):
    torch.manual_seed(0)
    model = cls(tiny_config(**config_kw)).eval()
    out = model(**inputs(), **label_kw)
    assert shape_ok(out)
    if label_kw:
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_multiple_choice_flattens_choices():
    torch.manual_seed(0)
    model = QDQBertForMultipleChoice(tiny_config()).eval()
    choices = {k: v[None].expand(2, -1, -1).transpose(0, 1).contiguous() for k, v in inputs().items()}  # (3, 2, 7)
    out = model(**choices, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (BATCH, 2) and torch.isfinite(out.loss)


@pytest.mark.parametrize("problem_type,labels,expected_loss", [
    ("regression", torch.tensor([0.5, 1.0, -1.0]), torch.nn.functional.mse_loss),
    ("single_label_classification", torch.tensor([0, 1, 1]), torch.nn.functional.cross_entropy),
    ("multi_label_classification", torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
     torch.nn.functional.binary_cross_entropy_with_logits),
])
def test_sequence_classification_problem_types(problem_type, labels, expected_loss):
    num_labels = 1 if problem_type == "regression" else 2
    torch.manual_seed(0)
    model = QDQBertForSequenceClassification(tiny_config(num_labels=num_labels)).eval()
    out = model(**inputs(), labels=labels)
    assert model.config.problem_type == problem_type  # inferred from num_labels and the label dtype
    logits = out.logits.squeeze(-1) if num_labels == 1 else out.logits
    torch.testing.assert_close(out.loss, expected_loss(logits, labels))


def test_return_dict_false_gives_berts_tuple():
    torch.manual_seed(0)
    model = QDQBertForTokenClassification(tiny_config()).eval()
    labels = torch.ones(BATCH, SEQ, dtype=torch.long)
    as_dict = model(**inputs(), labels=labels, output_hidden_states=True)
    as_tuple = model(**inputs(), labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3  # (loss, logits, hidden_states); attentions absent
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert len(as_tuple[2]) == 3  # embeddings + 2 layers
    base = QDQBertModel(tiny_config()).eval()
    out = base(**inputs(), return_dict=False)
    assert len(out) == 2 and out[0].shape == (BATCH, SEQ, 32) and out[1].shape == (BATCH, 32)


def test_output_attentions_and_hidden_states():
    torch.manual_seed(0)
    model = QDQBertModel(tiny_config()).eval()
    out = model(**inputs(), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (BATCH, 4, SEQ, SEQ)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    # Padded keys get no attention.
    assert out.attentions[0][0, :, :, -2:].abs().max() == 0


def test_mlm_decoder_is_tied_to_word_embeddings():
    model = QDQBertForMaskedLM(tiny_config())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


# ----------------------------------------------------------------------------------------------------------------------
# Parity with transformers' BERT when the quantizers are off


PARITY_CASES = [
    ("BertModel", QDQBertModel, {}, {}, "last_hidden_state"),
    ("BertForMaskedLM", QDQBertForMaskedLM, {}, {}, "logits"),
    ("BertLMHeadModel", QDQBertLMHeadModel, {"is_decoder": True}, {}, "logits"),
    ("BertForNextSentencePrediction", QDQBertForNextSentencePrediction, {}, {}, "logits"),
    ("BertForSequenceClassification", QDQBertForSequenceClassification, {}, {}, "logits"),
    ("BertForTokenClassification", QDQBertForTokenClassification, {}, {}, "logits"),
    ("BertForQuestionAnswering", QDQBertForQuestionAnswering, {"num_labels": 2}, {}, "start_logits"),
    ("BertForMultipleChoice", QDQBertForMultipleChoice, {}, {"choices": 2}, "logits"),
]


def _bert_pair(bert_name, qdq_cls, config_kw):
    config = tiny_config(**config_kw)
    own = ("model_type", "quant_desc_input", "quant_desc_weight", "pruned_heads")
    bert_config = BertConfig(**{k: v for k, v in config.to_dict().items() if k not in own})
    bert_config._attn_implementation = "eager"
    torch.manual_seed(0)
    bert = getattr(transformers, bert_name)(bert_config).eval()
    qdq = qdq_cls(config).eval()
    qdq.load_state_dict(bert.state_dict(), strict=True)  # same keys, same shapes
    disable_quantizers(qdq)
    return bert, qdq


@pytest.mark.parametrize("bert_name,qdq_cls,config_kw,extra,field", PARITY_CASES, ids=[c[0] for c in PARITY_CASES])
def test_disabled_quantizers_equal_transformers_bert(bert_name, qdq_cls, config_kw, extra, field):
    bert, qdq = _bert_pair(bert_name, qdq_cls, config_kw)
    batch = inputs(1)
    if extra.get("choices"):
        batch = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in batch.items()}
    with torch.no_grad():
        expected, got = getattr(bert(**batch), field), getattr(qdq(**batch), field)
    torch.testing.assert_close(got, expected, rtol=0, atol=PARITY_ATOL)
    if hasattr(bert(**batch), "pooler_output"):
        torch.testing.assert_close(qdq(**batch).pooler_output, bert(**batch).pooler_output, rtol=0, atol=PARITY_ATOL)


def test_enabled_quantizers_change_the_output_but_stay_close():
    bert, qdq = _bert_pair("BertModel", QDQBertModel, {})
    for q in quantizers(qdq).values():
        q.enable()
    with torch.no_grad():
        expected, got = bert(**inputs()).last_hidden_state, qdq(**inputs()).last_hidden_state
    error = (got - expected).abs().max()
    assert 0 < error < 0.5  # 8-bit fake quant: visible, bounded (LayerNorm outputs are O(1))


# ----------------------------------------------------------------------------------------------------------------------
# Decoder: cache, cross-attention, relative positions


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key", "relative_key_query"])
@pytest.mark.parametrize("cross", [False, True], ids=["self-only", "cross-attention"])
def test_incremental_decoding_equals_full_forward(position_embedding_type, cross):
    """Calibrated (static) amax: a cached step sees exactly the numbers the full forward sees."""
    torch.manual_seed(0)
    config = tiny_config(is_decoder=True, add_cross_attention=cross, position_embedding_type=position_embedding_type)
    model = QDQBertLMHeadModel(config).eval()
    g = torch.Generator().manual_seed(3)
    encoder = {"encoder_hidden_states": torch.randn(BATCH, 5, 32, generator=g)} if cross else {}
    batches = [{"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g), **encoder} for _ in range(2)]
    calibrate_qdq(model, batches, method="max", progress=False)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        full = model(ids, use_cache=False, **encoder).logits
        step = model(ids[:, :4], use_cache=True, **encoder)
        logits = [step.logits]
        cache = step.past_key_values
        for t in range(4, SEQ):
            step = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True, **encoder)
            cache = step.past_key_values
            logits.append(step.logits)
    assert cache.get_seq_length() == SEQ
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=0, atol=1e-5)


def test_legacy_tuple_cache_is_accepted():
    torch.manual_seed(0)
    model = calibrated(QDQBertLMHeadModel(tiny_config(is_decoder=True)).eval())
    ids = inputs()["input_ids"]
    with torch.no_grad():
        first = model(ids[:, :4], use_cache=True)
        legacy = tuple((layer.keys, layer.values) for layer in first.past_key_values.layers)
        via_tuple = model(ids[:, 4:5], past_key_values=legacy).logits
        via_cache = model(ids[:, 4:5], past_key_values=first.past_key_values).logits
    torch.testing.assert_close(via_tuple, via_cache)
    with pytest.raises(TypeError, match="past_key_values must be"):
        model(ids[:, 4:5], past_key_values="nonsense")


def test_decoder_is_causal():
    """Changing a later token must not change earlier positions' outputs."""
    torch.manual_seed(0)
    model = QDQBertLMHeadModel(tiny_config(is_decoder=True)).eval()
    disable_quantizers(model)  # dynamic quantization would leak the changed token's range into every position
    ids = inputs()["input_ids"]
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids, use_cache=False).logits, model(changed, use_cache=False).logits
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-6)
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3


def test_greedy_generate_matches_manual_argmax_loop():
    torch.manual_seed(0)
    model = calibrated(QDQBertLMHeadModel(tiny_config(is_decoder=True, bos_token_id=1, eos_token_id=2)).eval())
    ids = inputs()["input_ids"][:1, :3]
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
    manual = ids
    with torch.no_grad():
        for _ in range(4):
            next_id = model(manual, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            manual = torch.cat([manual, next_id], dim=1)
    assert torch.equal(generated, manual)


@pytest.mark.parametrize("position_embedding_type", ["relative_key", "relative_key_query"])
def test_relative_scores_follow_the_distance_formula(position_embedding_type):
    """score[l, r] = q_l . E[l - r + P - 1] (+ k_r . E[...] for relative_key_query), with queries at the end."""
    torch.manual_seed(0)
    model = QDQBertModel(tiny_config(position_embedding_type=position_embedding_type))
    attention = model.encoder.layer[0].attention.self
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 5, 8)  # 3 queries = last 3 of 5 keys
    got = attention._relative_scores(q, k)
    table, offset = attention.distance_embedding.weight, model.config.max_position_embeddings - 1
    expected = torch.zeros(2, 4, 3, 5)
    for l in range(3):
        for r in range(5):
            e = table[(l + 2) - r + offset]
            expected[:, :, l, r] = q[:, :, l] @ e
            if position_embedding_type == "relative_key_query":
                expected[:, :, l, r] += k[:, :, r] @ e
    torch.testing.assert_close(got, expected)


def test_relative_positions_ignore_absolute_embeddings():
    torch.manual_seed(0)
    model = QDQBertModel(tiny_config(position_embedding_type="relative_key")).eval()
    disable_quantizers(model)
    with torch.no_grad():
        before = model(**inputs()).last_hidden_state
        model.embeddings.position_embeddings.weight.normal_()
        after = model(**inputs()).last_hidden_state
        model.encoder.layer[0].attention.self.distance_embedding.weight.normal_()
        moved = model(**inputs()).last_hidden_state
    torch.testing.assert_close(before, after)
    assert (moved - before).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------------
# Head mask and pruning


def test_head_mask_zeroes_the_masked_heads():
    torch.manual_seed(0)
    model = QDQBertModel(tiny_config()).eval()
    head_mask = torch.ones(2, 4)
    head_mask[0, 1] = 0
    with torch.no_grad():
        out = model(**inputs(), head_mask=head_mask, output_attentions=True)
        plain = model(**inputs()).last_hidden_state
        ones = model(**inputs(), head_mask=torch.ones(4)).last_hidden_state
    assert out.attentions[0][:, 1].abs().max() == 0 and out.attentions[0][:, 0].abs().max() > 0
    torch.testing.assert_close(ones, plain)


def test_prune_heads_equals_head_mask_and_keeps_quantizers():
    torch.manual_seed(0)
    model = calibrated(QDQBertModel(tiny_config()).eval())
    layer = model.encoder.layer[0].attention
    amax_rows = layer.self.query._weight_quantizer._amax.clone()  # per-row: [32, 1]
    for q in quantizers(model).values():
        q.disable()
    head_mask = torch.ones(2, 4)
    head_mask[0, 1] = head_mask[0, 3] = head_mask[1, 0] = 0
    with torch.no_grad():
        expected = model(**inputs(), head_mask=head_mask).last_hidden_state
        model.prune_heads({0: [1, 3], 1: [0]})
        got = model(**inputs()).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=PARITY_ATOL)
    assert model.config.pruned_heads == {0: [1, 3], 1: [0]}
    assert isinstance(layer.self.query, QuantLinear) and isinstance(layer.output.dense, QuantLinear)
    assert layer.self.query.weight.shape == (16, 32) and layer.output.dense.weight.shape == (32, 16)
    kept_rows = torch.cat([amax_rows[0:8], amax_rows[16:24]])  # heads 0 and 2, head size 8
    assert torch.equal(layer.self.query._weight_quantizer._amax, kept_rows)


def test_prune_heads_rejects_bad_requests():
    model = QDQBertModel(tiny_config())
    with pytest.raises(ValueError, match="every head"):
        model.prune_heads({0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="outside"):
        model.prune_heads({0: [7]})
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        model.prune_heads({5: [0]})


def test_pruned_model_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = QDQBertModel(tiny_config()).eval()
    model.prune_heads({1: [2]})
    model.save_pretrained(tmp_path)
    reloaded = QDQBertModel.from_pretrained(tmp_path).eval()
    assert reloaded.encoder.layer[1].attention.self.num_attention_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs()).last_hidden_state, model(**inputs()).last_hidden_state)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers and QAT


def test_fuse_qkv_shares_the_largest_amax():
    torch.manual_seed(0)
    model = calibrated(QDQBertModel(tiny_config()).eval())
    attention = model.encoder.layer[1].attention.self
    before = [getattr(attention, f"matmul_{p}_input_quantizer")._amax.item() for p in "qkv"]
    rows = attention.key._weight_quantizer._amax.clone()
    assert len(set(before)) == 3  # distinct before, or the test proves nothing
    assert fuse_qkv(model) == 2
    after = [getattr(attention, f"matmul_{p}_input_quantizer")._amax.item() for p in "qkv"]
    assert after == [max(before)] * 3
    assert torch.equal(attention.key._weight_quantizer._amax, rows)  # per-row weights are left alone


def test_fuse_qkv_fuses_per_tensor_weights():
    torch.manual_seed(0)
    config = tiny_config(quant_desc_weight={"num_bits": 8, "axis": None})
    model = calibrated(QDQBertModel(config).eval())
    attention = model.encoder.layer[0].attention.self
    weights = [getattr(attention, p)._weight_quantizer._amax.item() for p in ("query", "key", "value")]
    fuse_qkv(model)
    assert [getattr(attention, p)._weight_quantizer._amax.item() for p in ("query", "key", "value")] == [max(weights)] * 3


def test_clip_gelu_caps_only_the_ffn_output_input():
    torch.manual_seed(0)
    model = calibrated(QDQBertModel(tiny_config()).eval())
    layer = model.encoder.layer[0]
    attention_in = layer.attention.output.dense._input_quantizer._amax.clone()
    assert layer.output.dense._input_quantizer._amax > 0.01
    assert clip_gelu(model, 0.01) == 2
    assert layer.output.dense._input_quantizer._amax.item() == pytest.approx(0.01)
    assert torch.equal(layer.attention.output.dense._input_quantizer._amax, attention_in)
    with pytest.raises(ValueError, match="maxval"):
        clip_gelu(model, 0)


def test_helpers_refuse_an_uncalibrated_model():
    model = QDQBertModel(tiny_config())
    with pytest.raises(UncalibratedQuantizerError, match="calibrate"):
        fuse_qkv(model)
    with pytest.raises(UncalibratedQuantizerError, match="calibrate"):
        clip_gelu(model, 10.0)
    with pytest.raises(ValueError, match="method"):
        calibrate_qdq(model, [inputs()], method="minmax")


def test_calibration_restores_training_mode():
    model = QDQBertModel(tiny_config()).train()
    calibrate_qdq(model, [inputs()], method="max", progress=False)
    assert model.training and all(q._amax is not None for q in quantizers(model).values())


def test_qat_steps_reduce_the_loss_and_keep_amax_fixed():
    """A few Adam steps on a toy task (label = whether token 5 occurs) through the STE; calibrated ranges hold."""
    torch.manual_seed(0)
    model = QDQBertForSequenceClassification(tiny_config(num_labels=2, hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0))
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(6, VOCAB, (16, SEQ), generator=g)
    labels = torch.arange(16) % 2
    ids[labels == 1, 3] = 5
    batch = {"input_ids": ids, "labels": labels}
    calibrate_qdq(model, [{"input_ids": ids}], method="max", progress=False)
    amax_before = {n: q._amax.clone() for n, q in quantizers(model).items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for name, q in quantizers(model).items():
        assert torch.equal(q._amax, amax_before[name]), name
    # A quantizer's output never exceeds its amax (one level of slack for the negative end of [-128, 127]).
    quantizer = model.bert.encoder.layer[0].attention.self.query._weight_quantizer
    out = quantizer(model.bert.encoder.layer[0].attention.self.query.weight)
    assert (out.abs() <= quantizer._amax * (128 / 127) + 1e-6).all()


# ----------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs,match", [
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "inputs_embeds": torch.zeros(2, 3, 32)}, "exactly one"),
    ({}, "exactly one"),
    ({"input_ids": torch.tensor([[1, 2, VOCAB]])}, "vocab_size"),
    ({"input_ids": torch.tensor([[1, -1]])}, "vocab_size"),
    ({"input_ids": torch.zeros(1, 65, dtype=torch.long)}, "max_position_embeddings"),
    ({"input_ids": torch.zeros(5, dtype=torch.long)}, r"\(batch, seq_length\)"),
    ({"inputs_embeds": torch.zeros(1, 3, 31)}, "inputs_embeds must have shape"),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)}, "attention_mask"),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "head_mask": torch.ones(3, 4)}, "head_mask"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    model = QDQBertModel(tiny_config())
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


@pytest.mark.parametrize("cls, is_decoder, fix", [(QDQBertLMHeadModel, False, "is_decoder=True"),
                                                   (QDQBertForMaskedLM, True, "is_decoder=False")])
def test_a_head_built_against_its_attention_direction_warns_and_runs_as_transformers_did(cls, is_decoder, fix):
    """Was: ValueError. transformers' QDQBERT warned and built the model; it runs with the config's attention."""
    with pytest.warns(UserWarning, match=fix):
        model = cls(tiny_config(is_decoder=is_decoder)).eval()
    for module in model.modules():  # float: dynamic amax would let the last token move the first one's scale
        if isinstance(module, TensorQuantizer):
            module.disable()
    ids = torch.randint(1, 50, (1, 5), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 50
    with torch.no_grad():
        first = model(input_ids=ids).logits[0, 0], model(input_ids=changed).logits[0, 0]
    assert torch.equal(*first) == is_decoder  # the first token sees the last one only when bidirectional


def test_head_construction_errors_name_the_config_fix():
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        QDQBertModel(tiny_config(is_decoder=True))(
            input_ids=torch.zeros(1, 3, dtype=torch.long), encoder_hidden_states=torch.zeros(1, 2, 32)
        )
    with pytest.raises(ValueError, match="num_labels=2"):
        QDQBertForQuestionAnswering(tiny_config(num_labels=3))
    with pytest.raises(ValueError, match="num_choices"):
        QDQBertForMultipleChoice(tiny_config())(input_ids=torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_gradient_checkpointing_trains_like_plain_backprop(use_reentrant):
    """Was: with use_reentrant=True every encoder gradient was None (the layer returned its tensors in a dataclass)."""
    config = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # the same forward twice
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = QDQBertForSequenceClassification(tiny_config(**config))
        calibrate_qdq(model, [{"input_ids": ids}], progress=False)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    plain, checkpointed = grads
    missing = [n for n, g in checkpointed.items() if g is None and plain[n] is not None]
    assert not missing, missing[:3]
    for name, g in plain.items():
        if g is not None:
            torch.testing.assert_close(checkpointed[name], g, rtol=1e-5, atol=1e-7, msg=name)
