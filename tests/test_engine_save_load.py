"""FrozenIBert.save_pretrained / from_pretrained: int8/int32 safetensors, loads without the float model,
bit-identical outputs, clear errors for truncated or mismatched files, nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from intbert.engine import FrozenIBert, freeze
from intbert.engine.frozen import CONFIG_NAME, WEIGHTS_NAME, checksum
from safetensors.torch import load_file, save_file

from test_ibert_modeling import HEADS, batch, build, calibrated, head_model, tiny_config
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


def _consistent(folder, config: dict, weights: bytes):
    """Write ``config`` and ``weights`` with a matching checksum: a file another tool made, right or wrong."""
    folder.mkdir()
    (folder / WEIGHTS_NAME).write_bytes(weights)
    config = dict(config, intbert_engine=dict(config["intbert_engine"]))
    config["intbert_engine"]["checksum"] = checksum(config, load_file(str(folder / WEIGHTS_NAME)))
    (folder / CONFIG_NAME).write_text(json.dumps(config))


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

    _consistent(tmp_path / "more_layers", dict(config, num_hidden_layers=3), weights)
    with pytest.raises(ValueError, match="missing tensor"):
        FrozenIBert.from_pretrained(tmp_path / "more_layers")

    _consistent(tmp_path / "fewer_layers", dict(config, num_hidden_layers=1), weights)
    with pytest.raises(ValueError, match="unexpected"):
        FrozenIBert.from_pretrained(tmp_path / "fewer_layers")

    _consistent(tmp_path / "wide", dict(config, hidden_size=64, num_attention_heads=4), weights)
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


# ----------------------------------------------------------------------------------------------------------------------
# The loader trusts nothing: a checksum ties config and tensors, and every constant is checked against freeze's bounds


def _save(path, seed: int = 0):
    frozen = freeze(calibrated(build(intbert.IBertModel, tiny_config(True), seed=seed)), backend="reference")
    frozen.save_pretrained(path)
    return frozen


def _edit_config(folder, **changes):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize("field, value", [("num_attention_heads", 8), ("pad_token_id", 2), ("layer_norm_eps", 1e-5)])
def test_an_edited_config_is_refused_by_the_checksum(tmp_path, field, value):
    """Was: 8 heads or another pad id loaded (same tensors) and gave other outputs."""
    _save(tmp_path / "m")
    _edit_config(tmp_path / "m", **{field: value})
    with pytest.raises(intbert.CheckpointIntegrityError, match="checksum"):
        FrozenIBert.from_pretrained(tmp_path / "m")


def test_files_of_two_saves_or_an_edited_tensor_are_refused(tmp_path):
    _save(tmp_path / "a", seed=0)
    _save(tmp_path / "b", seed=1)
    (tmp_path / "b" / CONFIG_NAME).write_bytes((tmp_path / "a" / CONFIG_NAME).read_bytes())  # same shapes, mixed
    with pytest.raises(intbert.CheckpointIntegrityError, match="two different saves"):
        FrozenIBert.from_pretrained(tmp_path / "b")
    tensors = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    tensors["layer.0.query.weight"][0, 0] += 1
    save_file(tensors, str(tmp_path / "a" / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(intbert.CheckpointIntegrityError, match="checksum"):
        FrozenIBert.from_pretrained(tmp_path / "a")


def test_a_file_of_the_format_without_checksum_is_refused_naming_the_fix(tmp_path):
    _save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    config["intbert_engine"] = {"format": 1, "backend": None, "aliases": {}}
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format 1.*freeze the model and save it again"):
        FrozenIBert.from_pretrained(tmp_path / "m")


# (tensor, edit, what the error names). Each breaks a bound freeze enforces; the checksum is made to match, as a
# hand-made or other-tool file would, so only the bounds can refuse it.
HOSTILE = {
    "per-channel m cut to (1,)": ("layer.0.query_act.m", lambda t: t[:1].clone(), r"query_act\.m: expected torch\.int64 \(32,\)"),
    "per-channel gelu cut to (1,)": ("layer.0.gelu.b", lambda t: t[:1].clone(), r"gelu\.b: expected torch\.int64 \(37,\)"),
    "shift e = 200": ("layer.0.key_act.e", lambda t: torch.full_like(t, 200), r"key_act\.e: values 200\.\.200 outside \[0, 63\]"),
    "multiplier m = 2^62": ("layer.0.context_act.m", lambda t: torch.full_like(t, 2**62), r"context_act\.m: .* outside \[0, 2147483647\]"),
    "bias = INT32_MAX": ("layer.0.query.bias", lambda t: torch.full_like(t, 2**31 - 1), r"query\.bias: values 2147483647"),
    "int8 weight -128": ("layer.1.intermediate.weight", lambda t: torch.full_like(t, -128), r"intermediate\.weight: values -128"),
    "softmax x0 = 0": ("layer.0.softmax.x0", lambda t: torch.zeros_like(t), r"softmax\.x0: values 0\.\.0"),
    "softmax zm off by one": ("layer.1.softmax.zm", lambda t: t + 1, r"softmax\.zm: .* is not ceil"),
    "gelu constant positive": ("layer.1.gelu.one", lambda t: -t, r"gelu\.one: values"),
    "layernorm shift 40": ("layer.0.attention_ln.shift", lambda t: torch.full_like(t, 40), r"attention_ln\.shift: values 40"),
    "layernorm sign 0": ("embeddings.ln.sign", lambda t: torch.zeros_like(t), r"embeddings\.ln\.sign: values other"),
    "negative scale": ("embeddings.out.scale", lambda t: -t, r"embeddings\.out\.scale: .* not a positive number"),
    "requant output bits 99": ("layer.0.pre_output.spec", lambda t: torch.tensor([99, 31]), r"pre_output\.spec: output bits 99"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_every_constant_is_checked_against_the_freeze_bounds(tmp_path, case):
    """Was: these loaded and ran (a (1,) multiplier broadcast over every channel, e = 200, m = 2^62, ...)."""
    key, edit, match = HOSTILE[case]
    _save(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / CONFIG_NAME).read_text())
    tensors = load_file(str(tmp_path / "ok" / WEIGHTS_NAME))
    tensors[key] = edit(tensors[key])
    buffer = tmp_path / "w.safetensors"
    save_file(tensors, str(buffer), metadata={"format": "pt"})
    _consistent(tmp_path / "bad", config, buffer.read_bytes())
    with pytest.raises(intbert.CheckpointIntegrityError, match=match):
        FrozenIBert.from_pretrained(tmp_path / "bad")


def test_config_bounds_are_checked_too(tmp_path):
    _save(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / CONFIG_NAME).read_text())
    weights = (tmp_path / "ok" / WEIGHTS_NAME).read_bytes()
    _consistent(tmp_path / "pad", dict(config, pad_token_id=5000), weights)
    with pytest.raises(intbert.CheckpointIntegrityError, match="pad_token_id 5000"):
        FrozenIBert.from_pretrained(tmp_path / "pad")


# ----------------------------------------------------------------------------------------------------------------------
# Saves that cannot be half-done


def _outputs(path):
    return FrozenIBert.from_pretrained(path, backend="reference")(**batch(4)).last_hidden_state


def test_a_save_failing_between_its_two_files_puts_the_old_model_back(tmp_path, monkeypatch):
    """Was: the weights were replaced and the config not, and a same-shape model loaded as a mix."""
    target = tmp_path / "out"
    _save(target, seed=0)
    before = _outputs(target)
    import intbert.atomic as atomic

    real = os.replace

    def crash_on_config(src, dst):
        if Path(dst).name == CONFIG_NAME:
            raise OSError("killed between the two files")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_config)
    with pytest.raises(OSError, match="killed"):
        _save(target, seed=1)
    monkeypatch.setattr(atomic.os, "replace", real)
    assert torch.equal(_outputs(target), before)
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # nothing staged left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_folders_of_dead_savers_are_removed_by_the_next_save(tmp_path):
    target = tmp_path / "out"
    _save(target)
    dead = _dead_pid()
    stale = [target / f".intbert-new-{dead}-abc", target / f".intbert-old-{dead}-def", tmp_path / f".out.intbert-new-{dead}-x"]
    live = target / ".intbert-new-1-ghi"  # pid 1 is alive: a concurrent save's staging is left alone
    for folder in stale + [live]:
        folder.mkdir()
        (folder / WEIGHTS_NAME).write_bytes(b"partial")
    (target / "tokenizer.json").write_text("{}")  # the user's other files stay, as with transformers
    _save(target, seed=1)
    assert not any(p.exists() for p in stale) and live.is_dir()
    assert sorted(p.name for p in target.iterdir()) == [live.name, CONFIG_NAME, WEIGHTS_NAME, "tokenizer.json"]
    FrozenIBert.from_pretrained(target)


def test_saving_into_a_mount_point_works(tmp_path, monkeypatch):
    """Was: "Invalid cross-device link" / "Device or resource busy" (an empty Docker volume as the target)."""
    target = tmp_path / "volume"
    target.mkdir()
    import intbert.atomic as atomic

    real_rename, real_replace = os.rename, os.replace

    def mount(real):
        def move(src, dst):  # renaming the mount point, or across its boundary, fails as on a real mount
            inside = lambda p: Path(p).resolve().is_relative_to(target.resolve()) and Path(p).resolve() != target.resolve()  # noqa: E731
            if inside(src) != inside(dst) or target.resolve() in (Path(src).resolve(), Path(dst).resolve()):
                raise OSError(errno.EXDEV if inside(src) != inside(dst) else errno.EBUSY, "mount point")
            return real(src, dst)
        return move

    monkeypatch.setattr(atomic.os, "rename", mount(real_rename))
    monkeypatch.setattr(atomic.os, "replace", mount(real_replace))
    frozen = _save(target)
    frozen.save_pretrained(target)  # and again, over the first save
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert torch.equal(_outputs(target), frozen(**batch(4)).last_hidden_state)
