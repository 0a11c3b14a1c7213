"""I-BERT simulation speed: transformers RoBERTa / I-BERT (float and quant mode) vs intbert, side by side.

RoBERTa-base-shaped random models (vocab 50265, 12 layers, hidden 768), one batch of random ids, all
run in this process after a warm-up; prints the machine, then ms per forward and ratios. Issue target:
intbert quant mode <= 3x intbert float mode (transformers' quant mode is 7-14x its float mode).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import transformers
from transformers import RobertaConfig, RobertaModel
from transformers import IBertConfig as HFIBertConfig  # the baseline we measure against (benchmark only)
from transformers import IBertModel as HFIBertModel

import intbert
from _machine import cpu_name  # benchmarks/_machine.py (scripts run from this folder)

SHAPE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call."""
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf-quant", action="store_true", help="skip transformers' (slow) quant mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = dict(SHAPE, num_hidden_layers=args.layers)
    ids = torch.randint(3, shape["vocab_size"], (args.batch, args.seq))
    calib = [{"input_ids": torch.randint(3, shape["vocab_size"], (args.batch, args.seq))} for _ in range(2)]

    roberta = RobertaModel(RobertaConfig(**shape), add_pooling_layer=False).eval()
    ours_float = intbert.IBertModel(intbert.IBertConfig(**shape), add_pooling_layer=False).eval()
    ours_float.load_state_dict(roberta.state_dict(), strict=False)
    ours_quant = intbert.IBertModel(intbert.IBertConfig(quant_mode=True, **shape), add_pooling_layer=False)
    ours_quant.load_state_dict(ours_float.state_dict())
    intbert.calibrate(ours_quant, calib)
    ours_quant.eval()
    rows = [("transformers RobertaModel FP32", roberta)]
    if not args.skip_hf_quant:
        hf_quant = HFIBertModel(HFIBertConfig(quant_mode=True, **shape), add_pooling_layer=False)
        hf_quant.load_state_dict(ours_float.state_dict())
        hf_quant.train()  # transformers' I-BERT calibrates by train-mode forwards
        with torch.no_grad():
            for b in calib:
                hf_quant(**b)
        rows.append(("transformers IBertModel quant_mode", hf_quant.eval()))
    rows += [("intbert IBertModel float", ours_float), ("intbert IBertModel quant (simulation)", ours_quant)]

    print(f"device: cpu ({cpu_name()}), threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, python {platform.python_version()}")
    print(f"shape: layers {args.layers}, hidden 768, vocab 50265, batch {args.batch}, seq {args.seq}; "
          f"median of {args.repeats} after a warm-up")
    results = {name: timed(lambda m=model: m(input_ids=ids), args.repeats) for name, model in rows}
    base = results["intbert IBertModel float"]
    print(f"{'model':40s} {'ms':>10s} {'x intbert float':>16s}")
    for name, ms in results.items():
        print(f"{name:40s} {ms:10.1f} {ms / base:16.2f}")


if __name__ == "__main__":
    main()
