"""I-BERT checkpoints and transformers parity: state dicts load both ways with strict=True and give the same float
outputs, transformers-written checkpoints (with a legacy position_ids key) load cleanly, calibrated models round-trip
bit-exactly, and quant mode stays close to the transformers port calibrated on the same batches."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from intbert.models.ibert import (
    IBertConfig,
    IBertForMaskedLM,
    IBertForMultipleChoice,
    IBertForQuestionAnswering,
    IBertForSequenceClassification,
    IBertForTokenClassification,
    IBertModel,
    calibrate_ibert,
)

VOCAB, MAX_POS, PAD = 99, 40, 1
BATCH, SEQ, CHOICES = 3, 7, 4
# float32 accumulation-order noise between our attention and transformers' eager attention, on hidden 32/36.
PARITY_ATOL = 1e-5
# Loose agreement with the transformers port in quant mode: its integers differ by design (see
# test_quant_mode_stays_close_to_transformers_calibrated_on_the_same_batches).
MIN_QUANT_COSINE = 0.9
SHAPES = {"d8": dict(hidden_size=32, num_attention_heads=4), "d9": dict(hidden_size=36, num_attention_heads=4)}


def fields(shape="d8", **overrides):
    f = dict(vocab_size=VOCAB, num_hidden_layers=2, intermediate_size=37, max_position_embeddings=MAX_POS,
             num_labels=3, **SHAPES[shape])
    f.update(overrides)
    return f


def batch(seed: int = 0, b: int = BATCH) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, SEQ), generator=g)
    mask = torch.ones(b, SEQ, dtype=torch.long)
    ids[0, -3:] = PAD
    mask[0, -3:] = 0
    ids[1, -1:] = PAD
    mask[1, -1:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.randint(0, 2, (b, SEQ), generator=g)}


def mc_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.view(BATCH, CHOICES, SEQ) for k, v in batch(seed, b=BATCH * CHOICES).items()}


# ours, transformers' class name, constructor kwargs, inputs, output keys
PAIRS = {
    "model": (IBertModel, "IBertModel", {}, batch, ("last_hidden_state", "pooler_output")),
    "model_no_pooler": (IBertModel, "IBertModel", dict(add_pooling_layer=False), batch, ("last_hidden_state",)),
    "masked_lm": (IBertForMaskedLM, "IBertForMaskedLM", {}, batch, ("logits",)),
    "sequence_classification": (IBertForSequenceClassification, "IBertForSequenceClassification", {}, batch, ("logits",)),
    "multiple_choice": (IBertForMultipleChoice, "IBertForMultipleChoice", {}, mc_batch, ("logits",)),
    "token_classification": (IBertForTokenClassification, "IBertForTokenClassification", {}, batch, ("logits",)),
    "question_answering": (IBertForQuestionAnswering, "IBertForQuestionAnswering", {}, batch,
                           ("start_logits", "end_logits")),
}
# Span heads have two labels (start, end).
OVERRIDES = {"question_answering": dict(num_labels=2)}


def pair(name, shape="d8", seed=0):
    ours_cls, theirs_name, kwargs, make, keys = PAIRS[name]
    overrides = OVERRIDES.get(name, {})
    torch.manual_seed(seed)
    ours = ours_cls(IBertConfig(**fields(shape, **overrides)), **kwargs).eval()
    torch.manual_seed(seed + 1)
    theirs = getattr(transformers, theirs_name)(transformers.IBertConfig(**fields(shape, **overrides)), **kwargs).eval()
    return ours, theirs, make, keys


def assert_same_outputs(a, b, x, keys):
    keep = x["attention_mask"].bool()
    with torch.no_grad():
        out_a, out_b = a(**x, output_hidden_states=True), b(**x, output_hidden_states=True)
    for key in keys:
        va, vb = out_a[key], out_b[key]
        if key in ("last_hidden_state", "logits") and va.dim() >= keep.dim() + 1 and va.shape[:keep.dim()] == keep.shape:
            va, vb = va[keep], vb[keep]  # pad tokens' states are not compared (the mask conventions differ there)
        torch.testing.assert_close(va, vb, rtol=0, atol=PARITY_ATOL, msg=key)
    flat_keep = keep.reshape(-1, keep.shape[-1])
    for ha, hb in zip(out_a.hidden_states, out_b.hidden_states, strict=True):
        torch.testing.assert_close(ha[flat_keep], hb[flat_keep], rtol=0, atol=PARITY_ATOL)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(PAIRS))
def test_our_state_dict_loads_strictly_into_transformers_and_gives_its_float_outputs(name, shape):
    ours, theirs, make, keys = pair(name, shape)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert_same_outputs(ours, theirs, make(3), keys)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(PAIRS))
def test_transformers_state_dict_loads_strictly_into_ours_and_gives_its_float_outputs(name, shape):
    ours, theirs, make, keys = pair(name, shape)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_outputs(ours, theirs, make(3), keys)


def _inject_legacy_position_ids(folder, prefix):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    key = f"{prefix}embeddings.position_ids"
    assert key not in tensors
    tensors[key] = torch.arange(MAX_POS).expand(1, -1).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("legacy_position_ids", [False, True], ids=["plain", "legacy_position_ids"])
@pytest.mark.parametrize("name", ["model", "masked_lm", "sequence_classification", "multiple_choice"])
def test_transformers_checkpoint_loads_with_no_missing_or_unexpected_keys(tmp_path, name, legacy_position_ids):
    ours_cls, theirs_name, kwargs, make, keys = PAIRS[name]
    torch.manual_seed(0)
    theirs = getattr(transformers, theirs_name)(transformers.IBertConfig(**fields()), **kwargs).eval()
    theirs.save_pretrained(tmp_path)
    if legacy_position_ids:
        _inject_legacy_position_ids(tmp_path, "" if name == "model" else "ibert.")
    ours, info = ours_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert isinstance(ours.config, IBertConfig)
    ours.eval()
    assert_same_outputs(ours, theirs, make(3), keys)
    if name == "masked_lm":
        assert ours.lm_head.decoder.weight.data_ptr() == ours.ibert.embeddings.word_embeddings.weight.data_ptr()


def test_state_dict_has_the_transformers_key_layout():
    """Research report §4: 25 parameters + 81 persistent buffers for a 1-layer sequence classifier, prefix ibert."""
    model = IBertForSequenceClassification(IBertConfig(**fields(num_hidden_layers=1)))
    keys = list(model.state_dict())
    params = {n for n, _ in model.named_parameters()}
    assert len(keys) == 106 and len(params) == 25
    assert "ibert.embeddings.position_ids" not in keys
    assert all(k.startswith(("ibert.", "classifier.")) for k in keys)
    for k in ("ibert.embeddings.embeddings_act2.x_min", "ibert.encoder.layer.0.attention.self.softmax.act.x_max",
              "ibert.encoder.layer.0.output.LayerNorm.shift", "ibert.encoder.layer.0.pre_output_act.act_scaling_factor",
              "ibert.encoder.layer.0.attention.self.query.bias_integer", "classifier.out_proj.weight"):
        assert k in keys


# ----------------------------------------------------------------------------------------------------------------------
# Save / load round trip of a calibrated quant model


@pytest.mark.parametrize("name", ["sequence_classification", "masked_lm"])
def test_calibrated_quant_model_round_trips_bit_exactly(tmp_path, name):
    ours_cls, _, kwargs, make, keys = PAIRS[name]
    torch.manual_seed(0)
    model = ours_cls(IBertConfig(**fields(quant_mode=True, force_dequant="gelu")), **kwargs).eval()
    calibrate_ibert(model, [make(s) for s in (10, 11)])
    model.save_pretrained(tmp_path)
    loaded = ours_cls.from_pretrained(tmp_path).eval()
    assert {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    assert loaded.config.quant_mode and loaded.config.force_dequant == "gelu"
    x = make(3)
    with torch.no_grad():
        a, b = model(**x), loaded(**x)
    for key in keys:
        assert torch.equal(a[key], b[key]), key
    state, loaded_state = model.state_dict(), loaded.state_dict()
    ranges = [k for k in state if k.endswith(("x_min", "x_max", "shift"))]
    assert ranges and all(torch.equal(state[k], loaded_state[k]) for k in ranges)


# ----------------------------------------------------------------------------------------------------------------------
# Quant mode against the transformers port


def test_quant_mode_stays_close_to_transformers_calibrated_on_the_same_batches():
    """Both calibrated by EMA over the same batches (transformers: train-mode forwards with dropout 0).

    The integers differ by design (modeling_ibert.py docstring): each layer gets the previous layer's output scale
    (tf#26738), the position add has its own range (embeddings_act2), weights use the full 8-bit range (127, not
    126), and integers are exact (the port runs later layers' GEMMs on non-integers). So agreement is loose; the
    printed deviation is the measurement.
    """
    f = fields(quant_mode=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    ours = IBertModel(IBertConfig(**f)).eval()
    theirs = transformers.IBertModel(transformers.IBertConfig(**f))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    batches = [batch(s, b=4) for s in (10, 11, 12, 13)]
    calibrate_ibert(ours, batches, method="ema")
    theirs.train()
    with torch.no_grad():
        for x in batches:
            theirs(**x)
    theirs.eval()

    torch.manual_seed(0)
    float_model = IBertModel(IBertConfig(**fields())).eval()
    float_model.load_state_dict(ours.state_dict())
    x = batch(99, b=4)
    keep = x["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**x).last_hidden_state[keep]
        b = theirs(**x).last_hidden_state[keep]
        ref = float_model(**x).last_hidden_state[keep]
    cos = nn.functional.cosine_similarity
    print(f"quant last_hidden_state, non-pad tokens: max |ours - transformers| = {(a - b).abs().max():.4f}, "
          f"max |ours - float| = {(a - ref).abs().max():.4f}, max |transformers - float| = {(b - ref).abs().max():.4f}; "
          f"min cosine ours/transformers {cos(a, b).min():.4f}, ours/float {cos(a, ref).min():.4f}, "
          f"transformers/float {cos(b, ref).min():.4f}")
    assert not torch.equal(a, b)
    assert cos(a, b).min() > MIN_QUANT_COSINE
    assert cos(a, ref).min() > MIN_QUANT_COSINE


def _loaded(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


def test_an_untied_masked_lm_round_trips_its_own_decoder(tmp_path):
    """Was: the hard tie decoder.bias = bias saved one bias, and the reload re-randomised the whole decoder."""
    torch.manual_seed(0)
    model = IBertForMaskedLM(IBertConfig(**fields(), tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.decoder.bias.normal_()
    assert model.lm_head.decoder.weight is not model.ibert.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    loaded, info = _loaded(IBertForMaskedLM, tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded.lm_head.decoder.weight, model.lm_head.decoder.weight)
    assert torch.equal(loaded.lm_head.decoder.bias, model.lm_head.decoder.bias)
    with torch.no_grad():
        assert torch.equal(loaded(**batch(1)).logits, model(**batch(1)).logits)


def test_a_checkpoint_without_the_lm_head_bias_reports_it_missing(tmp_path):
    torch.manual_seed(0)
    IBertForMaskedLM(IBertConfig(**fields())).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if k != "lm_head.bias"}, str(weights),
              metadata={"format": "pt"})
    loaded, info = _loaded(IBertForMaskedLM, tmp_path)
    assert "lm_head.bias" in info["missing_keys"]
    assert loaded.lm_head.decoder.bias is loaded.lm_head.bias and not loaded.lm_head.bias.any()  # zeros, tied


QUANT_CACHES = ("weight_integer", "bias_integer", "fc_scaling_factor", "weight_scaling_factor")


def test_quant_caches_a_checkpoint_lacks_load_as_zeros_not_uninitialised_memory(tmp_path):
    """Was: _init_weights skipped them, and a save before the first forward wrote garbage (seen: -2.25e12)."""
    torch.manual_seed(0)
    model = IBertModel(IBertConfig(**fields(), quant_mode=True))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    kept = {k: v for k, v in load_file(str(weights)).items() if not k.endswith(QUANT_CACHES)}
    save_file(kept, str(weights), metadata={"format": "pt"})
    for _ in range(3):  # fresh allocations each time: uninitialised memory shows up in one of them
        loaded, info = _loaded(IBertModel, tmp_path)
        caches = {k: v for k, v in loaded.state_dict().items() if k.endswith(QUANT_CACHES)}
        assert caches and set(caches) <= set(info["missing_keys"])
        assert all(not v.any() for v in caches.values()), [k for k, v in caches.items() if v.any()][:3]
        # and every loaded weight is the checkpoint's (the init skips what the file filled)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in kept.items())
