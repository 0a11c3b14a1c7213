"""Triton device-function twins of the ``intops`` definitions, for the fused kernels of the CUDA backend.

Each ``@triton.jit`` function here is the same integer arithmetic as the ``intops`` function it names, step
for step, so a kernel built from them gives the reference backend's integers (tests/test_triton_kernels.py
proves it with ``torch.equal`` under ``TRITON_INTERPRET=1``; tests/test_engine_gpu.py on a GPU).

Rules the twins keep (they are easy to break in Triton):

* Everything wider than an int8 x int8 dot product runs in int64, as the reference does (``q.long()``).
  Mixed int32 x int32 products would wrap silently; the callers widen with ``.to(tl.int64)`` first.
  On a GPU int64 multiplies and shifts are emulated with several 32-bit instructions: correct, slower.
* Triton's ``//`` truncates toward zero (C semantics) and ``>>`` on a signed type is arithmetic (floor).
  Every floor division of a possibly negative numerator goes through :func:`floor_div`; the others have
  a non-negative numerator and a positive divisor, where truncation is the floor (said at each use).
* Shift amounts stay within [0, 63] for int64 (LLVM makes larger shifts poison on a GPU).

Importing this module needs ``triton``; whether its kernels are compiled for a GPU or run by the CPU
interpreter is decided when it is imported (``TRITON_INTERPRET=1`` in the environment at that moment).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: intops.INT32_MIN / INT32_MAX. A global read inside a kernel must be a ``tl.constexpr`` (the GPU compiler refuses
#: a plain int with a NameError; the interpreter does not check).
INT32_MIN = tl.constexpr(-(2**31))
INT32_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def floor_div(a, b):
    """floor(a / b) for int64 a of any sign and b > 0 (``torch.div(..., rounding_mode="floor")``).

    ``a // b`` truncates toward zero; when the remainder is negative (a < 0, inexact) truncation is one
    above the floor. Correct under either rounding of ``//``, since then r >= 0.
    """
    t = a // b
    r = a - t * b
    return t - (r < 0).to(tl.int64)


@triton.jit
def half_of(e):
    """2^(e-1) for 1 <= e <= 63 and 0 for e = 0 (intops._half): the round-half-up offset of ``>> e``."""
    one = e * 0 + 1
    return tl.where(e > 0, one << tl.maximum(e - 1, 0), 0)


@triton.jit
def round_shift(v, e):
    """round_half_up(v / 2^e) = (v + 2^(e-1)) >> e for int64 |v| < 2^62, 0 <= e <= 63 (intops._round_shift)."""
    return (v + half_of(e)) >> e


@triton.jit
def rescale(q, m, e, INPUT_BITS: tl.constexpr):
    """round_half_up(q m / 2^e) for int64 q with |q| < 2^INPUT_BITS, dyadic m < 2^31 (intops.rescale).

    INPUT_BITS <= 31: |q m| < 2^62, one product. Wider (i-GELU outputs, |q| < 2^47): the split
    q = qh 2^16 + ql, 0 <= ql < 2^16, keeps |qh m| < 2^62 and ql m + 2^(e-1) < 2^63 (intops says why the
    two floors compose for e >= 16); for e < 16 the ratio exceeds 2^14, every |q| >= 2^31 saturates any
    output width, so clamping q to int32 first and using one product gives the same integers.
    """
    if INPUT_BITS <= 31:
        return round_shift(q * m, e)
    else:
        direct = round_shift(tl.minimum(tl.maximum(q, INT32_MIN + 1), INT32_MAX) * m, e)
        low = ((q & 0xFFFF) * m + half_of(e)) >> 16
        split = ((q >> 16) * m + low) >> tl.maximum(e - 16, 0)
        return tl.where(e >= 16, split, direct)


@triton.jit
def requantize(q, m, e, BITS: tl.constexpr, INPUT_BITS: tl.constexpr):
    """clamp(round_half_up(q m / 2^e), -2^(BITS-1), 2^(BITS-1) - 1) in int64 (intops.requantize)."""
    y = rescale(q, m, e, INPUT_BITS)
    return tl.minimum(tl.maximum(y, -(1 << (BITS - 1))), (1 << (BITS - 1)) - 1)


@triton.jit
def int_gelu(q, b, c, one):
    """i-GELU of int64 q (intops.int_gelu): -q * ((sign(q) ((min(|q|, -b) + b)^2 + c) >> 14) + one).

    |q| < 2^32 (a GEMM accumulator plus bias), |b| < 2^22, |c| < 2^43: (t + b)^2 <= b^2 < 2^44, and the
    product stays below 2^61 for input scales >= 2^-20 (checked at freeze). ``>> 14`` floors, as the reference.
    """
    t = tl.minimum(tl.abs(q), -b)
    sign = (q > 0).to(tl.int64) - (q < 0).to(tl.int64)
    erf = (sign * ((t + b) * (t + b) + c)) >> 14
    return -q * (erf + one)


@triton.jit
def int_exp(x, x0, zm, b, c, m, e):
    """i-exp of int64 x <= 0 (max-subtracted scores) as exp(x S) * 2^15 in [0, 2^15] (intops.int_softmax).

    x = max(x, 30 x0) >= 30 x0 >= -340680 (d = -x0 <= 11356); z = floor(x / x0) = (-x zm) >> 33 exactly
    (-x zm < 2^19 2^33 = 2^52, int64); r = x - x0 z in (x0, 0]; 0 < (r + b) r + c < 2^30; (.) m < 2^61;
    the shift min(z + e, 63) rounds half up.
    """
    x = tl.maximum(x, 30 * x0)
    z = (-x * zm) >> 33
    r = x - x0 * z
    poly = (r + b) * r + c
    ex = round_shift(poly * m, tl.minimum(z + e, 63))
    return tl.minimum(tl.maximum(ex, 0), 1 << 15)


@triton.jit
def bit_length(n):
    """Bits of int64 n >= 0 (0 for 0), by a binary search on shifts (intops._bit_length)."""
    bl = n * 0
    v = n
    for i in tl.static_range(6):  # unrolled: shifts 32, 16, 8, 4, 2, 1
        big = (v >> (32 >> i)) > 0
        bl += big.to(tl.int64) * (32 >> i)
        v = tl.where(big, v >> (32 >> i), v)
    return bl + (v > 0).to(tl.int64)


@triton.jit
def isqrt(n):
    """floor(sqrt(n)) of int64 0 <= n < 2^62 (intops.isqrt): 7 Newton steps from 2^ceil(bits/2), running min.

    n >= 0 and x >= 1, so ``n // x`` (truncation) is the floor.
    """
    x = (n * 0 + 1) << ((bit_length(n) + 1) >> 1)
    for _ in tl.static_range(7):
        nxt = (x + n // tl.maximum(x, 1)) >> 1
        x = tl.minimum(x, nxt)
    return x


@triton.jit
def floor_div_by_reciprocal(y, d):
    """floor(y 2^30 / d) for int64 |y| < 2^23 and 1 <= d < 2^32 (intops.floor_div_by_reciprocal).

    R = 2^62 // d (positive operands: truncation is the floor); q0 from R's two 31-bit halves
    (|y Rh|, |y Rl| < 2^54), then the remainder moves q0 (one step down, two up) to the exact quotient.
    """
    R = (d * 0 + 2**62) // d
    q = (y * (R >> 31) + ((y * (R & (2**31 - 1))) >> 31)) >> 1
    r = (y << 30) - q * d
    low = r < 0
    q = q - low.to(tl.int64)
    r = r + low.to(tl.int64) * d
    for _ in tl.static_range(2):
        high = r >= d
        q = q + high.to(tl.int64)
        r = r - high.to(tl.int64) * d
    return q


@triton.jit
def row_mean(total, C):
    """round_half_up(total / C) = floor((2 total + C) / (2 C)) (intops._row_mean); |total| < 2^22 C."""
    return floor_div(2 * total + C, 2 * C)


@triton.jit
def layernorm_requant_rows(h_ptr, out_ptr, rows, rmask, total, N, shm, som, shift_ptr, sign_ptr, lnb_ptr, m_ptr, e_ptr,
                           M_STRIDE: tl.constexpr, BITS: tl.constexpr, INPUT_BITS: tl.constexpr,
                           BLOCK_N: tl.constexpr):
    """Integer LayerNorm + requantization of BLOCK_M whole rows already in an int32 scratch (intops.int_layernorm,
    then intops.requantize); ``total`` holds their int64 row sums. Writes int8 rows of ``out``.

    Rows of N <= 2^16 channels with |h| < 2^22, as int_layernorm's bounds. Two walks over the row's N tiles:
    pass 2: var = sum(((h - mean) >> shift)^2) < N 2^46 (|h - mean| < 2^23), exact in int64;
    std = max(isqrt(var) << shift, 1) < 2^32 (shift <= 22: modules.LN_MAX_SHIFT), 1 for a constant row;
    pass 3: n = floor((h - mean) 2^30 / std); clamp(sign (n + bias)) to int32; requantize to BITS.
    """
    # The threads that read a tile of h need not be those that wrote it: a block-wide barrier makes the caller's
    # global writes visible to the whole program (a no-op in the interpreter).
    tl.debug_barrier()
    cs = tl.arange(0, BLOCK_N)
    mean = row_mean(total, N)[:, None]
    shift = tl.load(shift_ptr)
    var = total * 0
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + cs
        both = rmask[:, None] & (cols < N)[None, :]
        y = tl.load(h_ptr + rows[:, None] * shm + cols[None, :], mask=both, other=0).to(tl.int64) - mean
        ys = tl.where(both, y >> shift, 0)
        var += tl.sum(ys * ys, axis=1)
    std = tl.maximum(isqrt(var) << shift, 1)[:, None]
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + cs
        cmask = cols < N
        both = rmask[:, None] & cmask[None, :]
        y = tl.load(h_ptr + rows[:, None] * shm + cols[None, :], mask=both, other=0).to(tl.int64) - mean
        n = floor_div_by_reciprocal(y, std)
        sign = tl.load(sign_ptr + cols, mask=cmask, other=1)[None, :]
        lnb = tl.load(lnb_ptr + cols, mask=cmask, other=0)[None, :]
        ln = tl.minimum(tl.maximum(sign * (n + lnb), INT32_MIN), INT32_MAX)
        m = tl.load(m_ptr + cols * M_STRIDE, mask=cmask, other=0)[None, :]
        e = tl.load(e_ptr + cols * M_STRIDE, mask=cmask, other=0)[None, :]
        out = requantize(ln, m, e, BITS, INPUT_BITS)
        tl.store(out_ptr + rows[:, None] * som + cols[None, :], out.to(tl.int8), mask=both)
