"""The integer engine on an NVIDIA GPU, side by side with the float baselines, in one process (issue 14 §3).

RoBERTa-base-shaped random model (vocab 50265, 12 layers, hidden 768, 12 heads, fixed seed), S = 128,
B in {1, 8, 32, 128} (``--quick``: {1, 32}), every row on the same random ids without padding. Rows:

* transformers RobertaModel FP32 eager (the reference of the ratios), FP16 eager, FP16 SDPA, and FP16 SDPA under
  ``torch.compile(mode="reduce-overhead")`` (Inductor's kernels replayed from CUDA graphs)
* transformers IBertModel quant mode (float simulation of the integers; slow: timed ``--slow-runs`` times)
* intbert simulation (calibrated quant-mode IBertModel; slow likewise)
* intbert engine, ``cuda`` backend: fused Triton kernels eager; the same replayed from CUDA graphs
  (``GraphedEncoder``); and the ``torch`` kernel set (``torch._int_mm`` + compiled elementwise) eager

The engine's integers are checked before timing: Triton kernels, CUDA graphs and the torch kernel set give the same
int8 hidden states, and the engine's output equals the simulation's (printed; a mismatch is an error).

Timing: CUDA events around each call after ``--warmup`` calls, median of ``--repeats``; rows take turns per batch
size. Printed: GPU, driver/CUDA, torch/triton/transformers versions, then markdown tables of ms and of ratios vs
FP32 eager and vs FP16 compile + CUDA graphs. ``--profile``: torch.profiler of the eager engine at B = 32
(the top kernels by GPU time), where the time goes when the engine falls short.

    python benchmarks/gpu_engine.py --quick        # ~3-5 min on an H100/H200 (compiles included)
    python benchmarks/gpu_engine.py                # all four batch sizes
    python benchmarks/gpu_engine.py --profile      # the profile only

Issue targets (goals, never test assertions): engine >= 3x FP32 eager and >= 1.2x FP16 eager at B = 32, then
>= 1.0x FP16 compile + CUDA graphs at B >= 8. A missing CUDA device is an error (exit 2), not a skipped run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

SHAPE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
SEQ = 128
FP32 = "transformers FP32 eager"
COMPILED = "transformers FP16 SDPA compile + CUDA graphs"


def require_cuda() -> None:
    if not torch.cuda.is_available():
        print(f"benchmarks/gpu_engine.py needs a CUDA device: torch {torch.__version__} sees none "
              f"(torch.version.cuda = {torch.version.cuda}). Run it on a GPU machine with a CUDA build of torch.",
              file=sys.stderr)
        raise SystemExit(2)


def versions() -> str:
    import importlib.metadata as md

    out = [f"torch {torch.__version__} (CUDA {torch.version.cuda})"]
    for name in ("triton", "transformers", "intbert"):
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def ids_batch(B: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, SHAPE["vocab_size"], (B, SEQ), generator=g)
    return {k: v.cuda() for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                     "token_type_ids": torch.zeros_like(ids)}.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Rows: name -> run(batch) -> float (B, S, H)


def float_rows(state: dict) -> dict:
    from transformers import RobertaConfig, RobertaModel

    def roberta(dtype, attn):
        m = RobertaModel(RobertaConfig(**SHAPE, attn_implementation=attn), add_pooling_layer=False)
        m.load_state_dict(state)
        return m.to("cuda", dtype).eval()

    fp32, fp16, sdpa = roberta(torch.float32, "eager"), roberta(torch.float16, "eager"), roberta(torch.float16, "sdpa")
    compiled = torch.compile(roberta(torch.float16, "sdpa"), mode="reduce-overhead", dynamic=False)

    def call(model):
        return lambda b: model(**b).last_hidden_state

    return {FP32: call(fp32), "transformers FP16 eager": call(fp16), "transformers FP16 SDPA": call(sdpa),
            COMPILED: call(compiled)}


def hf_ibert_row(state: dict, calib: list):
    from transformers import IBertConfig as HFIBertConfig  # the baseline we measure against (benchmark only)
    from transformers import IBertModel as HFIBertModel

    m = HFIBertModel(HFIBertConfig(quant_mode=True, **SHAPE), add_pooling_layer=False)
    m.load_state_dict(state, strict=False)
    m = m.cuda().train()  # transformers' I-BERT calibrates by train-mode forwards
    with torch.no_grad():
        for b in calib:
            m(input_ids=b["input_ids"])
    m.eval()
    return lambda b: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state


def intbert_rows(state: dict, calib: list):
    """The simulation and the engine rows, plus the integer-exactness checks run before any timing."""
    import intbert
    from intbert.engine.backends.cuda import KERNELS_ENV
    from intbert.engine.backends.cuda_graphs import GraphedEncoder

    sim = intbert.IBertModel(intbert.IBertConfig(quant_mode=True, **SHAPE), add_pooling_layer=False)
    sim.load_state_dict(state, strict=False)
    sim = sim.cuda()
    intbert.calibrate(sim, calib, method="minmax")
    sim.eval()
    env = os.environ.pop(KERNELS_ENV, None)
    try:
        fused = intbert.freeze(sim, backend="cuda")
        os.environ[KERNELS_ENV] = "torch"
        torch_kernels = intbert.freeze(sim, backend="cuda")
        torch_kernels.encoder.backend()  # resolved now, with the variable set
    finally:
        os.environ.pop(KERNELS_ENV, None)
        if env is not None:
            os.environ[KERNELS_ENV] = env
    print(f"engine kernels: fused row {fused.encoder.backend().kernels}, fallback row "
          f"{torch_kernels.encoder.backend().kernels}")
    graphed = GraphedEncoder(fused.encoder, batches=(1, 8, 32, 128), lengths=(SEQ,))
    scale = fused.encoder.layer[-1].output_out.scale

    def graphs(b):
        return graphed.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"]).to(torch.float32) * scale

    def check(B: int) -> None:
        b = ids_batch(B, seed=99)
        args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
        q = fused.encoder.encode(*args)[0]
        q_torch = torch_kernels.encoder.encode(*args)[0]
        q_graph = graphed.encode(*args)
        with torch.no_grad():
            same_sim = torch.equal(fused(**b).last_hidden_state, sim(**b).last_hidden_state)
        ok = torch.equal(q, q_torch) and torch.equal(q, q_graph) and same_sim
        print(f"B={B}: triton == torch kernels: {torch.equal(q, q_torch)}, == CUDA graphs: {torch.equal(q, q_graph)}, "
              f"engine == simulation: {same_sim}")
        if not ok:
            raise SystemExit(f"the engine's integers differ (kernel sets, graphs or simulation) at B={B}: "
                             "not timing a wrong answer")

    rows = {"intbert simulation": lambda b: sim(**b).last_hidden_state,
            "intbert engine (Triton, eager)": lambda b: fused(**b).last_hidden_state,
            "intbert engine (Triton, CUDA graphs)": graphs,
            "intbert engine (torch._int_mm, eager)": lambda b: torch_kernels(**b).last_hidden_state}
    return rows, check, fused


# ----------------------------------------------------------------------------------------------------------------------


def time_ms(fn, batch: dict, warmup: int, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(batch)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def profile(fused, B: int = 32, top: int = 20) -> None:
    """Top kernels of one eager engine forward at B (after warm-up): where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profile

    b = ids_batch(B)
    with torch.inference_mode():
        for _ in range(3):
            fused(**b)
        torch.cuda.synchronize()
        with run_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fused(**b)
            torch.cuda.synchronize()
    print(f"\n## Profile: intbert engine (Triton, eager), B={B}, S={SEQ}, 5 forwards\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top))


def table(results: dict, batches: list[int]) -> None:
    head = "| row | " + " | ".join(f"B={B} ms" for B in batches) + " |"
    print("\n" + head + "\n|" + "---|" * (len(batches) + 1))
    for name, per_b in results.items():
        print(f"| {name} | " + " | ".join(f"{per_b[B]:.2f}" if B in per_b else "-" for B in batches) + " |")
    for base in (FP32, "transformers FP16 eager", COMPILED):
        if base not in results:
            continue
        print(f"\nSpeed-up vs {base} (its ms / row's ms; > 1 is faster)\n")
        print("| row | " + " | ".join(f"B={B}" for B in batches) + " |\n|" + "---|" * (len(batches) + 1))
        for name, per_b in results.items():
            cells = [f"{results[base][B] / per_b[B]:.2f}x" if B in per_b and B in results[base] else "-"
                     for B in batches]
            print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {1, 32}, fewer repeats")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--slow-runs", type=int, default=3, help="repeats of the two simulation rows")
    parser.add_argument("--no-simulations", action="store_true", help="skip the two slow simulation rows")
    parser.add_argument("--profile", action="store_true", help="only profile the engine at B=32")
    args = parser.parse_args()
    require_cuda()
    started = time.perf_counter()
    batches = args.batches or ([1, 32] if args.quick else [1, 8, 32, 128])
    repeats = args.repeats or (10 if args.quick else 30)
    print(f"device: {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()}), "
          f"{versions()}")
    print(f"shape: RoBERTa-base (12 layers, hidden 768, 12 heads, intermediate 3072), S={SEQ}, B={batches}, "
          f"median of {repeats} after {args.warmup} warm-up calls (simulations: {args.slow_runs})")
    torch.manual_seed(0)
    from transformers import RobertaConfig, RobertaModel

    state = RobertaModel(RobertaConfig(**SHAPE), add_pooling_layer=False).state_dict()
    calib = [ids_batch(8, seed=s) for s in (1, 2)]
    rows, check, fused = intbert_rows(state, calib)
    if args.profile:
        profile(fused)
        return
    for B in batches:
        check(B)
    rows = {**float_rows(state), **rows}
    slow = {"intbert simulation"}
    if args.no_simulations:
        rows.pop("intbert simulation")
    else:
        rows["transformers IBertModel quant mode"] = hf_ibert_row(state, calib)
        slow.add("transformers IBertModel quant mode")
    results = {name: {} for name in rows}
    for B in batches:
        b = ids_batch(B)
        for name, fn in rows.items():
            with contextlib.suppress(torch.cuda.OutOfMemoryError):
                n = args.slow_runs if name in slow else repeats
                results[name][B] = time_ms(fn, b, 1 if name in slow else args.warmup, n)
            torch.cuda.empty_cache()
        print(f"B={B}: " + ", ".join(f"{n} {r[B]:.2f} ms" for n, r in results.items() if B in r), flush=True)
    table(results, batches)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
