"""Triton int8 GEMMs with the encoder's epilogues fused in: one kernel per linear layer of a layer.

``x @ W^T`` runs on the int8 tensor cores (``tl.dot`` int8 x int8 -> int32 accumulator, exact: freeze
checks K * 128 * 2^(wb-1) + max|bias| < 2^31). The epilogue reads the accumulator tile from registers and
writes only the int8 result, so the int32/int64 intermediates of the reference chain never reach memory:

* :func:`linear_requant`: + bias -> requantize (Q/K/V, with :func:`stack_linears` one GEMM for all three).
* :func:`linear_gelu_requant`: + bias -> i-GELU (int64) -> requantize -> requantize (FFN up).
* :func:`linear_residual_layernorm`: + bias, + residual -> integer LayerNorm -> requantize (dense + LN).

LayerNorm needs a whole row of N = hidden: one program owns BLOCK_M full rows and walks their N tiles
three times. Pass 1 runs the GEMM tile by tile, adds bias and residual, writes the 22-bit sums h to an
int32 scratch (M x N, 4 bytes per output; it stays in L2 at BERT sizes) and accumulates the row sums.
Pass 2 re-reads h for the variance of (h - mean) >> shift, pass 3 normalises, requantizes and stores
int8. No second kernel, no atomics; the GEMM runs once. The price: cdiv(M, BLOCK_M) programs only
(M = 4096 tokens at B = 32, S = 128: 128 programs of 32 rows), where the other GEMMs get a 2-D grid.

Each launcher's twin is the reference backend's composite of the same name (``base.Backend``);
tests/test_triton_kernels.py runs them under ``TRITON_INTERPRET=1`` against it with ``torch.equal``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import triton_intops as ti

#: The interpreter runs one small fixed tile (every tail of a small test shape is then exercised); a GPU
#: picks among CONFIGS per (M, N, K) by timing them once (``triton.autotune``), before any CUDA graph capture.
INTERPRET = bool(triton.knobs.runtime.interpret)
#: int8 ``tl.dot`` needs K >= 32 on NVIDIA GPUs (min_dot_size), so no tile dimension goes below 32.
INTERPRET_TILE = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}


def _configs(full_rows: bool) -> list:
    """Tiles to time on a GPU. A plain int8 Triton GEMM measured 0.75-0.97x fp16 cuBLAS at K = 768 and 1.33x
    at K = 3072 (issue 14); here the int64 epilogue decides as much as the GEMM: compiled for sm_90 (ptxas, no GPU),
    a 128 x 128 tile with 8 warps spills 376 bytes per thread in the requantize epilogue and 2936 in the i-GELU one,
    while 64 x 128 with 8 warps and 32 x 64 with 4 warps (16-32 accumulators per thread) spill nothing. The
    LayerNorm kernel holds more per row: 16 x 64 with 4 warps spills nothing, 16 x 128 with 4 warps 184 bytes."""
    # Few candidates: each is a separate compile of a long int64 epilogue (5-15 s on a CPU core) the first time a
    # kernel runs (Triton caches them on disk, ~/.triton/cache).
    if full_rows:
        tiles = [(16, 64, 128, 4, 3), (16, 128, 128, 8, 3), (32, 64, 128, 8, 3)]
    else:
        tiles = [(64, 128, 128, 8, 3), (32, 64, 128, 4, 4), (64, 64, 128, 4, 4), (128, 64, 128, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in tiles]


@triton.jit
def _gemm_tile(x_ptr, w_ptr, rows, cols, M, N, K, sxm, sxk, swn, swk,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 (BLOCK_M, BLOCK_N) tile of x @ W^T; rows/cols past M/N and k past K load 0 (adds nothing).

    |acc| <= K * 128 * 127 < 2^31 for K < 2^17 (freeze's bound with the bias is tighter)."""
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        a = tl.load(x_ptr + rows[:, None] * sxm + k[None, :] * sxk,
                    mask=(rows[:, None] < M) & (k[None, :] < K), other=0)
        b = tl.load(w_ptr + k[:, None] * swk + cols[None, :] * swn,
                    mask=(k[:, None] < K) & (cols[None, :] < N), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _linear_requant_kernel(x_ptr, w_ptr, bias_ptr, m_ptr, e_ptr, out_ptr, M, N, K,
                           sxm, sxk, swn, swk, som, M_STRIDE: tl.constexpr,
                           BITS: tl.constexpr, INPUT_BITS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _gemm_tile(x_ptr, w_ptr, rows, cols, M, N, K, sxm, sxk, swn, swk, BLOCK_M, BLOCK_N, BLOCK_K)
    cmask = cols < N
    # int64 from here, as the reference's acc.long() + bias: |acc + bias| < 2^31 (freeze), |q m| < 2^62.
    q = acc.to(tl.int64) + tl.load(bias_ptr + cols, mask=cmask, other=0).to(tl.int64)[None, :]
    m = tl.load(m_ptr + cols * M_STRIDE, mask=cmask, other=0)[None, :]
    e = tl.load(e_ptr + cols * M_STRIDE, mask=cmask, other=0)[None, :]
    y = ti.requantize(q, m, e, BITS, INPUT_BITS)
    tl.store(out_ptr + rows[:, None] * som + cols[None, :], y.to(tl.int8), mask=(rows[:, None] < M) & cmask[None, :])


@triton.jit
def _linear_gelu_requant_kernel(x_ptr, w_ptr, bias_ptr, gb_ptr, gc_ptr, gone_ptr, m1_ptr, e1_ptr, m2_ptr, e2_ptr,
                                out_ptr, M, N, K, sxm, sxk, swn, swk, som,
                                G_STRIDE: tl.constexpr, M1_STRIDE: tl.constexpr, M2_STRIDE: tl.constexpr,
                                BITS1: tl.constexpr, IN1: tl.constexpr, BITS2: tl.constexpr, IN2: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _gemm_tile(x_ptr, w_ptr, rows, cols, M, N, K, sxm, sxk, swn, swk, BLOCK_M, BLOCK_N, BLOCK_K)
    cmask = cols < N
    q = acc.to(tl.int64) + tl.load(bias_ptr + cols, mask=cmask, other=0).to(tl.int64)[None, :]
    # Masked columns get b = c = one = 0: i-GELU of them is finite garbage that is never stored.
    gb = tl.load(gb_ptr + cols * G_STRIDE, mask=cmask, other=0)[None, :]
    gc = tl.load(gc_ptr + cols * G_STRIDE, mask=cmask, other=0)[None, :]
    gone = tl.load(gone_ptr + cols * G_STRIDE, mask=cmask, other=0)[None, :]
    g = ti.int_gelu(q, gb, gc, gone)  # |g| < 2^47 (intops.GELU_OUTPUT_BITS, checked at freeze)
    m1 = tl.load(m1_ptr + cols * M1_STRIDE, mask=cmask, other=0)[None, :]
    e1 = tl.load(e1_ptr + cols * M1_STRIDE, mask=cmask, other=0)[None, :]
    m2 = tl.load(m2_ptr + cols * M2_STRIDE, mask=cmask, other=0)[None, :]
    e2 = tl.load(e2_ptr + cols * M2_STRIDE, mask=cmask, other=0)[None, :]
    y = ti.requantize(ti.requantize(g, m1, e1, BITS1, IN1), m2, e2, BITS2, IN2)
    tl.store(out_ptr + rows[:, None] * som + cols[None, :], y.to(tl.int8), mask=(rows[:, None] < M) & cmask[None, :])


@triton.jit
def _linear_residual_layernorm_kernel(
        x_ptr, w_ptr, bias_ptr, res_ptr, ma_ptr, ea_ptr, mb_ptr, eb_ptr, shift_ptr, sign_ptr, lnb_ptr, m_ptr, e_ptr,
        h_ptr, out_ptr, M, N, K, sxm, sxk, swn, swk, srm, shm, som,
        MA_STRIDE: tl.constexpr, MB_STRIDE: tl.constexpr, M_STRIDE: tl.constexpr,
        INA: tl.constexpr, INB: tl.constexpr, ADD_BITS: tl.constexpr, BITS: tl.constexpr, INPUT_BITS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    cs = tl.arange(0, BLOCK_N)
    add_lo = -(1 << (ADD_BITS - 1))
    add_hi = (1 << (ADD_BITS - 1)) - 1
    # Pass 1: h = clamp(rescale(acc + bias) + rescale(residual)) to ADD_BITS (22: |h| < 2^21), stored as int32;
    # row sums in int64 (|sum| < 2^21 N).
    total = tl.zeros((BLOCK_M,), dtype=tl.int64)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + cs
        cmask = cols < N
        acc = _gemm_tile(x_ptr, w_ptr, rows, cols, M, N, K, sxm, sxk, swn, swk, BLOCK_M, BLOCK_N, BLOCK_K)
        a = acc.to(tl.int64) + tl.load(bias_ptr + cols, mask=cmask, other=0).to(tl.int64)[None, :]
        both = rmask[:, None] & cmask[None, :]
        r = tl.load(res_ptr + rows[:, None] * srm + cols[None, :], mask=both, other=0).to(tl.int64)
        ma = tl.load(ma_ptr + cols * MA_STRIDE, mask=cmask, other=0)[None, :]
        ea = tl.load(ea_ptr + cols * MA_STRIDE, mask=cmask, other=0)[None, :]
        mb = tl.load(mb_ptr + cols * MB_STRIDE, mask=cmask, other=0)[None, :]
        eb = tl.load(eb_ptr + cols * MB_STRIDE, mask=cmask, other=0)[None, :]
        h = ti.rescale(a, ma, ea, INA) + ti.rescale(r, mb, eb, INB)
        h = tl.minimum(tl.maximum(h, add_lo), add_hi)
        h = tl.where(both, h, 0)
        total += tl.sum(h, axis=1)
        tl.store(h_ptr + rows[:, None] * shm + cols[None, :], h.to(tl.int32), mask=both)
    ti.layernorm_requant_rows(h_ptr, out_ptr, rows, rmask, total, N, shm, som, shift_ptr, sign_ptr, lnb_ptr, m_ptr,
                              e_ptr, M_STRIDE, BITS, INPUT_BITS, BLOCK_N)


_PLAIN = {"requant": _linear_requant_kernel, "gelu": _linear_gelu_requant_kernel,
          "layernorm": _linear_residual_layernorm_kernel}
if INTERPRET:
    _TUNED = _PLAIN
else:  # pragma: no cover - needs a GPU
    _TUNED = {
        "requant": triton.autotune(_configs(False), key=["M", "N", "K"])(_linear_requant_kernel),
        "gelu": triton.autotune(_configs(False), key=["M", "N", "K"])(_linear_gelu_requant_kernel),
        "layernorm": triton.autotune(_configs(True), key=["M", "N", "K"])(_linear_residual_layernorm_kernel),
    }
#: ``INTBERT_TRITON_AUTOTUNE=0``: one fixed tile per kernel (no timing, one compile per shape class), for tests on a
#: GPU, where a dozen shapes times every candidate tile would spend minutes compiling. Read at each launch.
AUTOTUNE_ENV = "INTBERT_TRITON_AUTOTUNE"
#: The fixed tiles: spill-free at sm_90 (see _configs): (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages).
FIXED_TILE = {"requant": (64, 128, 128, 8, 3), "gelu": (64, 128, 128, 8, 3), "layernorm": (16, 64, 128, 4, 3)}


def _launch(kind: str, grid, *args, **constexprs) -> None:
    """Launch with the interpreter's tile, a fixed tile (``INTBERT_TRITON_AUTOTUNE=0``) or the autotuner's (GPU)."""
    if INTERPRET:
        tile = INTERPRET_TILE
        _PLAIN[kind][grid(tile)](*args, **constexprs, **tile)
    elif os.environ.get(AUTOTUNE_ENV, "1") == "0":  # pragma: no cover - needs a GPU
        m, n, k, warps, stages = FIXED_TILE[kind]
        tile = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}
        _PLAIN[kind][grid(tile)](*args, **constexprs, **tile, num_warps=warps, num_stages=stages)
    else:  # pragma: no cover - needs a GPU
        _TUNED[kind][grid](*args, **constexprs)


def _stride(t: torch.Tensor) -> int:
    """0 for a per-tensor constant (one element broadcast to every column), 1 for a per-channel one."""
    return 0 if t.numel() == 1 else 1


#: The kernels compute element offsets in int32 (row * stride + column).
MAX_OFFSET = 2**31 - 1


def check_offsets(*tensors: torch.Tensor) -> None:
    """Refuse tensors whose last element lies past an int32 offset (e.g. B * L * 3H >= 2^31), naming the fix."""
    for t in tensors:
        last = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
        if last > MAX_OFFSET:
            raise ValueError(f"a tensor of shape {tuple(t.shape)} is too large for the Triton kernels' int32 offsets "
                             f"(last element at {last} > 2^31 - 1): split the batch, or use kernels='torch'")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K) with unit stride along K (a view where possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    check_offsets(x2)
    return x2


def linear_requant(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, m: torch.Tensor, e: torch.Tensor,
                   bits: int, input_bits: int) -> torch.Tensor:
    """int8 (..., K) -> int8 (..., N) = requantize(x @ W^T + bias); twin of ``Backend.linear_requant``.

    ``weight`` int8 (N, K), ``bias`` int32 (N,), (m, e) int64 (1,) or (N,); bits <= 8."""
    x2 = _rows(x)
    M, K = x2.shape
    N = weight.shape[0]
    out = torch.empty((M, N), dtype=torch.int8, device=x.device)
    check_offsets(out)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    _launch("requant", grid, x2, weight, bias, m, e, out, M, N, K, x2.stride(0), x2.stride(1), weight.stride(0),
            weight.stride(1), out.stride(0), M_STRIDE=_stride(m), BITS=bits, INPUT_BITS=input_bits)
    return out.view(*x.shape[:-1], N)


def linear_gelu_requant(x, lin, g, rq1, rq2) -> torch.Tensor:
    """int8 (..., K) -> int8 (..., N): + bias -> i-GELU -> rq1 -> rq2; twin of ``Backend.linear_gelu_requant``."""
    x2 = _rows(x)
    M, K = x2.shape
    N = lin.weight.shape[0]
    out = torch.empty((M, N), dtype=torch.int8, device=x.device)
    check_offsets(out)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
    _launch("gelu", grid, x2, lin.weight, lin.bias, g.b, g.c, g.one, rq1.m, rq1.e, rq2.m, rq2.e, out, M, N, K,
            x2.stride(0), x2.stride(1), lin.weight.stride(0), lin.weight.stride(1), out.stride(0),
            G_STRIDE=_stride(g.b), M1_STRIDE=_stride(rq1.m), M2_STRIDE=_stride(rq2.m), BITS1=rq1.bits,
            IN1=rq1.input_bits, BITS2=rq2.bits, IN2=rq2.input_bits)
    return out.view(*x.shape[:-1], N)


def linear_residual_layernorm(x, lin, residual, add, ln, rq) -> torch.Tensor:
    """int8 (..., K), residual (..., N) -> int8 (..., N): dense + bias, + residual (add.bits) -> LayerNorm -> rq.

    Twin of ``Backend.linear_residual_layernorm``; add.bits <= 32 (the scratch is int32), rq.bits <= 8."""
    x2 = _rows(x)
    r2 = _rows(residual)
    M, K = x2.shape
    N = lin.weight.shape[0]
    out = torch.empty((M, N), dtype=torch.int8, device=x.device)
    h = torch.empty((M, N), dtype=torch.int32, device=x.device)  # pass-1 scratch (see the module docstring)
    check_offsets(h)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)  # noqa: E731
    _launch("layernorm", grid, x2, lin.weight, lin.bias, r2, add.a.m, add.a.e, add.b.m, add.b.e, ln.shift, ln.sign,
            ln.bias, rq.m, rq.e, h, out, M, N, K, x2.stride(0), x2.stride(1), lin.weight.stride(0),
            lin.weight.stride(1), r2.stride(0), h.stride(0), out.stride(0),
            MA_STRIDE=_stride(add.a.m), MB_STRIDE=_stride(add.b.m), M_STRIDE=_stride(rq.m), INA=add.a.input_bits,
            INB=add.b.input_bits, ADD_BITS=add.bits, BITS=rq.bits, INPUT_BITS=rq.input_bits)
    return out.view(*x.shape[:-1], N)


def stack_linears(pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(IntLinear, Requant) pairs on one input -> one (sum N, K) weight, bias and per-channel (m, e).

    Q, K and V then run as one GEMM whose output columns are [q | k | v]; the split points are returned.
    The pairs must share bits and input_bits (the caller checks)."""
    weight = torch.cat([lin.weight for lin, _ in pairs]).contiguous()
    bias = torch.cat([lin.bias for lin, _ in pairs]).contiguous()
    m = torch.cat([rq.m.expand(lin.weight.shape[0]) for lin, rq in pairs]).contiguous()
    e = torch.cat([rq.e.expand(lin.weight.shape[0]) for lin, rq in pairs]).contiguous()
    return weight, bias, m, e, [lin.weight.shape[0] for lin, _ in pairs]
