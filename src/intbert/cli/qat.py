"""``intbert qat``: quantization-aware fine-tuning of a sequence classifier, saved calibrated (I-BERT: frozen).

The quantized model is quantized by a recipe first (QAT starts from PTQ ranges, as the reference recipes do), then
trained on the labelled training file, with transformers' Trainer on the labels or (``--distill``) by
``intbert.distill`` from the float model, then measured on the evaluation file.
For several GPUs, launch it as ``torchrun --nproc_per_node N -m intbert.cli qat ...``: Trainer spreads the
batches and only the main process writes DIR (not with ``--distill``, which runs in one process).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .arguments import (add_batch_options, add_data_options, add_recipe_options, add_seed_option, check_method,
                        check_recipe, positive_float, positive_int)
from .artifacts import FORMATS
from .checkpoints import inspect_checkpoint
from .console import progress_enabled, table
from .errors import UsageError
from .paths import check_output_dir
from .quantize import SCHEME_NAMES
from .textfile import label_ids, label_names, read_examples

HEAD = "sequence-classification"
#: Default peak learning rates: Trainer on the labels, and distillation (5e-5 measured best of 1e-5..1e-4 for
#: MiniLM on Rotten Tomatoes, benchmarks/RESULTS.md "QAT with distillation").
TRAIN_LR, DISTILL_LR = 2e-5, 5e-5


def add_parser(commands) -> None:
    p = commands.add_parser(
        "qat", help="quantization-aware fine-tuning of a sequence classifier",
        description="Calibrate MODEL as I-BERT or QDQBERT with a sequence-classification head (a new one when MODEL "
                    "has none), fine-tune it with quantization in the loop on --train, measure it on --eval against "
                    "the float model, and write DIR like intbert quantize (I-BERT frozen to the integer engine).")
    p.add_argument("model", metavar="MODEL", help="BERT / RoBERTa / I-BERT checkpoint directory")
    p.add_argument("--train", metavar="FILE", required=True, help="labelled training examples (.csv/.tsv/.jsonl)")
    p.add_argument("--eval", dest="eval_file", metavar="FILE", required=True, help="labelled evaluation examples")
    p.add_argument("--scheme", choices=tuple(SCHEME_NAMES), required=True, help="ibert or qdq")
    add_recipe_options(p, best=False)
    p.add_argument("--distill", action="store_true",
                   help="train by distillation from the float model (intbert.distill: hidden states and logits of "
                        "the float classifier; with a new head, hidden states and the labels) instead of on the "
                        "labels alone")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="output directory")
    p.add_argument("--epochs", type=positive_float, default=1.0, help="training epochs (default: 1)")
    p.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N steps (overrides --epochs)")
    p.add_argument("--lr", type=positive_float,
                   help=f"peak learning rate (default: {TRAIN_LR:g}; {DISTILL_LR:g} with --distill)")
    p.add_argument("--calib-examples", type=positive_int, default=256, metavar="N",
                   help="training examples to calibrate on first (default: 256)")
    p.add_argument("--no-freeze", action="store_true", help="I-BERT: save the simulation, not the frozen model")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    add_seed_option(p)
    add_data_options(p)
    add_batch_options(p, batch_size=16)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ckpt = inspect_checkpoint(args.model)
    if ckpt.quantized:
        raise UsageError(f"{ckpt.path} was already quantized by intbert; start QAT from its float model")
    check_recipe(args.scheme, args.recipe)
    check_method(args.scheme, args.method)
    if args.distill and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--distill runs in one process; launch it without torchrun")
    check_output_dir(args.out, args.overwrite, ckpt.path)
    train = read_examples(args.train, args.text_column, args.label_column, require_labels=True)
    held = read_examples(args.eval_file, args.text_column, args.label_column, require_labels=True)
    if ckpt.head == HEAD:  # the model's own labels: check both files now, not after training
        id2label = ckpt.config.get("id2label") or {}
        label2id = ckpt.config.get("label2id") or {v: int(k) for k, v in id2label.items()}
        for examples in (train, held):
            label_ids(examples.labels, label2id, len(id2label) or 2, str(examples.path))
    from . import deploy, ptq
    from .artifacts import write_model_dir
    from .evaluate import evaluate
    from .inference import make_batches, model_max_length
    from .loading import build_quantized, load_float, load_tokenizer, set_seed
    from .report import build_report
    from .training import TrainSettings, train_classifier

    tokenizer = load_tokenizer(ckpt.path)
    overrides = {}
    if ckpt.head != HEAD:  # a new head: its labels come from the training file
        id2label = label_names(train.labels)
        overrides = {"num_labels": len(id2label), "id2label": id2label,
                     "label2id": {v: k for k, v in id2label.items()}}
    set_seed(args.seed)
    model = build_quantized(ckpt, args.scheme, HEAD, **overrides)
    config = model.config
    labels = label_ids(train.labels, config.label2id, config.num_labels, str(train.path))
    label_ids(held.labels, config.label2id, config.num_labels, str(held.path))  # fail now, not after training
    max_length = min(args.max_length, model_max_length(config))
    progress = progress_enabled()
    calib = make_batches(tokenizer, train.texts[: args.calib_examples], args.batch_size, max_length).batches
    ptq_done = ptq.quantize(model, args.scheme, args.recipe, args.method, calib, progress)
    reference = load_float(ckpt) if ckpt.head == HEAD else None
    lr = args.lr or (DISTILL_LR if args.distill else TRAIN_LR)
    if args.distill:
        trained = distill_classifier(model, ckpt, reference, tokenizer, train.texts, labels, args, lr, max_length,
                                     progress)
    else:
        settings = TrainSettings(epochs=args.epochs, lr=lr, batch_size=args.batch_size, max_length=max_length,
                                 max_steps=args.max_steps or -1, seed=args.seed)
        trained = train_classifier(model, tokenizer, train.texts, labels, settings, progress)
        if not trained["main_process"]:
            return 0  # under torchrun, the main process evaluates and writes DIR
    model.to("cpu")  # Trainer may have moved it to a GPU; freezing, evaluating and saving happen on the CPU
    fmt = "qdq" if args.scheme == "qdq" else ("simulation" if args.no_freeze else "frozen")
    saved = deploy.freeze(model) if fmt == "frozen" else model
    metrics = evaluate(reference, saved, tokenizer, held, HEAD, batch_size=args.batch_size, max_length=max_length,
                       progress=progress)
    qat = {"train_file": str(train.path.resolve()), "train_examples": len(train), "epochs": args.epochs,
           "max_steps": args.max_steps, "lr": lr, "batch_size": args.batch_size, "seed": args.seed,
           "distill": args.distill, "steps": trained["steps"], "training_loss": trained["training_loss"]}
    calibration = {"file": str(train.path.resolve()), "examples": min(len(train), args.calib_examples),
                   "batch_size": args.batch_size, "max_length": max_length}
    report = build_report(scheme=args.scheme, fmt=fmt, method=ptq_done.method, model=model, source=ckpt,
                          calibration=calibration,
                          extra={"recipe": ptq_done.record, "qat": qat,
                                 "eval": {"file": str(held.path.resolve()), **metrics}})
    write_model_dir(args.out, saved, tokenizer, report, args.overwrite)
    how = "QAT by distillation" if args.distill else "QAT"
    print(f"wrote {args.out}: {FORMATS[fmt]}, recipe {ptq_done.record['recipe']['name']}, {how} {trained['steps']} "
          f"steps on {len(train)} examples "
          f"(final training loss {trained['training_loss']:.4f})")
    rows = [["on " + held.path.name, "FP32 (" + ckpt.path.name + ")", "INT8 after QAT"]]
    float_acc = f"{metrics['accuracy_float']:.4f}" if "accuracy_float" in metrics else "- (no trained head)"
    rows.append(["accuracy", float_acc, f"{metrics['accuracy_quantized']:.4f}"])
    print(table(rows))
    return 0


def distill_classifier(model, ckpt, teacher, tokenizer, texts: list[str], labels: list[int], args, lr: float,
                       max_length: int, progress: bool) -> dict:
    """``intbert.distill`` on the labelled training file, batched like the calibration. With the checkpoint's own
    classifier as ``teacher``, its logits and hidden states are the targets (the labels only shaped it); with a
    new head there is no teacher classifier: the float encoder's hidden states and the labels are."""
    import math

    import torch

    import intbert

    from .inference import make_batches
    from .loading import load_float

    if teacher is None:
        teacher = load_float(ckpt, "base")
    data = make_batches(tokenizer, texts, args.batch_size, max_length)
    ordered = [labels[i] for i in data.order]  # make_batches sorts by length: its batches follow data.order
    batches = []
    for start, batch in zip(range(0, len(ordered), args.batch_size), data.batches):
        batches.append({**batch, "labels": torch.tensor(ordered[start : start + args.batch_size])})
    epochs = args.epochs if args.max_steps is None else args.max_steps / len(batches)
    stats = intbert.distill(model, teacher, batches, epochs=epochs, lr=lr, seed=args.seed,
                            label_weight=0.0 if ckpt.head == HEAD else 1.0, progress=progress)
    if not math.isfinite(stats["loss_last"]):
        raise UsageError(f"distillation diverged (loss {stats['loss_last']}); lower --lr (it was {lr})")
    return {"steps": stats["steps"], "training_loss": stats["loss_last"], "loss_first": stats["loss_first"]}
