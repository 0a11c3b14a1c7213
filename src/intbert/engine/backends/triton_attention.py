"""Fused integer attention in Triton: int8 QK^T -> i-exp softmax -> int8 PV -> context requantized to int8.

One program per (query block, batch x head). Scores live only in registers: the (B, nh, L, L) score and
probability matrices are never written to memory. Twin: ``Backend.attention_requant`` of the reference
backend (``intops.int_softmax`` then ``int8_matmul`` then ``intops.requantize``).

Why three passes over the keys. A float flash kernel keeps a running max and rescales its partial sums by
exp(m_old - m_new). The integer softmax cannot: i-exp of (x - m) is a rounded polynomial times a shift,
not a multiplicative function of m, and each probability is floor(e * floor(2^32 / sum e) / 2^24), a
floor of the exact row sum. So the kernel walks the keys (recomputing the int8 QK^T block, which is cheap
next to the int64 softmax arithmetic):

1. row max of (s >> pre_shift) over the kept keys;
2. row sum of e = i-exp(x - max) over the kept keys (masked keys and keys past L give 0);
3. p = min((e * factor) >> (32 - output_bit), 2^output_bit - 1) with factor = floor(2^32 / max(sum, 1)),
   then context += p @ v.

When every key fits one block (L <= BLOCK_N, e.g. S = 128) the scores are computed once and the three
steps run on that one tile. A row with no kept key gives p = 0 everywhere and a zero context, as the
reference does.

p is in [0, 255] (uint8) and ``tl.dot`` takes int8 only: p @ v = (p - 128) @ v + 128 * sum_k v[k, :],
exact in int32 (|.| <= L * 128 * 128 + 128 * L * 128 < 2^31 for L < 2^16). A masked key has p = 0, so
its (0 - 128) v and the +128 v of the column sum cancel; keys past L load v = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_intops as ti
from .triton_gemm import check_offsets

INTERPRET = bool(triton.knobs.runtime.interpret)
#: Sentinel below every shifted score (|s >> pre_shift| < 2^31): the max of a row with no kept key. A constexpr:
#: the GPU compiler refuses a plain global int inside a kernel (the interpreter does not check).
NEG = tl.constexpr(-(2**62))


@triton.jit
def _scores(q, k_ptr, b, h, keys, dcol, L, D, skb, skl, keep_ptr, skeepb, pre_shift,
            HAS_KEEP: tl.constexpr):
    """(BLOCK_M, BLOCK_N) int64 scores >> pre_shift (floor) and the bool tile of kept keys.

    q (BLOCK_M, BLOCK_D) int8 already loaded; k is read as (BLOCK_D, BLOCK_N); |q . k| <= d * 128^2 < 2^31."""
    kmask = keys < L
    kt = tl.load(k_ptr + b * skb + keys[None, :] * skl + (h * D + dcol)[:, None],
                 mask=kmask[None, :] & (dcol < D)[:, None], other=0)
    s = tl.dot(q, kt, out_dtype=tl.int32).to(tl.int64) >> pre_shift
    if HAS_KEEP:
        kmask = kmask & (tl.load(keep_ptr + b * skeepb + keys, mask=keys < L, other=0) != 0)
    return s, kmask


@triton.jit
def _attention_requant_kernel(
        q_ptr, k_ptr, v_ptr, keep_ptr, pre_shift_ptr, x0_ptr, zm_ptr, cb_ptr, cc_ptr, cm_ptr, ce_ptr, m_ptr, e_ptr,
        out_ptr, L, HEADS, D, sqb, sql, skb, skl, svb, svl, sob, sol, skeepb,
        HAS_KEEP: tl.constexpr, M_STRIDE: tl.constexpr, OUT_BIT: tl.constexpr, BITS: tl.constexpr,
        INPUT_BITS: tl.constexpr, ONE_BLOCK: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dcol = tl.arange(0, BLOCK_D)
    ks = tl.arange(0, BLOCK_N)
    dmask = dcol < D
    q = tl.load(q_ptr + b * sqb + rows[:, None] * sql + (h * D + dcol)[None, :],
                mask=(rows < L)[:, None] & dmask[None, :], other=0)
    pre_shift = tl.load(pre_shift_ptr)
    x0 = tl.load(x0_ptr)
    zm = tl.load(zm_ptr)
    cb = tl.load(cb_ptr)
    cc = tl.load(cc_ptr)
    cm = tl.load(cm_ptr)
    ce = tl.load(ce_ptr)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.int32)
    vsum = tl.zeros((BLOCK_D,), dtype=tl.int32)
    if ONE_BLOCK:
        s, kept = _scores(q, k_ptr, b, h, ks, dcol, L, D, skb, skl, keep_ptr, skeepb, pre_shift, HAS_KEEP)
        mx = tl.max(tl.where(kept[None, :], s, NEG), axis=1)
        # x - max <= 0 on kept keys; other keys compute i-exp of 0 and are zeroed after.
        ex = tl.where(kept[None, :], ti.int_exp(tl.where(kept[None, :], s - mx[:, None], 0), x0, zm, cb, cc, cm, ce), 0)
        # sum e <= L 2^15; factor = floor(2^32 / sum) (positive operands: // is the floor); e * factor <= 2^47.
        factor = (2**32) // tl.maximum(tl.sum(ex, axis=1), 1)
        p = tl.minimum((ex * factor[:, None]) >> (32 - OUT_BIT), (1 << OUT_BIT) - 1)
        vt = tl.load(v_ptr + b * svb + ks[:, None] * svl + (h * D + dcol)[None, :],
                     mask=(ks < L)[:, None] & dmask[None, :], other=0)
        acc = tl.dot((p - 128).to(tl.int8), vt, acc, out_dtype=tl.int32)
        vsum += tl.sum(vt.to(tl.int32), axis=0)
    else:
        mx = tl.full((BLOCK_M,), NEG, dtype=tl.int64)
        for n0 in range(0, L, BLOCK_N):
            s, kept = _scores(q, k_ptr, b, h, n0 + ks, dcol, L, D, skb, skl, keep_ptr, skeepb, pre_shift, HAS_KEEP)
            mx = tl.maximum(mx, tl.max(tl.where(kept[None, :], s, NEG), axis=1))
        total = tl.zeros((BLOCK_M,), dtype=tl.int64)
        for n0 in range(0, L, BLOCK_N):
            s, kept = _scores(q, k_ptr, b, h, n0 + ks, dcol, L, D, skb, skl, keep_ptr, skeepb, pre_shift, HAS_KEEP)
            ex = tl.where(kept[None, :], ti.int_exp(tl.where(kept[None, :], s - mx[:, None], 0), x0, zm, cb, cc, cm,
                                                     ce), 0)
            total += tl.sum(ex, axis=1)
        factor = (2**32) // tl.maximum(total, 1)
        for n0 in range(0, L, BLOCK_N):
            keys = n0 + ks
            s, kept = _scores(q, k_ptr, b, h, keys, dcol, L, D, skb, skl, keep_ptr, skeepb, pre_shift, HAS_KEEP)
            ex = tl.where(kept[None, :], ti.int_exp(tl.where(kept[None, :], s - mx[:, None], 0), x0, zm, cb, cc, cm,
                                                     ce), 0)
            p = tl.minimum((ex * factor[:, None]) >> (32 - OUT_BIT), (1 << OUT_BIT) - 1)
            vt = tl.load(v_ptr + b * svb + keys[:, None] * svl + (h * D + dcol)[None, :],
                         mask=(keys < L)[:, None] & dmask[None, :], other=0)
            acc = tl.dot((p - 128).to(tl.int8), vt, acc, out_dtype=tl.int32)
            vsum += tl.sum(vt.to(tl.int32), axis=0)
    context = acc.to(tl.int64) + 128 * vsum.to(tl.int64)[None, :]
    # The context requantization is per tensor or per hidden channel h * D + j of the merged heads.
    m = tl.load(m_ptr + (h * D + dcol) * M_STRIDE, mask=dmask, other=0)[None, :]
    e = tl.load(e_ptr + (h * D + dcol) * M_STRIDE, mask=dmask, other=0)[None, :]
    y = ti.requantize(context, m, e, BITS, INPUT_BITS)
    tl.store(out_ptr + b * sob + rows[:, None] * sol + (h * D + dcol)[None, :], y.to(tl.int8),
             mask=(rows < L)[:, None] & dmask[None, :])


def _tiles(L: int, d: int) -> dict:
    """Block sizes: BLOCK_D covers the head (int8 tl.dot needs K >= 32 on NVIDIA GPUs, so at least 32);
    one key block up to L = 128 (the whole row in registers); the interpreter uses 32 (more tails, faster)."""
    block_d = max(32, triton.next_power_of_2(d))
    if INTERPRET:
        block_n = 32
        block_m = 32
    else:  # pragma: no cover - needs a GPU
        block_n = max(32, min(128, triton.next_power_of_2(L)))
        block_m = 64 if L > 64 else max(16, triton.next_power_of_2(L))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d}


def attention_requant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None, heads: int,
                      sm, rq) -> torch.Tensor:
    """int8 q, k, v (B, L, H) (any row stride: column slices of a stacked QKV output work) -> int8 (B, L, H).

    ``keep``: bool (B, 1, 1, L), True = attend, or None. ``sm``: SoftmaxConstants; ``rq``: the context Requant
    (bits <= 8). Twin of ``Backend.attention_requant`` on the padded layout."""
    B, L, H = q.shape
    d = H // heads
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("attention_requant needs unit stride along the hidden dim")
    out = torch.empty((B, L, H), dtype=torch.int8, device=q.device)
    check_offsets(q, k, v, out)
    if keep is not None:
        keep_rows = keep.reshape(B, L).to(torch.int8)  # (B, L): 1 = attend
        skeepb = keep_rows.stride(0)
    else:
        keep_rows, skeepb = q, 0  # never read (HAS_KEEP=False)
    tiles = _tiles(L, d)
    grid = (triton.cdiv(L, tiles["BLOCK_M"]), B * heads)
    _attention_requant_kernel[grid](
        q, k, v, keep_rows, sm.pre_shift, sm.x0, sm.zm, sm.b, sm.c, sm.m, sm.e, rq.m, rq.e, out, L, heads, d,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        skeepb, HAS_KEEP=keep is not None, M_STRIDE=0 if rq.m.numel() == 1 else 1, OUT_BIT=sm.output_bit,
        BITS=rq.bits, INPUT_BITS=rq.input_bits, ONE_BLOCK=L <= tiles["BLOCK_N"], num_warps=4 if INTERPRET else 8,
        **tiles)
    return out
