"""all-MiniLM-L6-v2 as I-BERT on real sentences: the frozen engine vs float, side by side in one process.

Calibrates the converted model on 256 Rotten Tomatoes snippets (mse ranges), freezes it, and then
embeds N other snippets in batches of 32 padded to each batch's longest sentence (dynamic lengths):
transformers BertModel FP32, intbert simulation, intbert engine. Checks that the engine's sentence
embeddings equal the simulation's bit for bit and prints total time per model and cosine to float.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoTokenizer, BertModel

import intbert
from intbert.data import mean_pooled_embeddings, minilm_path, rotten_tomatoes_sentences, tokenized_batches

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="cpu: process CPU time (robust on a shared machine; use with --threads 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    tok = AutoTokenizer.from_pretrained(minilm_path())
    float_bert = BertModel.from_pretrained(minilm_path()).eval()
    sim = intbert.bert_to_ibert(minilm_path(), quant_mode=True)
    calib = tokenized_batches(tok, sorted(rotten_tomatoes_sentences(256), key=len), batch_size=64)
    intbert.calibrate(sim, calib)
    sim.eval()
    frozen = intbert.freeze(sim)
    batches = tokenized_batches(tok, rotten_tomatoes_sentences(args.sentences, offset=256), batch_size=args.batch)
    lengths = [b["input_ids"].shape[1] for b in batches]

    def run(model):
        mean_pooled_embeddings(model, batches[:2])  # warm-up (compiles the integer kernels)
        start = clock()
        emb = mean_pooled_embeddings(model, batches)
        return emb, 1000 * (clock() - start)

    with torch.inference_mode():
        ref, t_float = run(float_bert)
        emb_sim, t_sim = run(sim)
        emb_eng, t_eng = run(frozen)
    assert torch.equal(emb_eng, emb_sim), "engine and simulation embeddings differ"
    cos = torch.nn.functional.cosine_similarity(emb_eng, ref)
    print(f"{args.sentences} snippets, batch {args.batch}, padded lengths {min(lengths)}..{max(lengths)} "
          f"(mean {sum(lengths) / len(lengths):.1f}); threads {args.threads}, {args.clock} time; "
          f"engine backend {frozen.encoder.backend().name}")
    print(f"engine embeddings == simulation embeddings: True; cosine to float: mean {cos.mean():.4f}, "
          f"min {cos.min():.4f}\n")
    print("| model | total ms | ms / batch | speedup vs FP32 |\n|---|---|---|---|")
    for name, t in (("transformers BertModel FP32", t_float), ("intbert simulation", t_sim),
                    ("intbert engine", t_eng)):
        print(f"| {name} | {t:.0f} | {t / len(batches):.1f} | {t_float / t:.2f}x |")


if __name__ == "__main__":
    main()
