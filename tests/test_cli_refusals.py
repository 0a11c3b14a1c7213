"""What the ``intbert`` command refuses, and how (issue 11): never a silent wrong answer, never a half-written
folder, and every user mistake as one line on stderr with exit code 2.

Each test builds the hostile input it needs in a few lines (tiny models from ``test_cli``) and checks the
command's answer: the exit code, the one line, and that nothing was written or destroyed.
"""

from __future__ import annotations

import json
import os
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


# --------------------------------------------------------------------------------------------------
# 2. saves that cannot be half-done
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qdq(cls, calib, root) -> Path:
    out = root / "q-qdq"
    assert cli("quantize", cls, "--scheme", "qdq", "--method", "max", "--calib-data", calib, "--out", out)[0] == 0
    return out


def test_export_refuses_to_overwrite_a_file_without_overwrite(qdq, tmp_path, capsys):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"an older export")
    code, _, err = cli("export", qdq, "--onnx", target, capsys=capsys)
    _one_line_error(code, err, "--overwrite")
    assert target.read_bytes() == b"an older export"


@pytest.mark.slow
def test_export_overwrite_replaces_only_after_the_check_passes(qdq, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx extra is installed by scripts/install.sh")
    from intbert.cli import deploy
    from intbert.export import ExportError

    target = tmp_path / "m.onnx"
    target.write_bytes(b"an older export")

    def failing_check(*args, **kwargs):
        raise ExportError("onnxruntime disagrees")

    with monkeypatch.context() as patch:
        patch.setattr(deploy, "verify_onnx", failing_check)
        code, _, err = cli("export", qdq, "--onnx", target, "--overwrite", capsys=capsys)
    assert code == 1 and "onnxruntime disagrees" in err
    assert target.read_bytes() == b"an older export"  # the failed export did not replace it
    assert cli("export", qdq, "--onnx", target, "--overwrite", capsys=capsys)[0] == 0
    assert target.read_bytes()[:2] != b"an" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: no process has it


def _quantize_qdq(cls: Path, calib: Path, out: Path, *extra) -> int:
    return cli("quantize", cls, "--scheme", "qdq", "--method", "max", "--calib-data", calib, "--out", out, *extra)[0]


def test_overwrite_that_fails_mid_swap_puts_the_old_model_back(cls, calib, tmp_path, monkeypatch):
    """The second rename of the swap fails (as a crash there would leave it): the old folder is back in place,
    not left under a hidden name with --out missing."""
    out = tmp_path / "q"
    assert _quantize_qdq(cls, calib, out) == 0
    before = (out / "quantization_report.json").read_text()
    try:
        import intbert.atomic

        monkeypatch.setattr(intbert.atomic, "_exchange", lambda a, b: False)  # force the two-rename path
    except ImportError:
        pass
    real_rename, real_replace = os.rename, os.replace

    def failing(move):
        def patched(src, dst, *args, **kwargs):
            if Path(dst) == out and "old" not in Path(src).name:
                raise OSError(5, "Input/output error (injected)", str(dst))
            return move(src, dst, *args, **kwargs)
        return patched

    monkeypatch.setattr(os, "rename", failing(real_rename))
    monkeypatch.setattr(os, "replace", failing(real_replace))
    with pytest.raises(OSError, match="injected"):
        _quantize_qdq(cls, calib, out, "--overwrite", "--seed", "1")
    monkeypatch.undo()
    assert (out / "quantization_report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no hidden folders left behind


def test_a_folder_left_hidden_by_a_killed_swap_is_found_again(cls, calib, tmp_path, capsys):
    """kill -9 between the two renames of an --overwrite: the model sits under a hidden name and --out is gone.
    The next command that reads (or writes) the folder puts it back."""
    out = tmp_path / "q"
    assert _quantize_qdq(cls, calib, out) == 0
    out.rename(tmp_path / f".q.intbert-old-{DEAD_PID}-abcd")
    code, text, err = cli("eval", out, "--data", calib, capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_staging_folders_of_killed_runs_are_removed_by_the_next_save(cls, calib, tmp_path):
    out = tmp_path / "q"
    assert _quantize_qdq(cls, calib, out) == 0
    stale = tmp_path / f".q.intbert-new-{DEAD_PID}-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    assert _quantize_qdq(cls, calib, out, "--overwrite") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


# --------------------------------------------------------------------------------------------------
# 3. one line, exit code 2, for every user mistake
# --------------------------------------------------------------------------------------------------

NOT_UTF8 = {
    "utf-16": ("the film was good\nbad\n".encode("utf-16"), "UTF-16"),
    "latin-1": ("un film trop ch\xe8re\n".encode("latin-1"), "not UTF-8"),
    "binary": (bytes(range(256)) * 4, "NUL bytes"),
}


@pytest.mark.parametrize("command", ["quantize", "eval", "qat"])
@pytest.mark.parametrize("kind", list(NOT_UTF8))
def test_data_files_that_are_not_utf8_text_are_refused(kind, command, cls, quantized, tmp_path, capsys):
    raw, words = NOT_UTF8[kind]
    bad = tmp_path / "data.csv"
    bad.write_bytes(raw)
    args = {"quantize": ["quantize", cls, "--scheme", "ibert", "--calib-data", bad, "--out", tmp_path / "o"],
            "eval": ["eval", quantized, "--data", bad],
            "qat": ["qat", cls, "--train", bad, "--eval", bad, "--scheme", "qdq", "--out", tmp_path / "o"]}[command]
    code, _, err = cli(*args, capsys=capsys)
    _one_line_error(code, err, str(bad), words)


def test_a_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path):
    from intbert.cli.textfile import read_examples

    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\ngood film,fresh\n".encode("utf-8-sig"))
    assert read_examples(path).labels == ["fresh"]


def test_a_csv_with_an_unterminated_quote_names_its_line(cls, tmp_path, capsys):
    """The csv module read the rest of the file as one field: "1 of 1 rows have no 'label' value"."""
    bad = tmp_path / "data.csv"
    bad.write_text('text,label\ngood film,fresh\n"bad film,rotten\nfine,fresh\n', encoding="utf-8")
    code, _, err = cli("quantize", cls, "--scheme", "ibert", "--calib-data", bad, "--out", tmp_path / "o",
                       capsys=capsys)
    _one_line_error(code, err, f"{bad}:3", "quote")


def _truncated(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _truncated_bin(path: Path) -> None:
    weights = path / "model.safetensors"
    torch.save(load_file(weights), path / "pytorch_model.bin")
    weights.unlink()
    data = (path / "pytorch_model.bin").read_bytes()
    (path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


def _reshaped(path: Path) -> None:
    weights = path / "model.safetensors"
    state = load_file(weights)
    state["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(32, 32)
    save_file(state, weights, metadata={"format": "pt"})


def _edit_config(**changes):
    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **changes}))
    return edit


DAMAGED = {
    "truncated safetensors": (_truncated, "truncated or damaged"),
    "truncated .bin": (_truncated_bin, "truncated or damaged"),
    "wrong shape": (_reshaped, "intermediate.dense.weight: checkpoint (32, 32), config (64, 32)"),
    "pad_token_id=5000": (_edit_config(pad_token_id=5000), "pad_token_id 5000 is outside the vocabulary"),
    "config.json not UTF-8": (lambda p: (p / "config.json").write_bytes(b'{"model_type": "bert\xff"}'),
                              "config.json is not UTF-8"),
    "malformed tokenizer_config.json": (lambda p: (p / "tokenizer_config.json").write_text('{"do_lower_case": '),
                                        "tokenizer_config.json is not valid JSON"),
}


@pytest.mark.parametrize("scheme", ["ibert", "qdq"])
@pytest.mark.parametrize("damage", list(DAMAGED))
def test_damaged_float_checkpoints_are_refused_in_one_line(damage, scheme, cls, calib, tmp_path, capsys):
    edit, words = DAMAGED[damage]
    bad = tmp_path / "bad"
    shutil.copytree(cls, bad)
    edit(bad)
    code, _, err = cli("quantize", bad, "--scheme", scheme, "--calib-data", calib, "--out", tmp_path / "o",
                       capsys=capsys)
    _one_line_error(code, err, words)
    assert not (tmp_path / "o").exists()


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder nothing can be written in: a chmod 555 folder, or for root (whom permissions do not stop) a path
    under /sys, which no one may create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        (Path("/sys") / "intbert-probe").mkdir()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only place to write to on this machine")


def test_eval_json_to_a_place_that_cannot_be_written_fails_before_the_work(quantized, calib, tmp_path, capsys,
                                                                          monkeypatch):
    from intbert.cli import evaluate

    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("the evaluation ran"))
    (tmp_path / "a-file").write_text("")
    for bad in (tmp_path / "a-file" / "m.json", _read_only_dir(tmp_path) / "m.json", tmp_path):
        code, _, err = cli("eval", quantized, "--data", calib, "--json", bad, capsys=capsys)
        _one_line_error(code, err, "--json")


def test_export_to_a_read_only_place_is_refused_before_the_work(qdq, tmp_path, capsys):
    code, _, err = cli("export", qdq, "--onnx", _read_only_dir(tmp_path) / "sub" / "m.onnx", capsys=capsys)
    _one_line_error(code, err, "cannot write")


def test_demo_cache_dir_that_cannot_be_written_is_refused(tmp_path, capsys):
    code, _, err = cli("demo", "--quick", "--cache-dir", _read_only_dir(tmp_path) / "cache", capsys=capsys)
    _one_line_error(code, err, "--cache-dir", "cannot write")


def test_bench_onnx_that_is_not_onnx_is_refused(qdq, calib, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is installed by scripts/install.sh")
    code, _, err = cli("bench", qdq, "--onnx", calib, "--out", tmp_path, capsys=capsys)
    _one_line_error(code, err, "not an ONNX model")


@pytest.mark.parametrize("args", [
    ["qat", "M", "--train", "f", "--eval", "f", "--scheme", "qdq", "--out", "o", "--lr", "nan"],
    ["qat", "M", "--train", "f", "--eval", "f", "--scheme", "qdq", "--out", "o", "--epochs", "inf"],
    ["qat", "M", "--train", "f", "--eval", "f", "--scheme", "qdq", "--out", "o", "--max-steps", "0"],
    ["demo", "--epochs", "-1"],
    ["quantize", "M", "--scheme", "qdq", "--calib-data", "f", "--out", "o", "--seed", "-1"],
], ids=["qat lr nan", "qat epochs inf", "qat max-steps 0", "demo epochs -1", "seed -1"])
def test_numeric_options_out_of_range_are_usage_errors(args, capsys):
    code, _, err = cli(*args, capsys=capsys)
    _one_line_error(code, err, args[-2])


def test_an_example_with_no_tokens_is_refused_not_passed_on_as_a_zero_length_sequence():
    """A tokenizer that adds no special tokens turns a text of characters it drops into no tokens at all; the
    model then failed with a raw amax() IndexError."""
    from intbert.cli.errors import UsageError
    from intbert.cli.inference import make_batches
    from test_cli import _tokenizer

    bare = _tokenizer()

    def tokenizer(texts, **kwargs):
        return bare(texts, add_special_tokens=False, **kwargs)

    assert make_batches(tokenizer, ["the film"], 4, 16).batches[0]["input_ids"].shape == (1, 2)
    with pytest.raises(UsageError, match="no tokens"):
        make_batches(tokenizer, ["the film", "\u200b"], 4, 16)
