"""Fine-tuning a sequence classifier with transformers' Trainer: the demo's float fine-tune and ``intbert qat``.

Trainer is used, not a loop of our own, because it brings what a real run needs for free: several GPUs
under ``torchrun`` / ``accelerate launch``, mixed precision, gradient accumulation, a length-grouped
sampler. Quantized models train like any other: I-BERT's QuantAct ranges follow their EMA in train mode
and its integer ops pass straight-through gradients; QDQBERT's fake quantizers keep their calibrated amax.
Nothing is written by Trainer itself (no checkpoints, no logs): the caller saves the result.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from .errors import Unavailable, UsageError


@dataclass(frozen=True)
class TrainSettings:
    """epochs: passes over the data (``max_steps`` > 0 overrides it); lr: peak learning rate of a linear decay
    after ``warmup`` (a fraction of the steps); freeze_embeddings: keep the word embeddings fixed (on a
    small task they barely move, and skipping their 12M-parameter AdamW update makes a CPU step faster)."""

    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    max_steps: int = -1
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    freeze_embeddings: bool = False


def _trainer_classes():
    try:
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
        from transformers.trainer_callback import PrinterCallback

        TrainingArguments(output_dir=tempfile.gettempdir(), report_to="none")  # fails early without accelerate
    except ImportError as err:
        raise Unavailable(f"training needs transformers' Trainer and accelerate ({str(err).splitlines()[0]}); "
                          "pip install 'intbert[demo]'") from None
    return DataCollatorWithPadding, Trainer, TrainingArguments, PrinterCallback


def tokenize_labelled(tokenizer, texts: list[str], labels: list[int], max_length: int) -> list[dict]:
    """One unpadded feature dict per example (the collator pads each batch to its own longest)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    empty = [t for t, ids in zip(texts, encoded["input_ids"]) if not ids]
    if empty:
        raise UsageError(f"{len(empty)} training example(s) have no tokens after tokenization, e.g. {empty[0]!r}; "
                         "remove them from the data")
    return [{**{k: encoded[k][i] for k in encoded}, "labels": labels[i]} for i in range(len(texts))]


def train_classifier(model: nn.Module, tokenizer, texts: list[str], labels: list[int], settings: TrainSettings,
                     progress: bool = False) -> dict:
    """Train ``model`` (a sequence classifier, float or quantized) in place; returns Trainer's train metrics
    with ``training_loss`` and ``steps``. The model is left in eval mode."""
    DataCollatorWithPadding, Trainer, TrainingArguments, PrinterCallback = _trainer_classes()
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    features = tokenize_labelled(tokenizer, texts, labels, settings.max_length)
    with tempfile.TemporaryDirectory(prefix="intbert-train-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr,
            weight_decay=settings.weight_decay,
            warmup_steps=settings.warmup,  # a float below 1 is a fraction of the steps
            lr_scheduler_type="linear",
            train_sampling_strategy="group_by_length",  # batches of similar length pad less
            seed=settings.seed,
            data_seed=settings.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=not progress,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),  # pinning without a GPU only warns
        )
        trainer = Trainer(model=model, args=args, train_dataset=features,
                          data_collator=DataCollatorWithPadding(tokenizer))
        trainer.remove_callback(PrinterCallback)  # it prints a metrics dict to stdout
        result = trainer.train()
        primary = trainer.is_world_process_zero()
    if settings.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(True)
    model.eval()
    return {"training_loss": float(result.training_loss), "steps": int(result.global_step),
            "main_process": primary, **{k: float(v) for k, v in result.metrics.items()
                                        if isinstance(v, (int, float))}}
