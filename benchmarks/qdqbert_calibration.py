"""QDQBERT post-training calibration on all-MiniLM-L6-v2: sentence-embedding fidelity and calibration time per method.

Calibrates a fresh QDQBertModel on 256 Rotten Tomatoes snippets with each method (max, percentile 99.99, mse,
entropy; one full calibration pass each, timed), then embeds 500 other snippets (mean pooling, as
sentence-transformers does for this model) and compares each embedding with the float BertModel's by cosine.

    python benchmarks/qdqbert_calibration.py [--calib 256] [--eval 500] [--threads N]

Prints the device, CPU, threads and torch version, then one row per method.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import transformers
from transformers import AutoTokenizer, BertModel

from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.models.qdqbert import QDQBertModel, calibrate_qdq
from _machine import cpu_name  # benchmarks/_machine.py (scripts run from this folder)

METHODS = ("max", "percentile", "mse", "entropy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*dynamic mode.*")

    print(f"device: cpu ({cpu_name()}), threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    # Sorted by length so that batches carry little padding; the order is deterministic.
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(args.calib), key=len))
    evaluation = tokenized_batches(
        tokenizer, sorted(rotten_tomatoes_sentences(args.eval, offset=args.calib), key=len), batch_size=50
    )
    tokens = sum(int(b["attention_mask"].sum()) for b in calib)
    print(f"model: all-MiniLM-L6-v2 (6 layers, hidden 384), calibration {args.calib} snippets ({tokens} tokens), "
          f"evaluation {args.eval} other snippets")

    float_model = BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    start = time.perf_counter()
    reference = mean_pooled_embeddings(float_model, evaluation)
    float_s = time.perf_counter() - start

    rows = []
    for method in METHODS:
        model = QDQBertModel.from_pretrained(minilm_path()).eval()
        start = time.perf_counter()
        calibrate_qdq(model, calib, method=method, percentile=args.percentile, progress=False)
        calib_s = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = mean_pooled_embeddings(model, evaluation)
        eval_s = time.perf_counter() - start
        cos = torch.nn.functional.cosine_similarity(embeddings, reference)
        rows.append((method, cos.min().item(), cos.mean().item(), cos.median().item(), calib_s, eval_s))

    print(f"\nfloat BertModel embedding pass: {float_s:.2f} s")
    print(f"{'method':<12}{'cos min':>9}{'cos mean':>10}{'cos median':>12}{'calib s':>9}{'QDQ eval s':>12}{'eval ratio':>12}")
    for method, lo, mean, median, calib_s, eval_s in rows:
        name = f"percentile {args.percentile:g}" if method == "percentile" else method
        print(f"{name:<12}{lo:>9.4f}{mean:>10.4f}{median:>12.4f}{calib_s:>9.2f}{eval_s:>12.2f}{eval_s / float_s:>11.2f}x")
    best = max(rows, key=lambda r: r[2])
    print(f"\nbest mean cosine: {best[0]} {best[2]:.4f} (target >= 0.99)")


if __name__ == "__main__":
    main()
