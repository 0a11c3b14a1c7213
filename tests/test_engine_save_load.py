"""FrozenIBert.save_pretrained / from_pretrained: int8/int32 safetensors, loads without the float model,
bit-identical outputs, clear errors for truncated or mismatched files, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from intbert.engine import FrozenIBert, freeze
from intbert.engine.frozen import CONFIG_NAME, WEIGHTS_NAME

from test_ibert_modeling import HEADS, build, calibrated, head_model, tiny_config
import intbert


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_round_trips_bit_identically(name, tmp_path):
    model = head_model(name, quant=True)
    frozen = freeze(model, backend="reference")
    frozen.save_pretrained(tmp_path / "int")
    loaded = FrozenIBert.from_pretrained(tmp_path / "int")
    assert loaded.head_name == frozen.head_name
    x = HEADS[name][3](21)
    ref, out = frozen(**x), loaded(**x)
    for key, value in ref.items():
        if torch.is_tensor(value):
            assert torch.equal(value, out[key]), key


def test_saved_file_holds_int8_weights_int32_biases_and_is_small(tmp_path):
    config = tiny_config(True, vocab_size=2000, hidden_size=64, num_attention_heads=4, intermediate_size=256)
    model = calibrated(build(intbert.IBertForSequenceClassification, config))
    model.save_pretrained(tmp_path / "float")
    freeze(model).save_pretrained(tmp_path / "int")
    with safe_open(str(tmp_path / "int" / WEIGHTS_NAME), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["ibert.embeddings.word"] == "I8"
    assert dtypes["ibert.layer.0.query.weight"] == "I8" and dtypes["ibert.layer.0.query.bias"] == "I32"
    assert dtypes["ibert.layer.1.intermediate.weight"] == "I8"
    float_size = (tmp_path / "float" / "model.safetensors").stat().st_size
    int_size = (tmp_path / "int" / WEIGHTS_NAME).stat().st_size
    assert int_size <= 0.30 * float_size, (int_size, float_size)


def test_loaded_model_is_materialized_and_its_encoder_holds_only_integers(tmp_path):
    freeze(head_model("multiple_choice", quant=True)).save_pretrained(tmp_path)
    loaded = FrozenIBert.from_pretrained(tmp_path)
    state = loaded.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())  # the head was built on meta, then loaded
    floats = [k for k, v in loaded.encoder.state_dict().items()
              if v.is_floating_point() and not k.endswith(".scale") and not k.startswith("pooler.")]
    assert floats == []  # only the dequantization scales (and the float pooler) are float


def test_truncated_and_mismatched_files_raise_clear_errors(tmp_path):
    frozen = freeze(head_model("model", quant=True))
    frozen.save_pretrained(tmp_path / "ok")
    weights = (tmp_path / "ok" / WEIGHTS_NAME).read_bytes()
    config = json.loads((tmp_path / "ok" / CONFIG_NAME).read_text())

    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])
    (tmp_path / "cut" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        FrozenIBert.from_pretrained(tmp_path / "cut")

    (tmp_path / "more_layers").mkdir()
    (tmp_path / "more_layers" / WEIGHTS_NAME).write_bytes(weights)
    (tmp_path / "more_layers" / CONFIG_NAME).write_text(json.dumps(dict(config, num_hidden_layers=3)))
    with pytest.raises(ValueError, match="missing tensor"):
        FrozenIBert.from_pretrained(tmp_path / "more_layers")

    (tmp_path / "fewer_layers").mkdir()
    (tmp_path / "fewer_layers" / WEIGHTS_NAME).write_bytes(weights)
    (tmp_path / "fewer_layers" / CONFIG_NAME).write_text(json.dumps(dict(config, num_hidden_layers=1)))
    with pytest.raises(ValueError, match="unexpected"):
        FrozenIBert.from_pretrained(tmp_path / "fewer_layers")

    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / WEIGHTS_NAME).write_bytes(weights)
    (tmp_path / "wide" / CONFIG_NAME).write_text(json.dumps(dict(config, hidden_size=64, num_attention_heads=4)))
    with pytest.raises(ValueError, match="hidden"):
        FrozenIBert.from_pretrained(tmp_path / "wide")

    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        FrozenIBert.from_pretrained(tmp_path / "nothing")
    model_dir = tmp_path / "sim"
    head_model("model", quant=True).save_pretrained(model_dir)
    with pytest.raises((ValueError, FileNotFoundError)):
        FrozenIBert.from_pretrained(model_dir)


def test_a_failed_save_leaves_nothing_behind_and_keeps_an_earlier_save(tmp_path, monkeypatch):
    frozen = freeze(head_model("model", quant=True))
    target = tmp_path / "out"
    frozen.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    import intbert.engine.frozen as fz

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fz, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        frozen.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left
    with pytest.raises(OSError):
        frozen.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()
