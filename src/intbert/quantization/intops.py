"""Exact integer functions of I-BERT (arXiv 2101.01321), defined once.

Every function here takes and returns *integer* tensors (int64 unless stated) and is the single
definition of its operation: the trainable simulation (``intbert.models.ibert.quant_modules``)
computes its forward value with these functions, and the frozen engine calls them or a kernel that
tests prove bit-identical to them.

Scales are float (they are parameters of the representation, not integer state); integers never
travel in float32 above 2**24.

Rounding rules, stated once and used throughout:

* ``quantize_by_scale``: ``torch.round`` = round half to even (as the reference's ``linear_quantize``).
* ``dyadic``: the mantissa is rounded half away from zero (as the reference's ``Decimal``
  ``ROUND_HALF_UP`` on a signed value).
* ``requantize``: ``(q*m + 2**(e-1)) >> e``: round half up (toward +inf); ``>>`` is an arithmetic
  shift, i.e. floor.
* every other division is floor division (``torch.div(..., rounding_mode="floor")``), as the
  reference's ``floor_ste``.
"""

from __future__ import annotations

import math

import torch

from ..errors import OverflowRiskError

# ---------------------------------------------------------------------------------------------
# Bit widths and constants (one place; see the bounds written beside each op that uses them)
# ---------------------------------------------------------------------------------------------

#: Mantissa bits of a dyadic multiplier m / 2**e: m in [2**30, 2**31).
DYADIC_MANTISSA_BITS = 31
#: Largest right shift a dyadic multiplier may use; q*m < 2**62 so a shift of 63 already gives 0/-1.
DYADIC_MAX_SHIFT = 63
#: Bits of the LayerNorm input (the reference's ``ln_input_bit``; "max abs 2^21").
LN_INPUT_BITS = 22
#: The sum of squares in LayerNorm is kept below 2**LN_VAR_BITS by the calibrated ``shift``.
LN_VAR_BITS = 32
#: LayerNorm normalises to y / std * 2**LN_OUTPUT_FRAC_BITS (the reference's ``2**31 / std / 2``).
LN_OUTPUT_FRAC_BITS = 30
#: i-exp fixed point: exponentials are produced as integers with scale 2**-EXP_FRAC_BITS (exp(0) = 2**15),
#: the 16-bit intermediate of the reference's softmax.
EXP_FRAC_BITS = 15
#: i-exp clamps its input at -EXP_MAX_HALVINGS * ln2 (the reference's ``const = 30``).
EXP_MAX_HALVINGS = 30
#: floor(x / x0) in i-exp is a multiply by ceil(2^EXP_Z_SHIFT / -x0) and a shift (int_softmax proves it exact).
EXP_Z_SHIFT = 33
#: Softmax normalisation numerator 2**SOFTMAX_SUM_BITS (the reference's ``max_bit = 32``).
SOFTMAX_SUM_BITS = 32
#: The i-exp polynomial needs c_int = floor(2.79/S**2) < 2**30, so the score scale is raised to at
#: least 2**-14 by a right shift of the scores (exact, floor) when it is finer.
EXP_MIN_INPUT_SCALE = 2.0**-14

# i-GELU (paper Alg. 2) constants, as in the reference implementation (the paper prints a=-0.2888,
# b=-1.769 too). erf(x) ~ sign(x) * [a (min(|x|, -b) + b)^2 + 1], evaluated on x / sqrt(2).
GELU_SQRT2 = 1.4142  # the reference's k (it truncates sqrt(2) = 1.41421356...)
GELU_A = -0.2888
GELU_B = -1.769
GELU_SHIFT = 14  # the reference's ``const``: the erf polynomial is shifted right by 14 bits
GELU_C_OVER_A = 1.0 / GELU_A  # the reference's coeff[2] /= coeff[0]: c/a with c = 1
#: Widest i-GELU output requantization handles exactly (its split (q >> 16) * m must fit int64). The scale
#: floor below does not imply it (at S = 2^-20 an input of 1.0 gives 2^49.5): freeze checks the worst case
#: per channel (engine.freeze._check_gelu_output).
GELU_OUTPUT_BITS = 47
GELU_MIN_INPUT_SCALE = 2.0**-20

