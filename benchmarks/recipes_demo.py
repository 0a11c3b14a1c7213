"""The quantization step of ``intbert demo`` with each named recipe: sentiment accuracy and agreement with FP32.

The demo's setting: all-MiniLM-L6-v2 fine-tuned as a Rotten Tomatoes sentiment classifier (2,000 snippets, one epoch,
lr 1e-4, batch 32, max length 64, word embeddings fixed, seed 0: the demo's fine-tune), quantized on its 256
calibration snippets (batches of 128), measured on its 500 test snippets. The splits are the demo's files
(``intbert demo`` writes them under ``--cache``; ``~/.cache/intbert/demo/data`` by default); the fine-tuned model is
trained once into ``--finetuned`` and reused.

    python benchmarks/recipes_demo.py [--data ~/.cache/intbert/demo/data] [--finetuned DIR] [qdqbert:reference ...]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertForSequenceClassification

import intbert
from intbert.cli.convert import bert_to_ibert_head
from intbert.data import minilm_path
from _machine import cpu_name, load  # benchmarks/_machine.py (scripts run from this folder)

LABELS = {"rotten": 0, "fresh": 1}


def read(folder: Path, name: str) -> list[dict]:
    with open(folder / f"{name}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fine_tune(out: Path, train: list[dict]) -> None:
    from intbert.cli.training import TrainSettings, train_classifier

    transformers.set_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, label2id=LABELS,
                                                          id2label={v: k for k, v in LABELS.items()})
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train_classifier(model, tokenizer, [r["text"] for r in train], [LABELS[r["label"]] for r in train],
                     TrainSettings(epochs=1.0, lr=1e-4, batch_size=32, max_length=64, seed=0, freeze_embeddings=True))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=["qdqbert:reference", "qdqbert:float-skip", "qdqbert:smooth",
                                                       "qdqbert:smooth-float-skip", "ibert:reference", "ibert:smooth"])
    parser.add_argument("--data", type=Path, default=Path("~/.cache/intbert/demo/data").expanduser())
    parser.add_argument("--finetuned", type=Path, default=Path("~/.cache/intbert/recipes-demo-finetuned").expanduser())
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("INTBERT_COMPILE", "0")  # I-BERT calibration: eager integer ops (no compile wait)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    print(f"device: cpu ({cpu_name()}), threads {args.threads}, torch {torch.__version__}, load {load()}")
    calib, test = read(args.data, "calibration"), read(args.data, "test")
    if not (args.finetuned / "config.json").is_file():
        fine_tune(args.finetuned, read(args.data, "train"))
    tokenizer = AutoTokenizer.from_pretrained(args.finetuned)

    def batches(rows, size):
        return [dict(tokenizer([r["text"] for r in rows[i:i + size]], padding=True, truncation=True, max_length=64,
                               return_tensors="pt")) for i in range(0, len(rows), size)]

    calib_batches, test_batches = batches(calib, 128), batches(test, 64)
    labels = torch.tensor([LABELS[r["label"]] for r in test])

    def predict(model):
        with torch.no_grad():
            return torch.cat([model(**b).logits.argmax(-1) for b in test_batches])

    float_model = BertForSequenceClassification.from_pretrained(args.finetuned, attn_implementation="eager").eval()
    float_pred = predict(float_model)
    float_accuracy = (float_pred == labels).float().mean().item()
    print(f"{len(calib)} calibration / {len(test)} test snippets; FP32 accuracy {float_accuracy:.4f}")
    print("\n| recipe | accuracy | vs FP32 (points) | agreement with FP32 | quantize s |")
    print("|---|---|---|---|---|")
    for spec in args.recipes:
        family, name = spec.split(":")
        if family == "qdqbert":
            model = intbert.QDQBertForSequenceClassification.from_pretrained(args.finetuned).eval()
        else:
            model = bert_to_ibert_head(BertForSequenceClassification.from_pretrained(args.finetuned), quant_mode=True)
            model.eval()
        start = time.perf_counter()
        intbert.apply_recipe(model, calib_batches, name)
        seconds = time.perf_counter() - start
        pred = predict(model)
        accuracy = (pred == labels).float().mean().item()
        delta = 100 * (accuracy - float_accuracy)
        print(f"| {family} {name} | {accuracy:.4f} | {delta:+.1f} | {(pred == float_pred).float().mean():.4f} "
              f"| {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
