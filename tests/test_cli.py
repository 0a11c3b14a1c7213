"""The ``intbert`` command line end to end on tiny models built here (no download, a few seconds each).

Covers every command (quantize, qat, eval, bench, export, predict, demo on its reduced setting), the checkpoint
conversions it relies on (BERT and RoBERTa heads to I-BERT, checked against transformers' own outputs), and its
error contract: a usage mistake prints one line on stderr, no traceback, and exits with code 2.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import intbert
from intbert.cli.convert import bert_to_ibert_head, roberta_to_ibert
from intbert.cli.demo import DemoSettings, run_demo
from intbert.cli.main import COMMANDS, main
from intbert.cli.textfile import label_ids, read_examples
from intbert.models.ibert.quant_modules import QuantAct
from intbert.quantization.workflow import named_quantizers

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,!'",
         *("##" + c for c in "abcdefghijklmnopqrstuvwxyz"),
         *"the a film movie good bad great awful story is was and of to it".split()]
TINY = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=0)
LABELS = {"id2label": {0: "rotten", 1: "fresh"}, "label2id": {"rotten": 0, "fresh": 1}}
SENTENCES = [("the film was good", "fresh"), ("an awful movie", "rotten"), ("the story is great", "fresh"),
             ("bad bad film", "rotten"), ("it was a great movie and a good story", "fresh"), ("awful, bad", "rotten")]
#: float32 noise of the same arithmetic in another order (BERT vs I-BERT float mode); measured <= 5e-7 here.
CONVERSION_ATOL = 1e-5


def _tokenizer():
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def _save(model, path: Path) -> Path:
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints in transformers' layout: BERT with three heads and a bare RoBERTa."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    bert = transformers.BertConfig(**TINY, num_labels=2, **LABELS)
    roberta = transformers.RobertaConfig(**{**TINY, "max_position_embeddings": 66})
    return {
        "cls": _save(transformers.BertForSequenceClassification(bert), root / "bert-cls"),
        "mlm": _save(transformers.BertForMaskedLM(bert), root / "bert-mlm"),
        "base": _save(transformers.BertModel(bert), root / "bert-base"),
        # One layer: the demo test runs the whole pipeline twice, and each quantizer costs a calibration search.
        "base-1layer": _save(transformers.BertModel(transformers.BertConfig(**{**TINY, "num_hidden_layers": 1})),
                             root / "bert-base-1layer"),
        "roberta": _save(transformers.RobertaModel(roberta), root / "roberta-base"),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    (root / "calib.txt").write_text("\n".join(t for t, _ in SENTENCES) + "\n\n", encoding="utf-8")
    with (root / "labelled.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(SENTENCES * 4)
    (root / "labelled.jsonl").write_text("".join(json.dumps({"sentence": t, "y": y}) + "\n" for t, y in SENTENCES))
    return {p.stem + p.suffix: p for p in root.iterdir()}


def cli(*args, capsys=None) -> tuple[int, str, str]:
    """Run ``intbert ARGS`` in this process; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's --help and errors
        code = exit_.code
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


@pytest.fixture(scope="module", autouse=True)
def eager_integer_kernels():
    """Tiny models gain nothing from compiling the integer kernels; compiling would cost most of these tests' time."""
    from intbert.quantization import fused

    was = fused.is_enabled()
    fused.set_enabled(False)
    yield
    fused.set_enabled(was)


