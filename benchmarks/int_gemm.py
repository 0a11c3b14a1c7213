"""Exact integer GEMM (intbert.engine.backends.ort_gemm) vs FP32 GEMM, side by side in one process.

Prints the machine, an exactness check of the raw MLAS kernels (does u8 x s8 saturate with full 8-bit
weights on this CPU? is u8 x u8 exact?), then a markdown table of GOPS (2*M*K*N / time) for the BERT-base
GEMM shapes and the two attention products, for each thread count, and the per-call overhead of a small
session run. Timing: median over repeats after a warm-up. The clock is process CPU time for 1 thread
(robust to other processes on a shared VM) and wall time for more threads (CPU time would count the
second thread and ORT's spinning); ``--clock`` overrides. The load average is printed before each block:
on a 2-vCPU machine, multi-thread numbers taken while it is above ~0.3 are not worth quoting.

To see the AVX2-without-VNNI behaviour on a newer CPU, run the exactness part under user-mode QEMU:
``qemu-x86_64 -cpu EPYC-Milan $(python -c 'import sys; print(sys.executable)') benchmarks/int_gemm.py --exactness-only``
(slow: emulated, so no timings).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from intbert.engine.backends import ort_gemm
from intbert.engine.backends.ort_gemm import OrtBatchedMatMul, OrtLinear, u8s8_is_exact_for_8bit
from _machine import cpu_name, load  # benchmarks/_machine.py (scripts run from this folder)

#: (M, K, N): FFN-up at b1 s128 and b8 s128, QKV/attention-out and FFN-down at b8 s128.
LINEAR_SHAPES = [(128, 768, 3072), (1024, 768, 3072), (1024, 768, 768), (1024, 3072, 768)]
#: (a shape, b shape): scores q @ k^T and context probs @ v at b8 s128, 12 heads of 64.
ATTENTION_SHAPES = [((8, 12, 128, 64), (8, 12, 64, 128)), ((8, 12, 128, 128), (8, 12, 128, 64))]


def int8_flags() -> str:
    """The CPU flags that decide MLAS's int8 kernels, from /proc/cpuinfo (under user-mode QEMU these are
    the host's, not the emulated CPU's; torch's capability line shows the emulated one)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni/amx"


