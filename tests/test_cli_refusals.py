"""What the ``intbert`` command refuses, and how (issue 11): never a silent wrong answer, never a half-written
folder, and every user mistake as one line on stderr with exit code 2.

Each test builds the hostile input it needs in a few lines (tiny models from ``test_cli``) and checks the
command's answer: the exit code, the one line, and that nothing was written or destroyed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import intbert
from test_cli import LABELS, TINY, _save, cli


@pytest.fixture(scope="module", autouse=True)
def eager_integer_kernels():
    from intbert.quantization import fused

    was = fused.is_enabled()
    fused.set_enabled(False)
    yield
    fused.set_enabled(was)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refusals")


@pytest.fixture(scope="module")
def cls(root) -> Path:
    torch.manual_seed(0)
    return _save(transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=2, **LABELS)),
                 root / "cls")


@pytest.fixture(scope="module")
def calib(root) -> Path:
    path = root / "calib.txt"
    path.write_text("the film was good\nan awful movie\nthe story is great\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def quantized(cls, calib, root) -> Path:
    out = root / "q-ibert"
    assert cli("quantize", cls, "--scheme", "ibert", "--method", "max", "--calib-data", calib, "--out", out)[0] == 0
    return out


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint ``src`` whose weights went through ``edit(state_dict) -> state_dict``."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    save_file(edit(load_file(weights)), weights, metadata={"format": "pt"})
    return dst


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("intbert ") and ": error: " in err, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# --------------------------------------------------------------------------------------------------
# 1. silent wrong answers
# --------------------------------------------------------------------------------------------------

BROKEN_KEYS = {
    "prefixed": lambda sd: {"foo." + k: v for k, v in sd.items()},
    "missing layer": lambda sd: {k: v for k, v in sd.items() if ".layer.1." not in k},
}


@pytest.mark.parametrize("scheme", ["ibert", "qdq"])
@pytest.mark.parametrize("broken", list(BROKEN_KEYS))
def test_quantize_refuses_a_checkpoint_missing_encoder_weights(broken, scheme, cls, calib, tmp_path, capsys):
    """transformers fills missing weights with random numbers and only logs it (quieted by the CLI): the int8
    model of a renamed checkpoint looked like any other. Now one line names a few missing keys."""
    bad = _edited_copy(cls, tmp_path / "bad", BROKEN_KEYS[broken])
    code, _, err = cli("quantize", bad, "--scheme", scheme, "--calib-data", calib, "--out", tmp_path / "o",
                       capsys=capsys)
    _one_line_error(code, err, "encoder weights", "layer.1" if broken == "missing layer" else "bert.embeddings")
    assert not (tmp_path / "o").exists()


def test_quantize_reports_a_new_head_as_new_not_as_an_error(calib, tmp_path, capsys):
    """A bare encoder saved without its pooler: the pooler is a head, newly initialised; said once, not refused."""
    torch.manual_seed(0)
    bare = _save(transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False), tmp_path / "bare")
    code, _, err = cli("quantize", bare, "--scheme", "qdq", "--method", "max", "--calib-data", calib,
                       "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    assert "note:" in err and "pooler" in err and "newly initialised" in err


def test_quantize_records_the_fingerprint_of_its_float_source(quantized, cls):
    report = json.loads((quantized / "quantization_report.json").read_text())
    assert report["source"]["fingerprint"] == intbert.fingerprint(cls)


def test_eval_refuses_a_float_model_that_is_not_the_source(quantized, calib, root, capsys):
    """Another model (here: the same architecture, other random weights) gave cosine 0.04 with exit 0."""
    torch.manual_seed(1)
    other = _save(transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=2, **LABELS)),
                  root / "other")
    code, _, err = cli("eval", quantized, "--data", calib, "--float", other, capsys=capsys)
    _one_line_error(code, err, "not those", "--allow-other-float")
    code, out, err = cli("eval", quantized, "--data", calib, "--float", other, "--allow-other-float", capsys=capsys)
    assert code == 0 and "WARNING" in err and "cosine" in out


def test_eval_refuses_a_source_folder_changed_since_quantize(quantized, cls, calib, tmp_path, capsys):
    """The report's source path now holds other weights (the model was retrained in place)."""
    saved = tmp_path / "saved.safetensors"
    shutil.copy(cls / "model.safetensors", saved)
    try:
        state = load_file(saved)
        state["classifier.weight"] = -state["classifier.weight"]
        save_file(state, cls / "model.safetensors", metadata={"format": "pt"})
        code, _, err = cli("eval", quantized, "--data", calib, capsys=capsys)
    finally:
        shutil.copy(saved, cls / "model.safetensors")
    _one_line_error(code, err, str(cls))
    assert cli("eval", quantized, "--data", calib, capsys=capsys)[0] == 0  # the source restored: accepted again


@pytest.mark.parametrize("where", ["the source", "inside the source", "above the source"])
def test_quantize_refuses_to_write_where_the_source_lives(where, calib, tmp_path, capsys):
    torch.manual_seed(0)
    src = _save(transformers.BertModel(transformers.BertConfig(**TINY)), tmp_path / "parent" / "src")
    before = sorted(p.name for p in src.iterdir())
    out = {"the source": src, "inside the source": src / "int8", "above the source": tmp_path / "parent"}[where]
    code, _, err = cli("quantize", src, "--scheme", "ibert", "--calib-data", calib, "--out", out, "--overwrite",
                       capsys=capsys)
    _one_line_error(code, err, "--out")
    assert sorted(p.name for p in src.iterdir()) == before
