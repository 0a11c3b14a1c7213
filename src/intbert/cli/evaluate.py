"""``intbert eval``: a quantized folder against its float model, side by side, on a data file.

With labels (a sequence classifier and a label column): accuracy of each, and their agreement. Without:
agreement of the argmax decisions (classifier, masked-LM and token heads) and the cosine of the outputs
(logits, or the mean-pooled embedding of a bare encoder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import add_batch_options, add_data_options, add_device_option, positive_int, resolve_device
from .artifacts import FORMATS, load_quantized, source_checkpoint
from .checkpoints import inspect_checkpoint
from .console import progress_enabled, table
from .errors import UsageError
from .paths import check_output_file
from .textfile import Examples, label_ids, read_examples

if TYPE_CHECKING:
    from torch import nn


def evaluate(reference: nn.Module | None, quantized: nn.Module, tokenizer, examples: Examples, head: str, *,
             batch_size: int = 32, max_length: int = 128, device: str = "cpu", progress: bool = False) -> dict:
    """Metrics of ``quantized`` (and of the float ``reference``, when given) on ``examples``.

    Keys: examples, labelled, accuracy_float / accuracy_quantized (labelled classifiers), agreement,
    cosine_mean, cosine_min (when there is a reference).
    """
    from .inference import accuracy, compare, make_batches, model_max_length, run_model

    max_length = min(max_length, model_max_length(quantized.config))
    data = make_batches(tokenizer, examples.texts, batch_size, max_length)
    labelled = examples.labels is not None and head == "sequence-classification"
    labels = None
    if labelled:
        config = quantized.config
        labels = label_ids(examples.labels, config.label2id, config.num_labels, str(examples.path))
    out = run_model(quantized, data, head, device, progress, "quantized")
    result = {"examples": len(examples), "labelled": labelled}
    if labelled:
        result["accuracy_quantized"] = accuracy(out, labels)
    if reference is not None:
        ref = run_model(reference, data, head, device, progress, "float")
        if labelled:
            result["accuracy_float"] = accuracy(ref, labels)
        result.update(compare(ref, out, head))
    return result


def add_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="accuracy or agreement of a quantized folder vs its float model",
        description="Run the quantized model in DIR and its float source on FILE. Labelled data (a sequence "
                    "classifier and a label column): accuracy of both and their agreement; unlabelled: argmax "
                    "agreement and cosine of the outputs.")
    p.add_argument("dir", metavar="DIR", help="a folder written by intbert quantize or intbert qat")
    p.add_argument("--data", metavar="FILE", required=True, help="examples: text lines, or a .csv/.tsv/.jsonl file")
    p.add_argument("--float", dest="float_model", metavar="MODEL",
                   help="float checkpoint to compare with (default: the source named in DIR's report); it must hold "
                        "the weights DIR was quantized from")
    p.add_argument("--allow-other-float", action="store_true",
                   help="compare with a float model whose weights are not DIR's source (a loud warning instead of "
                        "an error)")
    p.add_argument("--max-examples", type=positive_int, metavar="N", help="use the first N examples")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the metrics as JSON")
    add_data_options(p)
    add_batch_options(p)
    add_device_option(p)
    p.set_defaults(run=run)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    ckpt = inspect_checkpoint(args.dir)
    if not ckpt.quantized:
        raise UsageError(f"{ckpt.path} has no quantization_report.json: make it with intbert quantize or intbert qat")
    if args.json is not None:
        check_output_file(args.json, "--json")
    examples = read_examples(args.data, args.text_column, args.label_column)
    if args.max_examples:
        examples = examples.head(args.max_examples)
    device = resolve_device(args.device)
    source = source_checkpoint(ckpt, args.float_model, args.allow_other_float)
    # A qat folder trained a new head on a bare encoder: its source has no matching float head to compare.
    comparable = source.head == ckpt.head
    from .loading import load_float, load_tokenizer

    reference = load_float(source, ckpt.head, new_head="refuse").to(device) if comparable else None
    quantized = load_quantized(ckpt, device)
    metrics = evaluate(reference, quantized, load_tokenizer(ckpt.path), examples, ckpt.head,
                       batch_size=args.batch_size, max_length=args.max_length, device=device,
                       progress=progress_enabled())
    label = f"INT8 ({FORMATS[ckpt.report['format']]})"
    rows = [["metric", "FP32", label]]
    if metrics["labelled"]:
        rows.append(["accuracy", _fmt(metrics.get("accuracy_float")), _fmt(metrics["accuracy_quantized"])])
    if "agreement" in metrics:
        rows.append(["agreement with FP32", "1.0000", _fmt(metrics["agreement"])])
    if "cosine_mean" in metrics:
        rows.append(["cosine to FP32 (mean)", "1.0000", _fmt(metrics["cosine_mean"])])
        rows.append(["cosine to FP32 (min)", "1.0000", _fmt(metrics["cosine_min"])])
    note = ("labelled" if metrics["labelled"] else "unlabelled" if examples.labels is None
            else "labels unused by this head")
    print(f"{ckpt.path}: {metrics['examples']} examples from {examples.path} ({note}), head {ckpt.head}")
    if reference is None:
        print(f"  no float reference: {source.path} has no {ckpt.head} head (pass --float MODEL)")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return 0