# i-exp (paper Alg. 3) constants, as in the reference implementation. The paper prints
# L(p) = 0.3585 (p + 1.353)^2 + 0.344; the reference code uses a*((p + b) p + c) with the values
# below (equal to 0.35815147 p^2 + 0.96963238 p + 1), which we follow.
EXP_LN2 = 0.6931  # -x0 of the reference (ln 2 truncated)
EXP_A = 0.35815147
EXP_B = 0.96963238 / 0.35815147
EXP_C = 1.0 / 0.35815147

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)


def as_scale(scale, like: torch.Tensor) -> torch.Tensor:
    """A scaling factor as a float32 tensor on ``like``'s device; 0-dim, (1,), per-channel and Python floats accepted.

    float32 because every scale of the simulation is held in float32 (the transformers port's buffers are), so a
    scale passed as a Python float or a float64 tensor is rounded to nearest float32 here, once, and every later
    ratio (:func:`requant_multiplier`) starts from the same number in the simulation and in the frozen engine.
    """
    if not torch.is_tensor(scale):
        scale = torch.tensor([float(scale)])
    return scale.to(device=like.device, dtype=torch.float32)


def quant_bounds(num_bits: int, unsigned: bool = False, narrow_range: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of ``num_bits`` bits, the one definition for I-BERT and the QDQ toolkit.

    qmax = 2^(b - 1 + unsigned) - 1; qmin = 0 if unsigned, -(2^(b-1) - 1) with ``narrow_range`` (symmetric),
    else -2^(b-1) (two's complement). ``(-128, 127)`` for signed int8, ``(-127, 127)`` narrow, ``(0, 255)``
    unsigned; ``narrow_range`` has no effect on an unsigned range (0 is already its lowest level).
    """
    if not isinstance(num_bits, int) or isinstance(num_bits, bool) or num_bits < (1 if unsigned else 2):
        raise ValueError(f"num_bits must be an int >= {1 if unsigned else 2}, got {num_bits!r}")
    qmax = 2 ** (num_bits - 1 + int(unsigned)) - 1
    if unsigned:
        return 0, qmax
    return (-qmax if narrow_range else -qmax - 1), qmax


# ---------------------------------------------------------------------------------------------
# Symmetric quantization
# ---------------------------------------------------------------------------------------------


def symmetric_scale(num_bits: int, x_min: torch.Tensor, x_max: torch.Tensor) -> torch.Tensor:
    """Scale of symmetric linear quantization: S = max(|x_min|, |x_max|, 1e-8) / (2^(b-1) - 1).

    Works elementwise, so per-channel ranges give per-channel scales. The 1e-8 floor is the
    reference's: it keeps an all-zero tensor (RoBERTa's token-type table) from dividing by zero.
    """
    n = 2 ** (num_bits - 1) - 1
    return torch.maximum(x_min.abs(), x_max.abs()).clamp(min=1e-8) / n


def quantize_by_scale(x: torch.Tensor, scale: torch.Tensor, num_bits: int) -> torch.Tensor:
    """q = clamp(round_half_even(x / S), -(2^(b-1)-1), 2^(b-1)-1), as int64: I-BERT's weight quantization.

    The full symmetric range: the reference clamps to [-n, n-1] (126 for 8 bits), which loses the
    largest positive weight (bug fix (g) in docs/ibert.md). ``scale`` broadcasts against ``x``
    (a per-row weight scale has shape [out, 1]). Computed in float64 so that x / S is correctly
    rounded before the integer rounding for any bit width up to 32.

    Not the QDQ toolkit's ``intbert.quantization.quantize`` (``fake_quant.quantize``), which takes an amax, divides
    in float32 as ONNX QuantizeLinear does and defaults to the full range [-2^(b-1), 2^(b-1)-1].
    """
    lo, hi = quant_bounds(num_bits, narrow_range=True)
    return torch.round(x.double() / scale.double()).clamp_(lo, hi).long()


def to_int(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Recover the integers of a simulated tensor ``x = q * S``: round_half_even(x / S) as int32.

    Exact when |q| < 2^22 in float32 or |q| < 2^31 in float64 (the relative error of q*S and of
    the division is below 2^-23 resp. 2^-52, so the distance to q stays under 1/2); results are
    clamped to the int32 range. Wider integers travel attached to their tensors (quant_modules).
    """
    if x.dtype != torch.float64:
        x = x.float()
    # Clamped to the int32 range (and int32-typed): beyond it the value was never a simulated integer of
    # this scale. Consumers promote to int64 where their products need it.
    return torch.round(x / scale.to(x.dtype)).clamp_(INT32_MIN + 1, INT32_MAX).int()


# ---------------------------------------------------------------------------------------------
# Dyadic requantization
# ---------------------------------------------------------------------------------------------


def dyadic(ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dyadic approximation r ~ m / 2^e of positive ratios, m in [2^30, 2^31), e >= 0; int64 pair.

    m = round_half_up(mant * 2^31), e = 31 - exp where ratio = mant * 2^exp with mant in [0.5, 1)
    (``frexp``); the reference computes the same with numpy + ``Decimal`` per element. When rounding
    carries the mantissa to 2^31 it is halved and e decremented, so m always fits int32. A ratio
    of 0 gives m = 0. Ratios below 2^-32 (e would exceed 63) get e = 63 and
    m = round_half_up(ratio * 2^63) < 2^30 instead, so m / 2^e stays within 2^-64 of the ratio.
    Ratios must lie in [0, 2^31) (e >= 0); :func:`check_dyadic_range` verifies that where scales
    are fixed (freeze), since checking here would synchronise with the device.
    """
    ratio = ratio.double()
    mant, exp = torch.frexp(ratio)
    # ratio = M * 2^(exp - 53) with the integer M = mant * 2^53 in [2^52, 2^53) (exact: the float64
    # significand), so m = round_half_up(M / 2^shift) is one exact integer rounding, no float.
    big = (mant * 2.0**53).long()
    e = DYADIC_MANTISSA_BITS - exp.long()
    # A ratio below 2^-32 would need e > 63. Clamping e alone would multiply the ratio by 2^(e-63)
    # (wrong by 8x for an i-GELU scale ~1e-12 into an 8-bit QuantAct, where |q| ~ 2^42). Keep e = 63
    # and drop ``over`` more mantissa bits instead: m / 2^63 is then within 2^-64 of the ratio.
    over = (e - DYADIC_MAX_SHIFT).clamp(min=0)
    e = e - over
    shift = (53 - DYADIC_MANTISSA_BITS + over).clamp(max=62)  # >= 22; at 62 every M < 2^53 gives 0
    m = (big + _half(shift)) >> shift  # round half up
    carry = m == 2**DYADIC_MANTISSA_BITS  # only when over = 0: M / 2^22 rounded up to 2^31
    m = torch.where(carry, m >> 1, m)
    e = torch.where(carry, e - 1, e)
    m = torch.where(ratio == 0, torch.zeros_like(m), m)
    e = torch.where(ratio == 0, torch.zeros_like(e), e)
    return m, e


def requant_multiplier(s_in: torch.Tensor, s_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dyadic (m, e) of a requantization from scale ``s_in`` to ``s_out``: m / 2^e ~ S_in / S_out.

    The ratio of the two float32 scales is formed in float64 (one rounding, half to even, relative error
    <= 2^-53) and then rounded to a 31-bit mantissa by :func:`dyadic` (half up). The one definition used by the
    simulation's forward (``QuantAct``) and by ``intbert.freeze``, so the frozen engine multiplies by exactly
    the simulation's integers.
    """
    return dyadic(s_in.double() / s_out.double())


def check_dyadic_range(ratio: torch.Tensor, what: str) -> None:
    """Raise if a requantization ratio cannot be a dyadic m / 2^e with m < 2^31 and 0 <= e <= 63."""
    r = ratio.double()
    if bool((r < 0).any()) or bool((r >= 2.0**31).any()) or not bool(torch.isfinite(r).all()):
        raise OverflowRiskError(
            f"{what}: requantization ratio {r.min().item():.3g}..{r.max().item():.3g} is outside [0, 2^31); "
            "the input scale is too coarse for its output, recalibrate the ranges"
        )


def _half(e: torch.Tensor) -> torch.Tensor:
    """2^(e-1) for e >= 1 and 0 for e = 0 (the round-half-up offset of a right shift by e <= 63)."""
    return torch.where(e > 0, torch.ones_like(e) << (e - 1).clamp(min=0), torch.zeros_like(e))


def _round_shift(v: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """round_half_up(v / 2^e) = (v + 2^(e-1)) >> e, for int64 |v| < 2^62 and 0 <= e <= 63 (no overflow)."""
    return (v + _half(e)) >> e


#: Inputs of :func:`requantize` narrower than this many bits take the direct path (|q*m| < 2^62).
REQUANT_NARROW_BITS = 31


def rescale(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor, input_bits: int = 32) -> torch.Tensor:
    """round_half_up(q * m / 2^e) for int64 q and a dyadic (m, e), unclamped; see :func:`requantize`."""
    m = m.to(q.device)
    e = e.to(q.device)
    if input_bits <= REQUANT_NARROW_BITS:
        return _round_shift(q * m, e)
    direct = _round_shift(q.clamp(INT32_MIN + 1, INT32_MAX) * m, e)
    low = ((q & 0xFFFF) * m + _half(e)) >> 16
    split = ((q >> 16) * m + low) >> (e - 16).clamp(min=0)
    return torch.where(e >= 16, split, direct)


def requantize(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor, num_bits: int, input_bits: int = 32) -> torch.Tensor:
    """y = clamp(round_half_up(q * m / 2^e), -2^(b-1), 2^(b-1)-1) for int64 q and a dyadic (m, e).

    (m, e) broadcast against q (per-channel multipliers on the last dim); m in [0, 2^31).
    ``input_bits`` is the caller's bound on q (|q| < 2^input_bits, 47 at most):
    * |q| <= 2^31: |q*m| < 2^62 fits int64 directly.
    * wider q (i-GELU outputs, up to ~2^44): q = qh*2^16 + ql with 0 <= ql < 2^16, so
      q*m = (qh*m)*2^16 + ql*m with |qh*m| < 2^62, and for e >= 16
      floor((A*2^16 + X) / 2^e) = floor((A + floor(X / 2^16)) / 2^(e-16)), X = ql*m + 2^(e-1) < 2^63.
      When e < 16 the ratio m/2^e exceeds 2^14, so any |q| >= 2^31 saturates every output width:
      clamping q to the int32 range first and using the direct form gives the same result.
    """
    return rescale(q, m, e, input_bits).clamp_(*quant_bounds(num_bits))


# ---------------------------------------------------------------------------------------------
# Integer matrix multiplication
# ---------------------------------------------------------------------------------------------

#: float32 sums integers exactly while every partial sum stays below 2^24.
FLOAT32_EXACT_INT = 2**24


def int_matmul(a: torch.Tensor, b: torch.Tensor, a_bound: int = 128, b_bound: int = 128) -> torch.Tensor:
    """Exact ``a @ b`` of integer-valued tensors (|a| <= a_bound, |b| <= b_bound elementwise) as int32.

    The portable way to run an integer GEMM at float speed: a float32 GEMM is exact while every
    partial sum is below 2^24, i.e. for K * a_bound * b_bound < 2^24 (K <= 1023 for int8 x int8).
    Longer K is cut into such chunks, each exact, summed in int32 (the caller's bound
    K * a_bound * b_bound < 2^31 keeps that exact: K < 131072 for int8 x int8). Operands may be given
    as float32 already (a cached weight). On CUDA float64 is used instead (exact to 2^53; TF32 would
    make float32 inexact).

    This is the definition of the integer GEMM. Every other GEMM in the package is its twin, compared with it
    directly in tests/test_int_gemm_twins.py: the reference backend's int32 ``matmul`` and CUDA ``torch._int_mm``
    (``engine/backends/reference.int8_matmul``), onnxruntime's ``MatMulInteger`` in the cpu backend
    (``engine/backends/ort_gemm``) and in the exported graph (``engine/backends/onnx_graph``), and the native C++
    GEMM at every ISA level.
    """
    K = a.shape[-1]
    if K * a_bound * b_bound >= 2**31:
        raise OverflowRiskError(f"int_matmul: K={K} x {a_bound} x {b_bound} can exceed the int32 accumulator")
    if a.is_cuda:
        return torch.matmul(a.double(), b.double()).int()
    chunk = max(1, (FLOAT32_EXACT_INT - 1) // (a_bound * b_bound))
    af, bf = a.float(), b.float()
    if K <= chunk:
        return torch.matmul(af, bf).int()
    out = None
    for k0 in range(0, K, chunk):
        part = torch.matmul(af[..., k0 : k0 + chunk], bf[..., k0 : k0 + chunk, :]).int()
        out = part if out is None else out + part
    return out


# ---------------------------------------------------------------------------------------------
# i-GELU (paper Alg. 2)
# ---------------------------------------------------------------------------------------------


def gelu_constants(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer constants of i-GELU for input scale S (per channel allowed) and its output scale.

    With s = S / 1.4142 (the input of erf is x / sqrt 2):
      b_int = floor(b / s), c_int = floor((1/a) / s^2), S_erf = a * s^2 * 2^14 (negative: a < 0),
      one_int = floor(1 / S_erf) (the "+1" of GELU = x/2 (1 + erf)),
      S_out = |S * S_erf / 2| (the sign is folded into the integers, see :func:`int_gelu`).
    Returns (b_int, c_int, one_int, S_out); the constants are int64.
    """
    s = scale.double() / GELU_SQRT2
    b_int = torch.floor(GELU_B / s).long()
    c_int = torch.floor(GELU_C_OVER_A / s**2).long()
    s_erf = GELU_A * s**2 * 2.0**GELU_SHIFT
    one_int = torch.floor(1.0 / s_erf).long()
    s_out = (scale.double() * s_erf / 2).abs()
    return b_int, c_int, one_int, s_out.to(scale.dtype)


def int_gelu(q: torch.Tensor, b_int: torch.Tensor, c_int: torch.Tensor, one_int: torch.Tensor) -> torch.Tensor:
    """i-GELU on integers: GELU(q*S) ~ int_gelu(q) * S_out (constants from :func:`gelu_constants`).

      t   = min(|q|, -b_int)
      erf = sign(q) * ((t + b_int)^2 + c_int) >> 14     (floor; the i-erf polynomial, a < 0)
      out = -q * (erf + one_int)                        (sign folded: S_erf < 0)

    Bounds (int64): |q| is a GEMM accumulator (< 2^31); (t + b)^2 <= b_int^2 and |c_int| ~ 1.1 b_int^2,
    with c_int < 0 < (t + b)^2, so |erf| <= |c_int| / 2^14 and |one| ~ |c_int| / 2^14. For S >= 2^-20,
    |b_int| < 2^22, |c_int| < 2^43 and |q * (erf + one)| < 2^31 * 2^30 = 2^61 < 2^62. The bound is
    checked where the scales are fixed (``IntGELU`` / freeze).
    """
    t = torch.minimum(q.abs(), -b_int)
    erf = torch.sign(q) * ((t + b_int) ** 2 + c_int)
    erf = erf >> GELU_SHIFT
    return -q * (erf + one_int)


# ---------------------------------------------------------------------------------------------
# i-exp softmax (paper Alg. 3)
# ---------------------------------------------------------------------------------------------


def softmax_constants(scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Integer constants of the i-exp softmax for a per-tensor score scale S (a 1-element tensor).

    pre_shift p: the smallest p >= 0 with S' = S*2^p >= 2^-14; scores are shifted right by p bits
    (floor) first, which keeps c_int < 2^30 (see EXP_MIN_INPUT_SCALE). Then
    x0_int = floor(-ln2 / S') (< 0), b_int = floor(b / S'), c_int = floor(c / S'^2), and (m, e) the
    dyadic of a * S'^2 * 2^15, which turns the polynomial into exp(x) * 2^15. Tensor ops only, so
    no host synchronisation.
    """
    s = scale.double().reshape(())
    p = torch.ceil(torch.log2(EXP_MIN_INPUT_SCALE / s)).clamp(min=0)
    # The rounded division and log2 may land one off near powers of two (either way): step up if the
    # shift is short (s one ulp below 2^-20 gave p = 5), then down if the smaller shift still suffices.
    p = torch.where(s * 2.0**p < EXP_MIN_INPUT_SCALE, p + 1, p)
    p = torch.where((p > 0) & (s * 2.0 ** (p - 1) >= EXP_MIN_INPUT_SCALE), p - 1, p)
    s = s * 2.0**p
    m, e = dyadic(EXP_A * s * s * 2.0**EXP_FRAC_BITS)
    x0 = torch.floor(-EXP_LN2 / s).long()
    return {
        "pre_shift": p.long(),
        "x0": x0,
        # ceil(2^33 / -x0): z = floor(x / x0) by one multiply, exact for the clamped x (see int_softmax).
        "zm": torch.div(2**EXP_Z_SHIFT - x0 - 1, -x0, rounding_mode="floor"),
        "b": torch.floor(EXP_B / s).long(),
        "c": torch.floor(EXP_C / s**2).long(),
        "m": m,
        "e": e,
    }


def int_softmax(
    q: torch.Tensor, mask: torch.Tensor | None, consts: dict[str, int], output_bit: int = 8
) -> torch.Tensor:
    """Integer softmax over the last dim: probabilities as integers with scale 2^-output_bit.

    q: integer scores (|q| < 2^31) at scale S; mask: bool, True = attend (broadcastable), or None.
      q >>= pre_shift;  q -= max(q)                 (<= 0; masked positions excluded from the max)
      q  = max(q, 30 * x0)                           (exp(-30 ln2) ~ 1e-9 is 0 at 15 fraction bits)
      z  = q // x0 (>= 0), r = q - z*x0 in (x0, 0]  (exp(q S) = 2^-z exp(r S))
           computed as (n * zm) >> 33 with n = -q in [0, 30 d], d = -x0 <= 11356 (S >= 2^-14),
           zm = ceil(2^33 / d) = (2^33 + delta) / d, 0 <= delta < d: with n = z d + r',
           n zm / 2^33 = z + r'/d + n delta / (d 2^33) and n delta < 30 d^2 < 2^33, so the fraction
           stays below (r' + 1) / d <= 1 and the floor is exactly z (n zm < 2^38: int64).
      L  = (r + b) * r + c                           (0 < L < 2^30: a positive quadratic, r in (x0, 0])
      e  = round_half_up(L * m / 2^(e_m + z))        (exp(q S) * 2^15, in [0, 2^15]; L*m < 2^61)
      e  = 0 where masked
      p  = (e * floor(2^32 / max(sum e, 1))) >> (32 - output_bit)   (e*factor <= 2^47)
      p  = min(p, 2^output_bit - 1)                  (the reference can emit 256 for 8 bits: fix (f))
    A fully masked row gives all zeros.
    """
    x = q.long() >> consts["pre_shift"]  # int64: the masked sentinel below is far outside int32
    neg_big = torch.iinfo(torch.int64).min // 4
    if mask is not None:
        x = torch.where(mask, x, torch.full_like(x, neg_big))
    x = x - x.amax(dim=-1, keepdim=True).clamp(min=neg_big + 1)
    x0 = consts["x0"]
    x = torch.clamp(x, min=EXP_MAX_HALVINGS * x0)
    z = ((-x) * consts["zm"]) >> EXP_Z_SHIFT  # = floor(x / x0), without a division (below)
    r = x - x0 * z
    poly = (r + consts["b"]) * r + consts["c"]
    shift = (z + consts["e"]).clamp(max=DYADIC_MAX_SHIFT)
    e = _round_shift(poly * consts["m"], shift).clamp_(0, 2**EXP_FRAC_BITS)
    if mask is not None:
        e = torch.where(mask, e, torch.zeros_like(e))
    total = e.sum(dim=-1, keepdim=True).clamp(min=1)
    factor = torch.div(torch.full_like(total, 2**SOFTMAX_SUM_BITS), total, rounding_mode="floor")
    out = (e * factor) >> (SOFTMAX_SUM_BITS - output_bit)
    return out.clamp_(max=2**output_bit - 1)


# ---------------------------------------------------------------------------------------------
# Integer LayerNorm
# ---------------------------------------------------------------------------------------------


def _bit_length(n: torch.Tensor) -> torch.Tensor:
    """Number of bits of non-negative int64 values (0 for 0), by binary search on shifts."""
    bl = torch.zeros_like(n)
    v = n
    for s in (32, 16, 8, 4, 2, 1):
        big = (v >> s) > 0
        bl = bl + big.long() * s
        v = torch.where(big, v >> s, v)
    return bl + (v > 0).long()


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) of non-negative int64 values < 2^62, exactly (paper Alg. 4, vectorised).

    Integer Newton x <- (x + n // x) // 2 from x0 = 2^ceil(bits(n)/2) >= sqrt(n). From above the
    iteration decreases monotonically to floor(sqrt n) and then may oscillate to +1, so the running
    minimum is kept. The relative error e_{k+1} <= e_k^2 / 2 from e_0 <= 1 is below 2^-31 after six
    steps, enough for results < 2^31; a seventh absorbs the integer floors.
    """
    x = torch.ones_like(n) << ((_bit_length(n) + 1) >> 1)
    for _ in range(7):
        nxt = (x + torch.div(n, x.clamp(min=1), rounding_mode="floor")) >> 1
        x = torch.minimum(x, nxt)
    return x


def layernorm_shift(q: torch.Tensor) -> torch.Tensor:
    """Smallest right shift s with sum((y >> s)^2) < 2^32 over the last dim, y = q - mean (0-dim int64).

    Starts from the reference's rule s0 = ceil(log2(sqrt(sum y^2 / 2^32))) (float64, from the exact
    integer sum) and then checks s0-2 .. s0+2 exactly in integers: ``>>`` floors, so a negative y
    keeps the larger magnitude ceil(|y| / 2^s) and s0 can be one short (sum 2^32 + 5528 at s0 for a
    C = 768 row), and float rounding near powers of two can move s0 by one either way. s0 + 1 always
    suffices: sum((|y| >> s)^2) <= V/4^s + 2 sqrt(C V)/2^s + C < 2^30 + 2^16 sqrt(C) + C < 2^32.
    The predicate is monotone in s, so the smallest passing candidate is the answer. Runs only while
    calibrating, never in the integer forward; tensor ops only (no host synchronisation).
    """
    y = q - _row_mean(q)
    var = (y * y).sum(dim=-1).double()
    est = torch.ceil(torch.log2(torch.sqrt(var / 2.0**LN_VAR_BITS).clamp(min=1e-30))).clamp(min=0)
    est = est.max().long()
    best = est + 2
    for d in (1, 0, -1, -2):  # descending: the last candidate that passes is the smallest
        s = (est + d).clamp(min=0)
        ys = y >> s
        ok = ((ys * ys).sum(dim=-1) < 2**LN_VAR_BITS).all()
        best = torch.where(ok, s, best)
    return best


def _row_mean(q: torch.Tensor) -> torch.Tensor:
    """round_half_up(mean(q)) over the last dim: floor((2*sum + C) / (2*C)); |sum| < 2^22 * C."""
    C = q.shape[-1]
    return torch.div(2 * q.sum(dim=-1, keepdim=True) + C, 2 * C, rounding_mode="floor")


def layernorm_constants(
    weight: torch.Tensor, bias: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer LayerNorm affine constants: (sign, bias_int, S_out) per channel.

    The normalised integers carry scale S = sqrt(C) / 2^30. The affine part gamma*n + beta is folded
    into the scale: out = sign(gamma) * (n + bias_int) with bias_int = floor(beta/gamma / S) and
    S_out = S * |gamma|. |gamma| is raised to at least |beta| / (S * (2^30 - 1)) so |bias_int| < 2^30
    and the output fits int32 (a channel with |beta/gamma| > ~sqrt(C) and gamma = 0 would otherwise
    need an unbounded integer; the reference gives inf/NaN there).
    """
    s = math.sqrt(dim) / 2.0**LN_OUTPUT_FRAC_BITS
    g = weight.double()
    b = bias.double()
    g_abs = torch.maximum(g.abs(), b.abs() / (s * (2.0**LN_OUTPUT_FRAC_BITS - 1)))
    g_abs = g_abs.clamp(min=1e-30)
    sign = torch.where(g < 0, -1, 1).long()
    bias_int = torch.floor(b * sign / g_abs / s).long()
    return sign, bias_int, (s * g_abs).to(weight.dtype)


def int_layernorm(q: torch.Tensor, shift: torch.Tensor, sign: torch.Tensor, bias_int: torch.Tensor) -> torch.Tensor:
    """Integer LayerNorm over the last dim of int64 q (|q| < 2^22); output int32-range int64.

      y    = q - round_half_up(mean q)                   (|y| < 2^23)
      var  = sum((y >> shift)^2)                         (< C * 2^46, exact in int64)
      std  = max(isqrt(var) << shift, 1)                 (max(., 1): a constant row gives 0, not NaN: fix (e))
      n    = (y * 2^30) // std                           (~ y / std * 2^30; |y * 2^30| < 2^53; std < 2^32
                                                          since sum y^2 < C 2^46, C < 2^16; see floor_div_by_reciprocal)
      out  = clamp(sign * (n + bias_int), int32)         (scale S_out from layernorm_constants)

    The reference computes n as floor(y * floor(2^31 / std) / 2), whose inner floor has a relative
    error up to std / 2^31 (2.6% for 22-bit rows of C = 768); one floor division is exact.
    """
    y = q - _row_mean(q)
    ys = y >> shift
    var = (ys * ys).sum(dim=-1, keepdim=True)
    std = (isqrt(var) << shift).clamp(min=1)
    n = floor_div_by_reciprocal(y, std)
    return (sign * (n + bias_int)).clamp_(INT32_MIN, INT32_MAX)


def floor_div_by_reciprocal(y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """floor(y * 2^30 / d) for int64 |y| < 2^23 and 1 <= d < 2^32 (d broadcast per row), exactly.

    The same number as ``torch.div(y << 30, d, rounding_mode="floor")`` with one division per row
    instead of one per element (integer division does not vectorise; this halves LayerNorm's time):
      R  = floor(2^62 / d) = Rh 2^31 + Rl                      (per row; Rh <= 2^31, Rl < 2^31)
      q0 = (y Rh + ((y Rl) >> 31)) >> 1 ~ y R / 2^32             (|y Rh|, |y Rl| < 2^54)
    With X = y 2^30 / d: y R / 2^32 = X - y eps / 2^32 (0 <= eps < 1, so within 2^-9 of X) and the two
    floors lose less than 1.5, so q0 is in [floor(X) - 2, floor(X) + 1]. The remainder
    r = y 2^30 - q0 d (|.| < 2^54) then moves q0 to the one value with 0 <= r < d: one step down, two up.
    """
    R = torch.div(torch.full_like(d, 2**62), d, rounding_mode="floor")
    q = (y * (R >> 31) + ((y * (R & (2**31 - 1))) >> 31)) >> 1
    r = (y << LN_OUTPUT_FRAC_BITS) - q * d
    low = r < 0
    q, r = q - low.long(), r + low.long() * d
    for _ in range(2):
        high = r >= d
        q, r = q + high.long(), r - high.long() * d
    return q
