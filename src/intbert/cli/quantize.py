"""``intbert quantize``: a float checkpoint -> a calibrated I-BERT (frozen to the integer engine) or QDQBERT folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import (add_batch_options, add_data_options, add_recipe_options, add_seed_option, check_method,
                        check_recipe, positive_int)
from .artifacts import FORMATS, weights_bytes
from .checkpoints import Checkpoint, inspect_checkpoint
from .console import megabytes, progress_enabled
from .errors import UsageError
from .paths import check_output_dir
from .textfile import Examples, read_examples

if TYPE_CHECKING:
    from torch import nn

#: With --method best, this share of the calibration examples (at most HELD_OUT_MAX) scores the methods.
HELD_OUT_SHARE, HELD_OUT_MAX = 0.25, 256
SCHEME_NAMES = {"ibert": "I-BERT", "qdq": "QDQBERT"}


@dataclass(frozen=True)
class Quantized:
    out: Path
    model: nn.Module  # what was saved: a FrozenIBert, or the calibrated simulation / QDQBERT model
    fmt: str
    recipe: str
    method: str
    report: dict


def check_quantize(ckpt: Checkpoint, scheme: str, recipe: str | None, method: str | None, examples: Examples,
                   out: Path, overwrite: bool) -> None:
    """Every refusal that needs no model: run before anything heavy is imported or loaded."""
    if ckpt.quantized:
        raise UsageError(f"{ckpt.path} was already quantized by intbert; quantize its float model "
                         f"{ckpt.report.get('source', {}).get('path', '')}".rstrip())
    check_recipe(scheme, recipe)
    check_method(scheme, method)
    if method == "best" and len(examples) < 2:
        raise UsageError("--method best needs at least 2 calibration examples (some score the methods)")
    check_output_dir(out, overwrite, ckpt.path)


def quantize_checkpoint(ckpt: Checkpoint, scheme: str, recipe: str | None, method: str | None, examples: Examples,
                        out: Path, *, batch_size: int = 32, max_length: int = 128, freeze: bool = True,
                        overwrite: bool = False, percentile: float = 99.99, seed: int = 0, progress: bool = False,
                        extra_report: dict | None = None) -> Quantized:
    """Quantize ``ckpt`` as ``scheme`` by ``recipe`` (None: the scheme's default), calibrating on ``examples`` with
    ``method`` (None: the recipe's), and write ``out``; the step behind the command and the demo."""
    check_quantize(ckpt, scheme, recipe, method, examples, out, overwrite)
    from . import deploy, ptq
    from .artifacts import write_model_dir
    from .inference import make_batches, model_max_length, run_model
    from .loading import build_quantized, load_float, load_tokenizer, set_seed
    from .report import build_report

    tokenizer = load_tokenizer(ckpt.path)
    set_seed(seed)
    model = build_quantized(ckpt, scheme)
    max_length = min(max_length, model_max_length(model.config))
    calib_examples, held_out = examples, None
    if method == "best":
        held = min(HELD_OUT_MAX, max(1, int(len(examples) * HELD_OUT_SHARE)))
        calib_examples = examples.head(len(examples) - held)
        held_batches = make_batches(tokenizer, examples.texts[len(examples) - held:], batch_size, max_length)
        reference = run_model(load_float(ckpt), held_batches, ckpt.head, progress=progress, desc="float reference")
        held_out = ptq.HeldOut(held_batches, ckpt.head, reference)
    batches = make_batches(tokenizer, calib_examples.texts, batch_size, max_length).batches
    done = ptq.quantize(model, scheme, recipe, method, batches, progress, percentile, held_out)
    fmt = "qdq" if scheme == "qdq" else ("frozen" if freeze else "simulation")
    calibration = {"file": str(examples.path.resolve()), "examples": len(calib_examples), "batch_size": batch_size,
                   "max_length": max_length}
    if done.method == "percentile":
        calibration["percentile"] = percentile
    extra = {**(extra_report or {}), "recipe": done.record}
    if done.scores is not None:
        extra["method_scores"] = done.scores
    report = build_report(scheme=scheme, fmt=fmt, method=done.method, model=model, source=ckpt,
                          calibration=calibration, extra=extra)
    saved = deploy.freeze(model) if fmt == "frozen" else model
    write_model_dir(out, saved, tokenizer, report, overwrite)
    return Quantized(out, saved, fmt, done.record["recipe"]["name"], done.method, report)


def add_parser(commands) -> None:
    p = commands.add_parser(
        "quantize", help="calibrate a BERT / RoBERTa / I-BERT checkpoint as I-BERT or QDQBERT and save it",
        description="Load a BERT, RoBERTa or I-BERT checkpoint directory (BERT converts to I-BERT), calibrate it on "
                    "FILE, freeze I-BERT to the integer engine, and write DIR: config, weights, tokenizer and "
                    "quantization_report.json (every range / amax and the method).")
    p.add_argument("model", metavar="MODEL", help="checkpoint directory (config.json, weights, tokenizer)")
    p.add_argument("--scheme", choices=tuple(SCHEME_NAMES), required=True,
                   help="ibert: integer-only I-BERT; qdq: QDQBERT (BERT with Q/DQ nodes)")
    p.add_argument("--calib-data", metavar="FILE", required=True,
                   help="calibration text: one example per line, or a .csv/.tsv/.jsonl column")
    add_recipe_options(p)
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default: 99.99)")
    p.add_argument("--out", metavar="DIR", required=True, type=Path, help="output directory")
    p.add_argument("--max-examples", type=positive_int, default=512, metavar="N",
                   help="calibrate on the first N examples (default: 512)")
    p.add_argument("--no-freeze", action="store_true",
                   help="I-BERT: save the calibrated simulation instead of the frozen integer model")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    add_seed_option(p)
    add_data_options(p, labels=False)
    add_batch_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.percentile <= 100:
        raise UsageError(f"--percentile must be in (0, 100], got {args.percentile}")
    ckpt = inspect_checkpoint(args.model)
    check_recipe(args.scheme, args.recipe)
    check_method(args.scheme, args.method)
    check_output_dir(args.out, args.overwrite, ckpt.path)
    examples = read_examples(args.calib_data, args.text_column).head(args.max_examples)
    check_quantize(ckpt, args.scheme, args.recipe, args.method, examples, args.out, args.overwrite)
    result = quantize_checkpoint(ckpt, args.scheme, args.recipe, args.method, examples, args.out,
                                 batch_size=args.batch_size, max_length=args.max_length, freeze=not args.no_freeze,
                                 overwrite=args.overwrite, percentile=args.percentile, seed=args.seed,
                                 progress=progress_enabled())
    ranges = result.report["ranges"]
    count = len(ranges.get("activations", ranges.get("quantizers", {})))
    print(f"wrote {result.out}: {FORMATS[result.fmt]}, recipe {result.recipe}, method {result.method}, "
          f"calibrated on {result.report['calibration']['examples']} examples from {examples.path}")
    if "method_scores" in result.report:
        for method, s in result.report["method_scores"].items():
            agree = f"agreement {s['agreement']:.4f}, " if "agreement" in s else ""
            print(f"  {method:<10} {agree}mean cosine {s['cosine_mean']:.4f}")
    print(f"  {count} {'activation ranges' if args.scheme == 'ibert' else 'quantizers'} in "
          f"{result.out / 'quantization_report.json'}; weights {megabytes(weights_bytes(result.out))} "
          f"(float: {megabytes(weights_bytes(ckpt.path))})")
    return 0
