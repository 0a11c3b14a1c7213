"""QAT by distillation (intbert.distill) after each named recipe, on all-MiniLM-L6-v2 and Rotten Tomatoes snippets.

Each recipe quantizes a fresh model (``intbert.apply_recipe`` on the first 256 snippets), which is then trained to
reproduce the float BertModel's hidden states (every layer, real tokens) on ``--train`` other snippets (offset 756,
disjoint from the calibration set and from the 500 evaluation snippets at offset 256). Mean-pooled embeddings of the
evaluation snippets are compared with float by cosine, before and after.

    python benchmarks/distillation.py [--recipes qdqbert:reference ibert:smooth ...] [--train 2048] [--epochs 1]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import transformers
from transformers import AutoTokenizer, BertModel

import intbert
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches
from intbert.models.ibert.convert import bert_to_ibert
from _machine import cpu_name, load  # benchmarks/_machine.py (scripts run from this folder)

TRAIN_OFFSET = 756


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=["qdqbert:reference", "qdqbert:smooth",
                                                         "qdqbert:smooth-float-skip", "ibert:smooth"])
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    print(f"device: cpu ({cpu_name()}), threads {args.threads}, torch {torch.__version__}, load {load()}")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    calib = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(256), key=len))
    evaluation = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(args.eval, offset=256), key=len),
                                   batch_size=32)
    train = tokenized_batches(tokenizer, sorted(rotten_tomatoes_sentences(args.train, offset=TRAIN_OFFSET), key=len),
                              batch_size=32)
    teacher = BertModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()
    reference = mean_pooled_embeddings(teacher, evaluation)
    print(f"calibration 256 snippets, distillation {args.train} snippets x {args.epochs} epoch(s) (batches of 32, "
          f"lr {args.lr}), evaluation {args.eval} snippets\n")
    print("| recipe | PTQ cos mean / min | + distillation cos mean / min | steps | loss first -> last | train s |")
    print("|---|---|---|---|---|---|")
    for spec in args.recipes:
        family, name = spec.split(":")
        model = (intbert.QDQBertModel.from_pretrained(minilm_path()) if family == "qdqbert"
                 else bert_to_ibert(minilm_path(), quant_mode=True)).eval()
        intbert.apply_recipe(model, calib, name)
        before = torch.nn.functional.cosine_similarity(mean_pooled_embeddings(model, evaluation), reference)
        start = time.perf_counter()
        stats = intbert.distill(model, teacher, train, epochs=args.epochs, lr=args.lr)
        seconds = time.perf_counter() - start
        after = torch.nn.functional.cosine_similarity(mean_pooled_embeddings(model, evaluation), reference)
        print(f"| {family} {name} | {before.mean():.4f} / {before.min():.4f} | {after.mean():.4f} / {after.min():.4f} "
              f"| {stats['steps']} | {stats['loss_first']:.4g} -> {stats['loss_last']:.4g} | {seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
