"""The exported I-BERT integer graph in onnxruntime against the frozen engine it was exported from (CPU).

BERT-base shape (hidden 768, 12 heads, intermediate 3072, ``--layers`` layers, 12 by default), random weights with a
fixed seed, calibrated (minmax) on two random batches, frozen with the engine's default CPU backend; sequence 128,
batch 1 and 8. Rows: the engine's integer encoder (``frozen.encoder.encode``), and the graph from
``intbert.export_onnx`` with the default kernels (exact on every CPU: u8 x u8 for 8-bit weights and attention) and,
where this CPU's u8 x s8 kernel is exact for full int8, ``kernel="u8s8"``. Each row also says whether the graph's int8
hidden states equal the engine's.

    python benchmarks/ibert_onnx.py [--threads 1] [--repeats 5] [--layers 12]

Both run with ``--threads`` threads (torch and onnxruntime intra-op). Times are medians after one warm-up run, the
two taking turns run by run: process CPU time with 1 thread (robust to other jobs time-slicing the core; on a quiet
machine it equals wall time), wall clock with more. Prints the CPU, versions, the load average before and after, and a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

import intbert
from intbert.engine.backends.ort_gemm import u8s8_is_exact_for_8bit
from intbert.export.ibert_onnx import INT8_OUTPUT
from intbert.export.ort_kernels import make_session
from _machine import cpu_name, load  # benchmarks/_machine.py (scripts run from this folder)

SEQUENCE, BATCHES = 128, (1, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical), threads {args.threads}, clock "
          f"{'process CPU time' if args.threads == 1 else 'wall'}; torch {torch.__version__}, onnxruntime "
          f"{ort.__version__}; load before: {load()}")

    torch.manual_seed(0)
    config = intbert.IBertConfig(num_hidden_layers=args.layers, quant_mode=True)
    model = intbert.IBertModel(config, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(1)
    intbert.calibrate(model, [{"input_ids": torch.randint(3, config.vocab_size, (2, SEQUENCE), generator=g)}
                              for _ in range(2)], method="minmax")
    frozen = intbert.freeze(model)
    print(f"shape: {args.layers} layers, hidden {config.hidden_size}, intermediate {config.intermediate_size}, "
          f"sequence {SEQUENCE}; engine backend {frozen.encoder.backend().name}")

    kernels = [None] + (["u8s8"] if u8s8_is_exact_for_8bit() else [])
    graphs = {}
    with tempfile.TemporaryDirectory() as folder:
        for kernel in kernels:
            path = os.path.join(folder, f"{kernel or 'default'}.onnx")
            start = time.perf_counter()
            result = intbert.export_onnx(frozen, path, kernel=kernel)
            label = f"ONNX ({result.weight_kernel} weights, {result.attention_kernel} attention)"
            print(f"{label}: exported in {time.perf_counter() - start:.1f} s, {sum(result.op_counts.values())} nodes, "
                  f"int8 kernels in onnxruntime: {result.int8_kernel_counts}")
            graphs[label] = make_session(path, threads=args.threads)

        print("\n| batch | engine ms | graph | graph ms | graph / engine | int8 equal |")
        print("|---|---|---|---|---|---|")
        for batch in BATCHES:
            ids = torch.randint(3, config.vocab_size, (batch, SEQUENCE), generator=g)
            mask, types = torch.ones_like(ids), torch.zeros_like(ids)
            feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
            runs = {"engine": lambda: frozen.encoder.encode(ids, mask, types)[0]}
            runs.update({label: (lambda s=s: s.run([INT8_OUTPUT], feeds)[0]) for label, s in graphs.items()})
            outputs = {name: fn() for name, fn in runs.items()}  # warm-up
            times = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    start = clock()
                    fn()
                    times[name].append(clock() - start)
            engine_ms = statistics.median(times["engine"]) * 1e3
            want = outputs["engine"].numpy()
            for label in graphs:
                ms = statistics.median(times[label]) * 1e3
                equal = np.array_equal(outputs[label], want)
                print(f"| {batch} | {engine_ms:.1f} | {label} | {ms:.1f} | {ms / engine_ms:.2f} | {equal} |")
    print(f"\nload after: {load()}")


if __name__ == "__main__":
    main()