def ort_fp32_session(weight_kn: np.ndarray | None, threads: int):
    """ORT FP32 MatMul, with a constant [K, N] weight (prepacked) or B as a second input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)]
    inits = []
    if weight_kn is None:
        inputs.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, None))
    else:
        inits.append(numpy_helper.from_array(weight_kn, "B"))
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "fp32", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(fn, clock, min_seconds: float, min_repeats: int) -> float:
    """Median seconds per call: one warm-up, then repeats until both minimums are met."""
    fn()
    times, total = [], 0.0
    while len(times) < min_repeats or total < min_seconds:
        start = clock()
        fn()
        times.append(clock() - start)
        total += times[-1]
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------


def exactness() -> None:
    """Raw u8s8 / u8u8 sessions (no kernel choice) on saturating and random data, K = 768."""
    K, N = 768, 64
    gen = torch.Generator().manual_seed(0)
    x_sat = torch.full((8, K), 255, dtype=torch.uint8)
    w_sat = torch.full((N, K), 127, dtype=torch.int8)
    w_sat[1::2] = -127
    x_rnd = torch.randint(0, 256, (8, K), generator=gen, dtype=torch.uint8)
    w_rnd = torch.randint(-127, 128, (N, K), generator=gen).to(torch.int8)
    print(f"u8s8_is_exact_for_8bit() (the probe): {u8s8_is_exact_for_8bit()}\n")
    print("| data | u8s8, 8-bit weights | u8s8, 7-bit weights (w // 2) | u8u8, 8-bit weights |")
    print("|---|---|---|---|")
    for name, x, w in (("all-255 x +-127", x_sat, w_sat), ("random full range", x_rnd, w_rnd)):
        cells = []
        w7 = torch.div(w, 2, rounding_mode="floor").to(torch.int8)  # [-64, 63]: pair sums <= 2 * 255 * 64
        for w_used, kernel in ((w, "u8s8"), (w7, "u8s8"), (w, "u8u8")):
            ref = (x.long() - 128) @ w_used.long().T
            wt = w_used.t().contiguous()
            b, zp = (wt.numpy(), 0) if kernel == "u8s8" else ((wt.to(torch.int16) + 128).to(torch.uint8).numpy(), 128)
            # A raw session: OrtLinear would refuse u8s8 for full 8-bit weights on a saturating CPU.
            sess = ort_gemm._matmul_integer_session(b, kernel == "u8s8", 128, zp, 1)
            got = torch.from_numpy(sess.run(None, {"A": x.numpy()})[0]).long()
            err = (got - ref).abs().max().item()
            cells.append("exact" if err == 0 else f"WRONG (max abs err {err})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()


def linear_rows(threads: int, clock, min_s: float, reps: int, gen) -> tuple[list[str], list[str]]:
    rows = []
    for M, K, N in LINEAR_SHAPES:
        w7 = torch.randint(-63, 64, (N, K), generator=gen).to(torch.int8)
        w8 = torch.randint(-127, 128, (N, K), generator=gen).to(torch.int8)
        x = torch.randint(0, 256, (M, K), generator=gen, dtype=torch.uint8)
        xf, wf = (x.float() - 128), w8.float()
        ort32 = ort_fp32_session(wf.t().contiguous().numpy(), threads)
        xf_np = xf.numpy()
        lin7 = OrtLinear(w7, 7, num_threads=threads)
        lin8 = OrtLinear(w8, 8, num_threads=threads)
        lin8u = OrtLinear(w8, 8, num_threads=threads, kernel="u8u8")
        # Split alternative: w = ceil(w/2) + floor(w/2), both halves in [-64, 64] (u8s8-safe), stacked as 2N rows.
        lo = torch.div(w8, 2, rounding_mode="floor")
        split = OrtLinear(torch.cat([w8 - lo, lo]).to(torch.int8), 8, num_threads=threads)
        assert split.kernel == "u8s8"
        ref = lin8u(x)
        assert torch.equal(lin8(x), ref) and torch.equal(split(x)[:, :N] + split(x)[:, N:], ref)
        paths = {
            "torch FP32 F.linear": lambda: F.linear(xf, wf),
            "ORT FP32 MatMul": lambda: ort32.run(None, {"A": xf_np}),
            "OrtLinear 7-bit": lambda: lin7(x),
            "OrtLinear 8-bit": lambda: lin8(x),
            "OrtLinear 8-bit u8u8": lambda: lin8u(x),
            "8-bit split (2 x u8s8)": lambda: (lambda y: y[:, :N] + y[:, N:])(split(x)),
        }
        gop = 2 * M * K * N / 1e9
        gops = {k: gop / timed(fn, clock, min_s, reps) for k, fn in paths.items()}
        base = gops["torch FP32 F.linear"]
        kernels = f"7-bit {lin7.kernel}, 8-bit {lin8.kernel}"
        rows.append(f"| {threads} | {M}x{K}x{N} | " + " | ".join(f"{v:.0f}" for v in gops.values())
                    + f" | {gops['OrtLinear 7-bit'] / base:.2f} | {gops['OrtLinear 8-bit'] / base:.2f} | {kernels} |")
    return rows, list(paths)


def attention_rows(threads: int, clock, min_s: float, reps: int, gen) -> tuple[list[str], list[str]]:
    rows = []
    bmm = OrtBatchedMatMul(num_threads=threads)
    bmm_u = OrtBatchedMatMul(num_threads=threads, kernel="u8u8")
    ort32 = ort_fp32_session(None, threads)
    for sa, sb in ATTENTION_SHAPES:
        a = torch.randint(0, 256, sa, generator=gen, dtype=torch.uint8)
        b = torch.randint(0, 256, sb, generator=gen, dtype=torch.uint8)
        za = 0 if sa[-1] == sa[-2] else 128  # probs (zero point 0) @ v, else q @ k^T
        af, bf = a.float() - za, b.float() - 128
        af_np, bf_np = af.numpy(), bf.numpy()
        assert torch.equal(bmm(a, za, b, 128), bmm_u(a, za, b, 128))
        paths = {
            "torch FP32 matmul": lambda: torch.matmul(af, bf),
            "ORT FP32 MatMul": lambda: ort32.run(None, {"A": af_np, "B": bf_np}),
            "OrtBatchedMatMul": lambda: bmm(a, za, b, 128),
            "OrtBatchedMatMul u8u8": lambda: bmm_u(a, za, b, 128),
        }
        gop = 2 * np.prod(sa) * sb[-1] / 1e9
        gops = {k: gop / timed(fn, clock, min_s, reps) for k, fn in paths.items()}
        base = gops["torch FP32 matmul"]
        rows.append(f"| {threads} | {list(sa)} x {list(sb)} (zp {za}/128) | "
                    + " | ".join(f"{v:.0f}" for v in gops.values())
                    + f" | {gops['OrtBatchedMatMul'] / base:.2f} | {bmm.kernel} |")
    return rows, list(paths)


def overhead(threads: int, clock, clock_name: str) -> None:
    """Per-call cost of tiny products, where the GEMM itself is negligible, in microseconds."""
    print(f"\nPer-call overhead, {threads} thread(s), {clock_name}, median of 2000-call batches ({load()}):\n")
    print("| call | us per call |")
    print("|---|---|")
    gen = torch.Generator().manual_seed(1)
    for M, K, N in ((1, 64, 64), (1, 768, 768), (8, 768, 768)):
        lin = OrtLinear(torch.randint(-127, 128, (N, K), generator=gen).to(torch.int8), 8, num_threads=threads)
        x = torch.randint(0, 256, (M, K), generator=gen, dtype=torch.uint8)
        sess, xn = lin._session, x.numpy()
        for name, fn in ((f"OrtLinear {M}x{K}x{N} ({lin.kernel})", lambda: lin(x)),
                         (f"bare session.run {M}x{K}x{N}", lambda: sess.run(None, {"A": xn}))):
            def batch(fn=fn):
                for _ in range(2000):
                    fn()
            print(f"| {name} | {timed(batch, clock, 0.0, 5) / 2000 * 1e6:.1f} |")
    bmm = OrtBatchedMatMul(num_threads=threads)
    a = torch.randint(0, 256, (1, 1, 1, 64), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (1, 1, 64, 1), generator=gen, dtype=torch.uint8)

    def batch_bmm():
        for _ in range(2000):
            bmm(a, 128, b, 128)
    print(f"| OrtBatchedMatMul [1,1,1,64]x[1,1,64,1] ({bmm.kernel}) | "
          f"{timed(batch_bmm, clock, 0.0, 5) / 2000 * 1e6:.1f} |")


def spinning(threads: int) -> None:
    """ORT intra-op spinning on vs off (ort_gemm turns it off), alone and followed by a torch op."""
    print(f"\nSpinning, {threads} threads, 7-bit u8s8, ms per call, wall / process CPU time ({load()}):\n")
    print("| M x K x N | spin on: GEMM | spin off: GEMM | spin on: GEMM + torch op | spin off: GEMM + torch op |")
    print("|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(2)
    for M, K, N in ((128, 768, 768), (128, 768, 3072), (1024, 768, 3072)):
        w = torch.randint(-63, 64, (K, N), generator=gen).to(torch.int8)
        x = torch.randint(0, 256, (M, K), generator=gen, dtype=torch.uint8)
        cells = {}
        for spin in (True, False):
            sess = ort_gemm._matmul_integer_session(w.numpy(), True, 128, 0, threads, spin=spin)

            def gemm(sess=sess):
                return torch.from_numpy(sess.run(None, {"A": x.numpy()})[0])

            def gemm_then_torch(gemm=gemm):
                # What the engine does next: requantize the int32 result back to uint8 with torch ops.
                y = gemm()
                return (y.float() * 1e-3).round_().clamp_(-128, 127).to(torch.int16).add_(128).to(torch.uint8)

            for name, fn in (("GEMM", gemm), ("GEMM + torch op", gemm_then_torch)):
                calls = max(3, int(0.3 / (2 * M * K * N / 200e9)))
                fn()
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    fn()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                cells[(spin, name)] = (wall / calls * 1e3, cpu / calls * 1e3)
        order = [(True, "GEMM"), (False, "GEMM"), (True, "GEMM + torch op"), (False, "GEMM + torch op")]
        print(f"| {M}x{K}x{N} | " + " | ".join("%.3f / %.3f" % cells[k] for k in order) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clock", choices=["auto", "process", "wall"], default="auto",
                        help="auto: process CPU time for 1 thread, wall time for more")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="least total time per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="least number of timed calls per measurement")
    parser.add_argument("--exactness-only", action="store_true")
    args = parser.parse_args()
    if not ort_gemm.ort_available():
        raise SystemExit("onnxruntime and onnx are needed: pip install onnxruntime onnx")
    import onnxruntime

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, int8 flags: {int8_flags()}")
    print(f"torch {torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()}), "
          f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print(load(), "\n")
    exactness()
    if args.exactness_only:
        return

    def pick_clock(threads: int):
        use_process = args.clock == "process" or (args.clock == "auto" and threads == 1)
        return (time.process_time, "process CPU time") if use_process else (time.perf_counter, "wall time")

    for threads in args.threads:
        torch.set_num_threads(threads)
        clock, clock_name = pick_clock(threads)
        gen = torch.Generator().manual_seed(threads)
        print(f"### {threads} thread(s), {clock_name}, GOPS = 2*M*K*N / median time ({load()})\n")
        rows, names = linear_rows(threads, clock, args.min_seconds, args.repeats, gen)
        print("| threads | M x K x N | " + " | ".join(names) + " | 7-bit / torch FP32 | 8-bit / torch FP32 | kernels |")
        print("|---" * (len(names) + 5) + "|")
        print("\n".join(rows))
        rows, names = attention_rows(threads, clock, args.min_seconds, args.repeats, gen)
        print("\n| threads | a x b | " + " | ".join(names) + " | OrtBatchedMatMul / torch FP32 | kernel |")
        print("|---" * (len(names) + 4) + "|")
        print("\n".join(rows))
        print(f"\n({load()})\n")
    torch.set_num_threads(args.threads[0])
    overhead(args.threads[0], *pick_clock(args.threads[0]))
    if max(args.threads) > 1:
        spinning(max(args.threads))


if __name__ == "__main__":
    main()