@pytest.fixture(scope="module")
def ibert_dir(models, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "ibert"
    assert main(["quantize", str(models["cls"]), "--scheme", "ibert", "--calib-data", str(data["calib.txt"]),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def qdq_dir(models, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "qdq"
    assert main(["quantize", str(models["cls"]), "--scheme", "qdq", "--method", "percentile", "--calib-data",
                 str(data["labelled.csv"]), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def qdq_export(qdq_dir, data, tmp_path_factory) -> tuple[Path, str]:
    """One `intbert export` (the file and what it printed) for the export and bench tests: an export of even a tiny
    model takes seconds."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is installed by scripts/install.sh")
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(qdq_dir), "--onnx", str(path), "--data", str(data["calib.txt"])])
    assert code == 0
    return path, printed.getvalue()


# --------------------------------------------------------------------------------------------------
# the command and its help
# --------------------------------------------------------------------------------------------------


def test_console_script_points_at_main():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["intbert"] == "intbert.cli.main:main"


@pytest.mark.parametrize("command", ["demo", "quantize", "qat", "eval", "bench", "export", "predict"])
def test_every_command_has_help(command, capsys):
    code, out, _ = cli(command, "--help", capsys=capsys)
    assert code == 0 and out.startswith(f"usage: intbert {command}")
    assert len(COMMANDS) == 7


# --------------------------------------------------------------------------------------------------
# conversions the commands rely on: same outputs as transformers' float models
# --------------------------------------------------------------------------------------------------


def _batch():
    ids = torch.randint(5, len(WORDS), (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification", "BertForMaskedLM",
                                  "BertForTokenClassification", "RobertaModel", "RobertaForSequenceClassification",
                                  "RobertaForMaskedLM"])
def test_conversion_to_float_ibert_keeps_the_outputs(head):
    torch.manual_seed(0)
    roberta = head.startswith("Roberta")
    config = (transformers.RobertaConfig(**{**TINY, "max_position_embeddings": 66}) if roberta
              else transformers.BertConfig(**TINY, num_labels=3))
    source = getattr(transformers, head)(config).eval()
    converted = (roberta_to_ibert if roberta else bert_to_ibert_head)(source, quant_mode=False)
    assert type(converted).__name__ == "IBert" + head.removeprefix("Roberta").removeprefix("Bert")
    batch = _batch()
    with torch.no_grad():
        want, got = source(**batch), converted(**batch)
    key = "logits" if hasattr(want, "logits") else "last_hidden_state"
    want, got = getattr(want, key), getattr(got, key)
    if want.dim() == 3:  # per-token outputs: pad positions differ by design (I-BERT gives them position 0)
        keep = batch["attention_mask"].bool()
        want, got = want[keep], got[keep]
    torch.testing.assert_close(got, want, rtol=0, atol=CONVERSION_ATOL)


# --------------------------------------------------------------------------------------------------
# quantize
# --------------------------------------------------------------------------------------------------


def test_quantize_ibert_writes_a_frozen_model_with_every_range(ibert_dir, models):
    names = {p.name for p in ibert_dir.iterdir()}
    assert {"config.json", "model.safetensors", "quantization_report.json", "tokenizer.json"} <= names
    report = json.loads((ibert_dir / "quantization_report.json").read_text())
    assert (report["scheme"], report["format"], report["method"]) == ("ibert", "frozen", "mse")
    assert report["source"]["path"] == str(models["cls"].resolve())
    simulation = intbert.IBertForSequenceClassification(intbert.IBertConfig(quant_mode=True, **TINY))
    acts = [n for n, m in simulation.named_modules() if isinstance(m, QuantAct)]
    assert sorted(report["ranges"]["activations"]) == sorted(acts)
    assert all(r["max"] > 0 for r in report["ranges"]["activations"].values())
    assert len(report["ranges"]["layernorm_shifts"]) == 1 + 2 * TINY["num_hidden_layers"]
    frozen = intbert.FrozenIBert.from_pretrained(ibert_dir)
    assert frozen.head_name == "IBertForSequenceClassification"


def test_quantize_qdq_saves_every_amax_in_the_model_and_the_report(qdq_dir):
    report = json.loads((qdq_dir / "quantization_report.json").read_text())
    assert (report["format"], report["method"], report["calibration"]["percentile"]) == ("qdq", "percentile", 99.99)
    model = intbert.QDQBertForSequenceClassification.from_pretrained(qdq_dir)
    saved = {name: q.amax for name, q in named_quantizers(model)}
    assert set(saved) == set(report["ranges"]["quantizers"])
    for name, entry in report["ranges"]["quantizers"].items():
        if not entry["enabled"]:  # the default recipe runs the residual adds in float: no amax, saved off
            assert entry["amax"] is None and saved[name] is None and "add_" in name
            continue
        want = torch.tensor(entry["amax"]).reshape(-1)
        torch.testing.assert_close(saved[name].reshape(-1), want, rtol=1e-6, atol=0)


def test_quantize_simulation_without_freeze(models, data, tmp_path):
    code = main(["quantize", str(models["cls"]), "--scheme", "ibert", "--method", "max", "--no-freeze", "--calib-data",
                 str(data["labelled.jsonl"]), "--text-column", "sentence", "--out", str(tmp_path / "s")])
    assert code == 0
    report = json.loads((tmp_path / "s" / "quantization_report.json").read_text())
    assert (report["format"], report["method"]) == ("simulation", "max")
    model = intbert.IBertForSequenceClassification.from_pretrained(tmp_path / "s").eval()
    assert model.config.quant_mode
    model(input_ids=torch.tensor([[2, 40, 3]]))  # calibrated: runs in eval without UncalibratedError


def test_quantize_roberta_as_ibert_and_compare_embeddings(models, data, tmp_path, capsys):
    out = tmp_path / "rob"
    assert cli("quantize", models["roberta"], "--scheme", "ibert", "--calib-data", data["calib.txt"], "--out", out,
               capsys=capsys)[0] == 0
    code, text, _ = cli("eval", out, "--data", data["calib.txt"], "--json", tmp_path / "m.json", capsys=capsys)
    assert code == 0 and "cosine to FP32 (mean)" in text
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["cosine_mean"] > 0.99 and not metrics["labelled"]


def test_the_commands_recipe_names_are_the_librarys():
    # cli/arguments.py repeats them so that `intbert --help` needs no torch: they must not drift apart.
    from intbert.cli import arguments

    for scheme, family in arguments.RECIPE_FAMILY.items():
        assert set(arguments.RECIPE_NAMES[scheme]) == {name for f, name in intbert.RECIPES if f == family}
        assert arguments.DEFAULT_RECIPES[scheme] == intbert.DEFAULT_RECIPES[family]


def test_quantize_by_default_smooths_and_records_the_recipe(qdq_dir, ibert_dir):
    # qdq_dir named only a method: the recipe is QDQBERT's default, with its float residual adds; ibert_dir named
    # neither: I-BERT's default recipe and its method.
    qdq = json.loads((qdq_dir / "quantization_report.json").read_text())
    assert qdq["recipe"]["recipe"]["name"] == "smooth-float-skip" and qdq["recipe"]["method"] == "percentile"
    assert qdq["recipe"]["smoothing"]["sites"] and qdq["recipe"]["percentile"] == 99.99
    adds = {n: q for n, q in qdq["ranges"]["quantizers"].items() if "add_residual_input" in n}
    assert adds and not any(q["enabled"] for q in adds.values())  # float residual adds
    ibert = json.loads((ibert_dir / "quantization_report.json").read_text())
    assert (ibert["recipe"]["recipe"]["name"], ibert["method"]) == ("smooth", "mse")
    sites = ibert["recipe"]["smoothing"]["sites"]
    assert sites and all(site["alpha"] is None or 0 <= site["alpha"] <= 1 for site in sites.values())


def test_quantize_recipe_reference_with_another_method(models, data, tmp_path, capsys):
    out = tmp_path / "ref"
    code, text, _ = cli("quantize", models["cls"], "--scheme", "qdq", "--recipe", "reference", "--method", "max",
                        "--calib-data", data["calib.txt"], "--out", out, capsys=capsys)
    assert code == 0 and "recipe reference, method max" in text
    report = json.loads((out / "quantization_report.json").read_text())
    assert (report["recipe"]["recipe"]["name"], report["recipe"]["method"], report["method"]) == (
        "reference", "max", "max")
    assert "smoothing" not in report["recipe"]
    adds = [q for n, q in report["ranges"]["quantizers"].items() if "add_residual_input" in n]
    assert adds and all(q["enabled"] and q["amax"] is not None for q in adds)  # int8 residual adds


def test_quantize_best_method_scores_the_recipes_final_model(models, data, tmp_path, capsys):
    # float-skip caps the GELU output's amax at 10 after calibrating: "best" must score (and keep) the capped model.
    out = tmp_path / "best"
    code, text, _ = cli("quantize", models["cls"], "--scheme", "qdq", "--recipe", "float-skip", "--method", "best",
                        "--calib-data", data["labelled.csv"], "--out", out, capsys=capsys)
    assert code == 0
    report = json.loads((out / "quantization_report.json").read_text())
    assert set(report["method_scores"]) == {"max", "percentile", "mse", "entropy"}
    assert report["recipe"]["method"] == report["method"] in report["method_scores"]
    capped = [q for name, q in report["ranges"]["quantizers"].items() if "output.dense._input_quantizer" in name]
    assert capped and all(max(q["amax"]) <= 10.0 if isinstance(q["amax"], list) else q["amax"] <= 10.0
                          for q in capped)


# --------------------------------------------------------------------------------------------------
# eval, predict, export, bench
# --------------------------------------------------------------------------------------------------


def test_eval_labelled_gives_accuracy_side_by_side(ibert_dir, data, tmp_path, capsys):
    code, out, _ = cli("eval", ibert_dir, "--data", data["labelled.csv"], "--json", tmp_path / "m.json", capsys=capsys)
    assert code == 0
    assert "accuracy" in out and "INT8 (I-BERT, frozen integer engine)" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["labelled"] and metrics["examples"] == 4 * len(SENTENCES)
    assert 0 <= metrics["accuracy_float"] <= 1 and 0 <= metrics["accuracy_quantized"] <= 1
    assert metrics["agreement"] > 0.9  # a tiny random model barely moves under 8 bits


def test_predict_labels_for_a_classifier(ibert_dir, capsys):
    code, out, _ = cli("predict", ibert_dir, "a good film", "awful", "--json", capsys=capsys)
    results = json.loads(out)
    assert code == 0 and [r["text"] for r in results] == ["a good film", "awful"]
    assert all(r["label"] in ("fresh", "rotten") and abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in results)


def test_predict_fill_mask_and_embeddings(models, data, tmp_path, capsys):
    mlm = tmp_path / "mlm"
    assert cli("quantize", models["mlm"], "--scheme", "qdq", "--calib-data", data["calib.txt"], "--out", mlm,
               capsys=capsys)[0] == 0
    code, out, _ = cli("predict", mlm, "the film was [MASK] .", "--top-k", "3", "--json", capsys=capsys)
    (result,) = json.loads(out)
    assert code == 0 and len(result["masks"]) == 1 and len(result["masks"][0]) == 3
    code, out, _ = cli("predict", models["base"], "the story", "--json", capsys=capsys)
    (result,) = json.loads(out)
    assert code == 0 and len(result["embedding"]) == TINY["hidden_size"]


@pytest.mark.slow
def test_export_writes_onnx_that_matches_pytorch(qdq_export):
    path, out = qdq_export
    assert path.is_file() and "int8 kernels in onnxruntime" in out and "QuantizeLinear" in out
    diff = float(out.split("max |diff| ")[1].split(",")[0])
    assert diff < 1e-3  # float32 kernels in another order; a misplaced Q/DQ moves the logits by ~1e-2


@pytest.mark.slow
def test_bench_times_float_quantized_and_exported(qdq_dir, qdq_export, tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code, out, _ = cli("bench", qdq_dir, "--batch-sizes", "1,2", "--seq-len", "8", "--warmup", "0", "--iters", "1",
                       "--device", "cpu", "--onnx", qdq_export[0], "--out", out_dir, capsys=capsys)
    assert code == 0 and "x FP32" in out
    results = json.loads((out_dir / "bench.json").read_text())["results"]
    names = {r["model"] for r in results}
    assert len(names) == 3 and "FP32 (PyTorch)" in names and any("ONNX" in n for n in names)
    assert {r["batch"] for r in results} == {1, 2}
    assert all(r["speedup_vs_fp32"] > 0 for r in results)
    pytest.importorskip("matplotlib", reason="the demo extra is installed by scripts/install.sh")
    assert (out_dir / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_ibert_writes_the_integer_graph_bit_identical_to_the_engine(ibert_dir, data, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is installed by scripts/install.sh")
    path = tmp_path / "ibert.onnx"
    code, out, _ = cli("export", ibert_dir, "--onnx", path, "--data", data["calib.txt"], capsys=capsys)
    assert code == 0 and path.is_file()
    assert "integer-only encoder graph" in out and "int8 hidden states bit-identical: yes" in out


def test_bench_of_ibert_without_the_onnx_column(ibert_dir, tmp_path, capsys):
    code, out, _ = cli("bench", ibert_dir, "--batch-sizes", "1", "--seq-len", "4", "--warmup", "0", "--iters", "1",
                       "--device", "cpu", "--no-onnx", "--out", tmp_path, capsys=capsys)
    assert code == 0 and "INT8 (I-BERT, frozen integer engine)" in out and "ONNX" not in out
    assert {r["model"] for r in json.loads((tmp_path / "bench.json").read_text())["results"]} == {
        "FP32 (PyTorch)", "INT8 (I-BERT, frozen integer engine)"}


# --------------------------------------------------------------------------------------------------
# qat
# --------------------------------------------------------------------------------------------------


def test_qat_trains_a_new_head_and_saves_a_frozen_model(models, data, tmp_path, capsys):
    pytest.importorskip("accelerate", reason="Trainer needs accelerate (the demo extra)")
    out = tmp_path / "qat"
    code, text, err = cli("qat", models["base"], "--train", data["labelled.csv"], "--eval", data["labelled.csv"],
                          "--scheme", "ibert", "--max-steps", "2", "--batch-size", "8", "--out", out, capsys=capsys)
    assert code == 0 and "INT8 after QAT" in text
    assert "classifier" in err and "newly initialised" in err  # the new head is said to be new, not an error
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["format"] == "frozen" and report["qat"]["steps"] == 2
    assert 0 <= report["eval"]["accuracy_quantized"] <= 1
    frozen = intbert.FrozenIBert.from_pretrained(out)
    assert frozen.config.id2label == {0: "fresh", 1: "rotten"}  # sorted names of the training file


def test_qat_by_distillation_from_the_float_classifier(models, data, tmp_path, capsys):
    out = tmp_path / "kd"
    code, text, _ = cli("qat", models["cls"], "--train", data["labelled.csv"], "--eval", data["labelled.csv"],
                        "--scheme", "qdq", "--recipe", "reference", "--distill", "--max-steps", "3", "--batch-size",
                        "8", "--out", out, capsys=capsys)
    assert code == 0 and "recipe reference, QAT by distillation 3 steps" in text
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["qat"]["distill"] and report["qat"]["steps"] == 3 and report["qat"]["lr"] == 5e-5
    assert report["recipe"]["recipe"]["name"] == "reference" and report["method"] == "mse"
    trained = intbert.QDQBertForSequenceClassification.from_pretrained(out)
    start = intbert.QDQBertForSequenceClassification.from_pretrained(models["cls"])
    assert not torch.equal(trained.classifier.weight, start.classifier.weight)  # it trained


# --------------------------------------------------------------------------------------------------
# the demo's pipeline, reduced
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_pipeline_reduced_runs_end_to_end_and_reuses_its_fine_tune(models, tmp_path, capsys):
    pytest.importorskip("accelerate", reason="Trainer needs accelerate (the demo extra)")
    settings = DemoSettings.reduced(tmp_path / "cache", base=models["base-1layer"], onnx=False)
    first = run_demo(settings)
    assert not first["reused_finetuned"]
    # Each family's default recipe, named in the rows and the results (the one the README's table shows).
    assert (first["ibert_recipe"], first["qdq_recipe"]) == ("smooth", "smooth-float-skip")
    assert (first["ibert_method"], first["qdq_method"]) == ("mse", "max")
    names = [r["name"] for r in first["rows"]]
    assert names[:2] == ["FP32 (PyTorch)", "I-BERT INT8 (smooth, integer engine)"]
    assert names[2] == "QDQBERT INT8 (smooth-float-skip, PyTorch fake-quant)"
    report = json.loads((tmp_path / "cache" / "qdqbert" / "quantization_report.json").read_text())
    assert report["recipe"]["recipe"]["name"] == "smooth-float-skip" and report["recipe"]["smoothing"]["sites"]
    assert all(0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0 for r in first["rows"])
    assert (tmp_path / "cache" / "results.json").is_file()
    assert read_examples(tmp_path / "cache" / "data" / "test.csv").labels is not None
    second = run_demo(settings)
    assert second["reused_finetuned"]
    # Deterministic for a seed: the same split, model and calibration give the same numbers (timings aside).
    strip = [{k: v for k, v in r.items() if k != "latency_ms"} for r in first["rows"]]
    assert strip == [{k: v for k, v in r.items() if k != "latency_ms"} for r in second["rows"]]
    assert "accuracy" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# input files
# --------------------------------------------------------------------------------------------------


def test_read_examples_from_txt_csv_and_jsonl(data):
    txt = read_examples(data["calib.txt"])
    assert txt.texts == [t for t, _ in SENTENCES] and txt.labels is None
    table = read_examples(data["labelled.csv"])
    assert table.labels[:2] == ["fresh", "rotten"]
    lines = read_examples(data["labelled.jsonl"], text_column="sentence", label_column="y")
    assert lines.texts[0] == "the film was good" and lines.labels[1] == "rotten"


def test_label_ids_take_names_or_integers():
    assert label_ids(["Fresh", "rotten"], LABELS["label2id"], 2, "f") == [1, 0]
    assert label_ids(["1", "0"], {}, 2, "f") == [1, 0]


# --------------------------------------------------------------------------------------------------
# errors: one line on stderr, exit code 2
# --------------------------------------------------------------------------------------------------


def _bad_calls(models, data, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    return {
        "missing argument": ["quantize", models["cls"], "--scheme", "ibert"],
        "bad choice": ["quantize", models["cls"], "--scheme", "int4", "--calib-data", data["calib.txt"], "--out", "o"],
        "bad number": ["bench", models["cls"], "--batch-sizes", "1,x"],
        "missing model dir": ["quantize", tmp_path / "nope", "--scheme", "ibert", "--calib-data", data["calib.txt"],
                              "--out", tmp_path / "o"],
        "missing data file": ["quantize", models["cls"], "--scheme", "ibert", "--calib-data", tmp_path / "nope.txt",
                              "--out", tmp_path / "o"],
        "file for a model dir": ["eval", data["calib.txt"], "--data", data["calib.txt"]],
        "unknown column": ["quantize", models["cls"], "--scheme", "qdq", "--calib-data", data["labelled.csv"],
                           "--text-column", "body", "--out", tmp_path / "o"],
        "method of the other scheme": ["quantize", models["cls"], "--scheme", "ibert", "--method", "entropy",
                                       "--calib-data", data["calib.txt"], "--out", tmp_path / "o"],
        "recipe of the other scheme": ["quantize", models["cls"], "--scheme", "ibert", "--recipe", "float-skip",
                                       "--calib-data", data["calib.txt"], "--out", tmp_path / "o"],
        "qat recipe of the other scheme": ["qat", models["cls"], "--train", data["labelled.csv"], "--eval",
                                           data["labelled.csv"], "--scheme", "ibert", "--recipe",
                                           "smooth-float-skip", "--out", tmp_path / "o"],
        "roberta as qdq": ["quantize", models["roberta"], "--scheme", "qdq", "--calib-data", data["calib.txt"],
                           "--out", tmp_path / "o"],
        "output exists": ["quantize", models["cls"], "--scheme", "ibert", "--calib-data", data["calib.txt"],
                          "--out", taken],
        "not a quantized dir": ["eval", models["cls"], "--data", data["calib.txt"]],
        "labels from a txt": ["qat", models["cls"], "--train", data["calib.txt"], "--eval", data["calib.txt"],
                              "--scheme", "qdq", "--out", tmp_path / "o"],
        "no mask to fill": ["predict", models["mlm"], "no mask here"],
    }


@pytest.mark.parametrize("case", ["missing argument", "bad choice", "bad number", "missing model dir",
                                  "missing data file", "file for a model dir", "unknown column",
                                  "method of the other scheme", "recipe of the other scheme",
                                  "qat recipe of the other scheme", "roberta as qdq", "output exists",
                                  "not a quantized dir", "labels from a txt", "no mask to fill"])
def test_usage_mistakes_exit_2_with_one_line(case, models, data, tmp_path, capsys):
    code, out, err = cli(*_bad_calls(models, data, tmp_path)[case], capsys=capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("intbert ") and ": error: " in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written half-way


def test_export_refuses_tensorrt_for_an_ibert_folder_with_exit_2(ibert_dir, tmp_path, capsys):
    code, _, err = cli("export", ibert_dir, "--onnx", tmp_path / "m.onnx", "--target", "tensorrt", capsys=capsys)
    assert code == 2 and "onnxruntime only" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_the_installed_entry_point_reports_a_missing_file_in_one_line(tmp_path):
    """The real process: python -m intbert.cli, as the console script runs it (exit code and stderr as a shell sees)."""
    proc = subprocess.run([sys.executable, "-m", "intbert.cli", "eval", str(tmp_path / "absent"), "--data", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"intbert eval: error: {tmp_path / 'absent'}: no such directory"]
