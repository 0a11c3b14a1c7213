"""QDQBERT checkpoints: plain BERT loads cleanly, calibrated models round-trip, the reference's key layout loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM, BertModel

from intbert.models.qdqbert import (
    QDQBertConfig,
    QDQBertForMaskedLM,
    QDQBertForSequenceClassification,
    QDQBertModel,
    calibrate_qdq,
    load_qdq_state_dict,
)
from intbert.quantization import TensorQuantizer

VOCAB, HIDDEN, INTER, LAYERS = 99, 32, 37, 2
FIELDS = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
              intermediate_size=INTER, max_position_embeddings=64)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (2, 9), generator=g), "attention_mask": torch.ones(2, 9)}


def amaxes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith("._amax")}


def reference_amax_layout(prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The key -> shape table of the research report (§2), for per-row weights, written out independently."""
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(LAYERS):
        layer = f"{prefix}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            keys[f"{layer}attention.self.{name}._input_quantizer._amax"] = ()
            keys[f"{layer}attention.self.{name}._weight_quantizer._amax"] = (HIDDEN, 1)
        for p in "qkva":
            keys[f"{layer}attention.self.matmul_{p}_input_quantizer._amax"] = ()
        keys[f"{layer}attention.output.dense._input_quantizer._amax"] = ()
        keys[f"{layer}attention.output.dense._weight_quantizer._amax"] = (HIDDEN, 1)
        keys[f"{layer}intermediate.dense._input_quantizer._amax"] = ()
        keys[f"{layer}intermediate.dense._weight_quantizer._amax"] = (INTER, 1)
        keys[f"{layer}output.dense._input_quantizer._amax"] = ()
        keys[f"{layer}output.dense._weight_quantizer._amax"] = (HIDDEN, 1)
        for block in ("attention.output", "output"):
            for p in ("local", "residual"):
                keys[f"{layer}{block}.add_{p}_input_quantizer._amax"] = ()
    return keys


def test_plain_bert_checkpoint_loads_with_every_key_and_no_warnings(tmp_path):
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(**FIELDS)).eval()
    bert.save_pretrained(tmp_path)
    model, info = QDQBertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = model.state_dict()
    for key, value in bert.state_dict().items():
        assert torch.equal(ours[key], value), key
    assert model.config.model_type == "qdqbert" and model.config.quant_desc_input is not None


def test_bert_base_model_checkpoint_loads_into_a_task_model(tmp_path):
    torch.manual_seed(0)
    BertModel(BertConfig(**FIELDS)).save_pretrained(tmp_path)
    _, info = QDQBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"]
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}


def test_calibrated_state_dict_has_exactly_the_reference_keys():
    model = QDQBertModel(QDQBertConfig(**FIELDS)).eval()
    calibrate_qdq(model, [batch()], method="max", progress=False)
    got = {k: tuple(v.shape) for k, v in amaxes(model).items()}
    assert got == reference_amax_layout()
    assert all(v.dtype == torch.float32 for v in amaxes(model).values())


@pytest.mark.parametrize("method", ["max", "percentile"])
def test_calibrated_model_round_trips_through_save_pretrained(tmp_path, method):
    torch.manual_seed(0)
    model = QDQBertForSequenceClassification(QDQBertConfig(**FIELDS, num_labels=2)).eval()
    calibrate_qdq(model, [batch(1), batch(2)], method=method, progress=False)
    model.save_pretrained(tmp_path)
    reloaded, info = QDQBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    saved, loaded = amaxes(model), amaxes(reloaded)
    assert saved.keys() == loaded.keys() and len(saved) == 40
    for key in saved:
        assert torch.equal(loaded[key], saved[key]), key
        assert loaded[key].device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(reloaded(**batch(3)).logits, model(**batch(3)).logits)
    assert reloaded.config.quant_desc_input == model.config.quant_desc_input


def test_task_checkpoint_amax_loads_into_the_base_model(tmp_path):
    """The `bert.` prefix is stripped for amax keys as transformers strips it for weights."""
    model = QDQBertForSequenceClassification(QDQBertConfig(**FIELDS)).eval()
    calibrate_qdq(model, [batch()], method="max", progress=False)
    model.save_pretrained(tmp_path)
    base = QDQBertModel.from_pretrained(tmp_path)
    expected = {k[len("bert."):]: v for k, v in amaxes(model).items()}
    got = amaxes(base)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)


def _hand_built_checkpoint(seed: int = 7) -> dict[str, torch.Tensor]:
    """BERT weights plus amax values in the reference layout, with known values (not produced by our code)."""
    torch.manual_seed(seed)
    state = dict(BertModel(BertConfig(**FIELDS)).state_dict())
    g = torch.Generator().manual_seed(seed)
    for key, shape in reference_amax_layout().items():
        state[key] = torch.rand(shape, generator=g) + 0.5
    return state


def test_hand_built_reference_checkpoint_loads_strictly():
    state = _hand_built_checkpoint()
    model = QDQBertModel(QDQBertConfig(**FIELDS))
    result = load_qdq_state_dict(model, state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, shape in reference_amax_layout().items():
        assert torch.equal(model.state_dict()[key], state[key]), key
    # Round trip: what we save is what we loaded.
    again = model.state_dict()
    assert set(again) == set(state) - {"embeddings.position_ids"}
    assert all(torch.equal(again[k], state[k]) for k in again)


def test_hand_built_reference_checkpoint_loads_with_from_pretrained(tmp_path):
    """A reference-layout safetensors file (task prefix `bert.`) and a config.json without descriptors."""
    state = {f"bert.{k}": v.contiguous() for k, v in _hand_built_checkpoint().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    QDQBertConfig(**FIELDS).save_pretrained(tmp_path)
    model, info = QDQBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"]
    for key in reference_amax_layout("bert."):
        assert torch.equal(model.state_dict()[key], state[key]), key


def test_checkpoint_amax_shape_wins_over_the_descriptor():
    """A per-tensor (0-d) weight amax loads into a model whose weight descriptor is per-row."""
    model = QDQBertModel(QDQBertConfig(**FIELDS)).eval()
    calibrate_qdq(model, [batch()], method="max", progress=False)
    key = "encoder.layer.0.attention.self.query._weight_quantizer._amax"
    state = dict(model.state_dict())
    state[key] = torch.tensor(0.25)
    fresh = QDQBertModel(QDQBertConfig(**FIELDS))
    load_qdq_state_dict(fresh, state)
    assert fresh.state_dict()[key].shape == () and fresh.state_dict()[key].item() == 0.25


def test_loading_amax_for_an_unknown_quantizer_is_reported():
    model = QDQBertModel(QDQBertConfig(**FIELDS))
    state = dict(_hand_built_checkpoint())
    state["encoder.layer.9.output.add_local_input_quantizer._amax"] = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="layer.9"):
        load_qdq_state_dict(model, state, strict=True)
    assert isinstance(model.encoder.layer[0].output.add_local_input_quantizer, TensorQuantizer)


def test_a_model_from_pretrained_can_be_calibrated_and_run(tmp_path):
    """from_pretrained builds under the meta device; new amax buffers must still land on the weights' device."""
    torch.manual_seed(0)
    BertModel(BertConfig(**FIELDS)).save_pretrained(tmp_path)
    model = QDQBertModel.from_pretrained(tmp_path).eval()
    calibrate_qdq(model, [batch()], method="max", progress=False)
    assert {v.device.type for v in amaxes(model).values()} == {"cpu"}
    assert torch.isfinite(model(**batch(1)).last_hidden_state).all()
