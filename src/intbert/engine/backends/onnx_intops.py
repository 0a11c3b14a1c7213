"""I-BERT's integer functions as ONNX subgraphs, bit-identical to ``intbert.quantization.intops``.

The ops of the ONNX graph backend (:mod:`.onnx_graph`), which the exporter runs the engine's ``encode`` on. Each
builder appends nodes to a :class:`GraphBuilder` and returns the name of its output tensor. Its twin in
``intops`` (named in each docstring) is the definition: tests/test_export_ibert_onnx.py runs every builder alone in
onnxruntime on range-edge integers and compares with the twin with ``np.array_equal``.

Tensor convention: integer activations are int64 (GEMM operands are uint8, GEMM results int32); constants are
numpy arrays baked in as initializers. Every op used here has an int64 (or uint64) kernel in onnxruntime's CPU
provider: Add, Sub, Mul, Div, Mod, Min, Max, Clip, Abs, Neg, Sign, Where, ReduceSum, ReduceMax, GreaterOrEqual,
Gather, Cast, and BitShift / Add / Sub on uint64.

Rounding is where ONNX and intops part ways, so three exact detours are used, each stated where it is used:

* **Signed floor shift** (intops' ``>>`` on int64, and its round-half-up ``(v + 2^(s-1)) >> s``). ONNX
  ``BitShift`` takes unsigned types only, and a logical shift of a negative number is not a floor. In offset
  binary it is: for int64 v and 0 <= s <= 63, u = v + 2^63 lies in [0, 2^64), so as a uint64
  ``u >> s = floor(v / 2^s) + 2^(63-s)`` exactly (2^63 is a multiple of 2^s); subtracting 2^(63-s) and
  reinterpreting the bits as int64 gives floor(v / 2^s). onnxruntime's Cast between int64 and uint64 keeps the
  bits (a static_cast, modulo 2^64) and uint64 Add/Sub wrap modulo 2^64, so no step can overflow; a rounding
  offset o rides in the same Add and needs only v + o in the int64 range. s = 63 works as well (2^63 fits in a
  uint64), so a shift never has to be split in two.
* **Floor division by a positive d** that is not a power of two (LayerNorm's mean and normalisation): Mod with
  ``fmod=0`` takes the divisor's sign, so ``a - Mod(a, d)`` is an exact multiple of d and ``Div`` (which
  truncates toward zero) divides it without rounding.
* **Division of two numbers of the same sign** (i-exp's ``x // x0`` with x <= 0 and x0 < 0, the softmax
  normalisation and isqrt's Newton step on non-negative values): the quotient is >= 0, where truncation is floor,
  so ``Div`` is used as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from ...quantization import intops

#: onnx TensorProto data types used here (numbers fixed by the ONNX standard; onnx is imported lazily).
INT8, UINT8, INT32, INT64, UINT64, FLOAT, BOOL = 3, 2, 6, 7, 13, 1, 9

#: Offset of offset-binary int64 <-> uint64 (module docstring).
_OFFSET = 2**63
_U64_MOD = 2**64
#: i-exp masks a position by moving its score this far down (intops.int_softmax's sentinel, min int64 // 4).
SOFTMAX_MASKED = np.iinfo(np.int64).min // 4


class GraphBuilder:
    """Collects ONNX nodes and initializers with unique, scoped names.

    ``op`` adds one node and returns its output name; ``const`` adds an initializer (small constants are
    shared: one initializer per distinct dtype, shape and value). ``scope("layer.0.")`` prefixes names.
    """

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._used: set[str] = set()
        self._shared: dict[tuple, str] = {}
        self._prefix = ""

    @contextlib.contextmanager
    def scope(self, prefix: str, *, absolute: bool = False) -> Iterator[None]:
        """Names made inside start with the current prefix + ``prefix`` (or ``prefix`` alone when ``absolute``)."""
        outer = self._prefix
        self._prefix = prefix if absolute else outer + prefix
        try:
            yield
        finally:
            self._prefix = outer

    def fresh(self, hint: str) -> str:
        base = self._prefix + hint
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> str:
        """Claim an exact name (a graph input or output)."""
        if name in self._used:
            raise ValueError(f"tensor name {name!r} is already used")
        self._used.add(name)
        return name

    def const(self, value, dtype, hint: str = "c") -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 256 else None
        if key is not None and key in self._shared:
            return self._shared[key]
        if key is None:
            name = self.fresh(hint)
        else:  # shared by many scopes: named at the root
            outer, self._prefix = self._prefix, ""
            name = self.fresh(f"const.{hint}")
            self._prefix = outer
            self._shared[key] = name
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def i64(self, value, hint: str = "i64") -> str:
        return self.const(value, np.int64, hint)

    def u64(self, value, hint: str = "u64") -> str:
        return self.const(_as_u64(value), np.uint64, hint)

    def op(self, op_type: str, inputs, hint: str | None = None, outputs: int | list[str] = 1, **attrs):
        names = outputs if isinstance(outputs, list) else [self.fresh(hint or op_type) for _ in range(outputs)]
        self.nodes.append(self._helper.make_node(op_type, list(inputs), names, name=self.fresh(f"{op_type}."),
                                                 **attrs))
        return names[0] if len(names) == 1 else names


def _as_u64(value) -> np.ndarray:
    """Integers (possibly >= 2^63, or negative) modulo 2^64 as a uint64 array of the same shape."""
    array = np.asarray(value, dtype=object)
    return np.array([int(v) % _U64_MOD for v in array.ravel()], dtype=np.uint64).reshape(array.shape)


def half_of(shift: np.ndarray) -> np.ndarray:
    """2^(s-1) for s >= 1 and 0 for s = 0: the round-half-up offset of a shift by s (intops._half)."""
    shift = np.asarray(shift, dtype=np.int64)
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Shifts and floor divisions
# ---------------------------------------------------------------------------------------------


def shift_right(g: GraphBuilder, x: str, shift, offset=None, *, nonnegative: bool = False) -> str:
    """floor((x + offset) / 2^shift) of int64 ``x``: intops' ``(x + offset) >> shift``.

    ``shift``: constant (array broadcasting against x, values 0..63) or the name of an int64 tensor (0..63).
    ``offset``: None (0), ``"half"`` (2^(shift-1), 0 for shift 0: round half up, intops._round_shift) or a
    constant int64 array. Offset binary (module docstring): exact for every x with x + offset in the int64 range.
    ``nonnegative=True`` skips the 2^63 offset where the caller guarantees 0 <= x + offset < 2^63.
    """
    if isinstance(shift, str):
        if offset not in (None, "half"):
            raise ValueError("a tensor shift takes offset None or 'half'")
        s = g.op("Cast", [shift], "shift.u64", to=UINT64)
        u = g.op("Cast", [x], "u64", to=UINT64)
        if not nonnegative:
            u = g.op("Add", [u, g.u64(_OFFSET, "two63")], "biased")
        if offset == "half":
            # 2^(s-1) = (1 << s) >> 1, and 0 for s = 0; 1 << 63 fits a uint64.
            one = g.u64(1, "one")
            half = g.op("BitShift", [g.op("BitShift", [one, s], "pow2", direction="LEFT"), one], "half",
                        direction="RIGHT")
            u = g.op("Add", [u, half], "rounded")
        u = g.op("BitShift", [u, s], "shifted", direction="RIGHT")
        if not nonnegative:
            u = g.op("Sub", [u, g.op("BitShift", [g.u64(_OFFSET, "two63"), s], "bias", direction="RIGHT")],
                     "unbiased")
        return g.op("Cast", [u], "floor_shift", to=INT64)

    shift = np.asarray(shift, dtype=np.int64)
    if shift.size and (shift.min() < 0 or shift.max() > 63):
        raise ValueError(f"shift {shift.min()}..{shift.max()} is outside 0..63")
    if offset is None:
        off = np.zeros_like(shift)
    elif isinstance(offset, str):
        if offset != "half":
            raise ValueError(f"offset must be None, 'half' or an int array, got {offset!r}")
        off = half_of(shift)
    else:
        off = np.asarray(offset, dtype=np.int64)
    if not shift.any() and not off.any():
        return x
    bias = np.asarray(off, dtype=object) + (0 if nonnegative else _OFFSET)  # Python ints: no int64 overflow here
    u = g.op("Cast", [x], "u64", to=UINT64)
    if np.any(bias != 0):
        u = g.op("Add", [u, g.u64(bias, "bias")], "biased")
    if shift.any():
        u = g.op("BitShift", [u, g.u64(shift, "shift")], "shifted", direction="RIGHT")
    if not nonnegative:
        unbias = np.array([_OFFSET >> int(v) for v in shift.ravel()], dtype=object).reshape(shift.shape)
        u = g.op("Sub", [u, g.u64(unbias, "unbias")], "unbiased")
    return g.op("Cast", [u], "floor_shift", to=INT64)


def floor_div(g: GraphBuilder, a: str, d) -> str:
    """floor(a / d) for int64 ``a`` and a positive divisor ``d`` (constant or tensor): ``torch.div(a, d, "floor")``.

    Mod(a, d) with fmod=0 lies in [0, d) for d > 0, so a - Mod(a, d) is an exact multiple of d and the truncating
    Div returns floor(a / d) exactly. Needs |a| + d < 2^63.
    """
    d = d if isinstance(d, str) else g.i64(d, "divisor")
    return g.op("Div", [g.op("Sub", [a, g.op("Mod", [a, d], "mod", fmod=0)], "multiple"), d], "floor_div")


def clip(g: GraphBuilder, x: str, lo: int | None, hi: int | None) -> str:
    """``x.clamp(lo, hi)`` on int64 (Clip takes scalar bounds of x's type)."""
    return g.op("Clip", [x, g.i64(lo, "lo") if lo is not None else "", g.i64(hi, "hi") if hi is not None else ""],
                "clip")


# ---------------------------------------------------------------------------------------------
# Requantization (intops.rescale / intops.requantize) and residual adds
# ---------------------------------------------------------------------------------------------

#: The 47-bit path splits q at this bit (intops.rescale).
_SPLIT_BITS = 16


def rescale(g: GraphBuilder, q: str, m: np.ndarray, e: np.ndarray, input_bits: int) -> str:
    """round_half_up(q * m / 2^e), unclamped: twin of ``intops.rescale(q, m, e, input_bits)``.

    m in [0, 2^31), e in [0, 63] (per tensor (1,) or per channel (C,) on the last dim).

    * input_bits <= 31: |q m| < 2^31 * 2^31 = 2^62 and the offset 2^(e-1) <= 2^62, so q m + 2^(e-1) fits int64.
    * wider q (< 2^47, i-GELU outputs), channels with e >= 16: q = qh 2^16 + ql with ql = q mod 2^16 in [0, 2^16)
      and |qh| < 2^31; low = (ql m + 2^(e-1)) >> 16 (ql m < 2^47, plus at most 2^62: non-negative, < 2^63) and
      result = (qh m + low) >> (e - 16) (|qh m| < 2^62, low < 2^47).
    * wider q, channels with e < 16: q clamped to [-2^31 + 1, 2^31 - 1] first, then the narrow form (intops: the
      ratio m / 2^e > 2^14 saturates any output for larger |q|).
    Mixed channels compute both forms and pick per channel (a constant Where), as intops does.
    """
    m = np.asarray(m, dtype=np.int64).reshape(-1)
    e = np.asarray(e, dtype=np.int64).reshape(-1)

    def direct(x: str) -> str:
        return shift_right(g, g.op("Mul", [x, g.i64(m, "m")], "qm"), e, "half")

    if input_bits <= intops.REQUANT_NARROW_BITS:
        return direct(q)
    wide = e >= _SPLIT_BITS
    narrow_out = split_out = None
    if not wide.all():
        narrow_out = direct(clip(g, q, intops.INT32_MIN + 1, intops.INT32_MAX))
    if wide.any():
        qh = shift_right(g, q, np.array(_SPLIT_BITS))  # q >> 16 (floor)
        ql = g.op("Sub", [q, g.op("Mul", [qh, g.i64(2**_SPLIT_BITS, "two16")], "qh_scaled")], "ql")  # q & 0xFFFF
        low = shift_right(g, g.op("Mul", [ql, g.i64(m, "m")], "qlm"), np.array(_SPLIT_BITS), half_of(e),
                          nonnegative=True)
        high = g.op("Add", [g.op("Mul", [qh, g.i64(m, "m")], "qhm"), low], "high")
        split_out = shift_right(g, high, np.maximum(e - _SPLIT_BITS, 0))
    if narrow_out is None:
        return split_out
    if split_out is None:
        return narrow_out
    return g.op("Where", [g.const(wide, np.bool_, "wide"), split_out, narrow_out], "rescaled")


def requantize(g: GraphBuilder, q: str, m: np.ndarray, e: np.ndarray, bits: int, input_bits: int) -> str:
    """clamp(round_half_up(q m / 2^e), -2^(bits-1), 2^(bits-1) - 1): twin of ``intops.requantize``."""
    return clip(g, rescale(g, q, m, e, input_bits), *intops.quant_bounds(bits))


def residual(g: GraphBuilder, a: str, b: str, rq_a: dict, rq_b: dict, bits: int) -> str:
    """clamp(rescale(a) + rescale(b)) on ``bits`` bits: twin of the reference backend's ``residual``.

    ``rq_a`` / ``rq_b``: dicts with m, e, input_bits. Each rescaled addend is below 2^62 in magnitude (a product
    below 2^62 shifted right), so their sum fits int64 before the clamp.
    """
    total = g.op("Add", [rescale(g, a, **rq_a), rescale(g, b, **rq_b)], "sum")
    return clip(g, total, *intops.quant_bounds(bits))


# ---------------------------------------------------------------------------------------------
# i-GELU (intops.int_gelu)
# ---------------------------------------------------------------------------------------------


def int_gelu(g: GraphBuilder, q: str, b: np.ndarray, c: np.ndarray, one: np.ndarray) -> str:
    """i-GELU on int64 q (|q| < 2^31), per-channel constants: twin of ``intops.int_gelu``.

      t   = min(|q|, -b)                       (b < 0: t in [0, -b])
      erf = sign(q) ((t + b)^2 + c) >> 14      (floor: a signed shift, offset binary)
      out = -q (erf + one)
    Bounds as intops: (t + b)^2 <= b^2 < 2^44 and |c| < 2^43 for input scales >= 2^-20 (checked at freeze), so
    every product stays below 2^62.
    """
    b_c, c_c, one_c = (g.i64(np.asarray(v, np.int64).reshape(-1), n) for v, n in ((b, "gelu_b"), (c, "gelu_c"),
                                                                                   (one, "gelu_one")))
    t = g.op("Min", [g.op("Abs", [q], "abs"), g.op("Neg", [b_c], "neg_b")], "t")
    tb = g.op("Add", [t, b_c], "t_plus_b")
    poly = g.op("Add", [g.op("Mul", [tb, tb], "square"), c_c], "poly")
    erf = shift_right(g, g.op("Mul", [g.op("Sign", [q], "sign"), poly], "signed_poly"), np.array(intops.GELU_SHIFT))
    return g.op("Mul", [g.op("Neg", [q], "neg_q"), g.op("Add", [erf, one_c], "erf_plus_one")], "gelu")


# ---------------------------------------------------------------------------------------------
# i-exp softmax (intops.int_softmax)
# ---------------------------------------------------------------------------------------------


def int_softmax(g: GraphBuilder, scores: str, keep: str | None, consts: dict, output_bit: int) -> str:
    """Integer softmax over the last axis: twin of ``intops.int_softmax``; int64 probabilities in [0, 2^bits - 1].

    ``scores``: int64 (|q| < 2^31); ``keep``: bool tensor broadcasting against it (True = attend) or None;
    ``consts``: pre_shift, x0, b, c, m, e as Python ints (``intops.softmax_constants``).

      x = q >> pre_shift                        (floor, offset binary)
      x = where(keep, x, -2^61); x -= max(max_row(x), -2^61 + 1)    (<= 0; a fully masked row gives -1)
      x = max(x, 30 x0)                         (x in [30 x0, 0], x0 < 0)
      z = x // x0                               (x <= 0, x0 < 0: quotient >= 0, Div truncation = floor)
      r = x - z x0                              (in (x0, 0])
      L = (r + b) r + c                         (0 < L < 2^30)
      e = round_half_up(L m / 2^min(z + e_m, 63)), clamped to [0, 2^15]   (|L m| < 2^61)
      e = where(keep, e, 0)
      p = (e floor(2^32 / max(sum e, 1))) >> (32 - bits), at most 2^bits - 1   (e factor <= 2^47, >= 0)
    """
    pre_shift, x0 = int(consts["pre_shift"]), int(consts["x0"])
    x = shift_right(g, scores, np.array(pre_shift))
    if keep is not None:
        x = g.op("Where", [keep, x, g.i64(SOFTMAX_MASKED, "masked")], "masked_scores")
    row_max = g.op("ReduceMax", [x, g.i64([-1], "last_axis")], "row_max", keepdims=1)
    row_max = g.op("Max", [row_max, g.i64(SOFTMAX_MASKED + 1, "masked_plus_one")], "row_max_floor")
    x = g.op("Sub", [x, row_max], "centred")
    x = g.op("Max", [x, g.i64(intops.EXP_MAX_HALVINGS * x0, "exp_floor")], "clamped")
    x0_c = g.i64(x0, "x0")
    z = g.op("Div", [x, x0_c], "halvings")
    r = g.op("Sub", [x, g.op("Mul", [z, x0_c], "z_x0")], "remainder")
    poly = g.op("Add", [g.op("Mul", [g.op("Add", [r, g.i64(int(consts["b"]), "exp_b")], "r_plus_b"), r], "quad"),
                        g.i64(int(consts["c"]), "exp_c")], "exp_poly")
    shift = g.op("Min", [g.op("Add", [z, g.i64(int(consts["e"]), "exp_e")], "z_plus_e"),
                         g.i64(intops.DYADIC_MAX_SHIFT, "max_shift")], "exp_shift")
    lm = g.op("Mul", [poly, g.i64(int(consts["m"]), "exp_m")], "poly_m")
    ex = clip(g, shift_right(g, lm, shift, "half"), 0, 2**intops.EXP_FRAC_BITS)
    if keep is not None:
        ex = g.op("Where", [keep, ex, g.i64(0, "zero")], "exp_kept")
    total = g.op("Max", [g.op("ReduceSum", [ex, g.i64([-1], "last_axis")], "exp_sum", keepdims=1),
                         g.i64(1, "one")], "exp_sum_floor")
    factor = g.op("Div", [g.i64(2**intops.SOFTMAX_SUM_BITS, "two32"), total], "factor")  # both > 0: floor
    probs = shift_right(g, g.op("Mul", [ex, factor], "exp_factor"), np.array(intops.SOFTMAX_SUM_BITS - output_bit),
                        nonnegative=True)
    return g.op("Min", [probs, g.i64(2**output_bit - 1, "prob_max")], "probs")


# ---------------------------------------------------------------------------------------------
# isqrt and LayerNorm (intops.isqrt / intops.int_layernorm)
# ---------------------------------------------------------------------------------------------

#: isqrt's Newton iterations (intops.isqrt).
ISQRT_STEPS = 7
#: Powers 2^0 .. 2^62: the bit-length comparison table and the starting-point lookup.
_POW2 = np.array([1 << k for k in range(63)], dtype=np.int64)


def isqrt(g: GraphBuilder, n: str) -> str:
    """floor(sqrt(n)) of int64 n in [0, 2^62), n with a last axis of size 1: twin of ``intops.isqrt``.

    Same start and the same 7 steps as the twin:

      bits = #{k in 0..62 : n >= 2^k}          (= n.bit_length(): intops' binary search, as one comparison)
      x    = 2^((bits + 1) // 2)               (a Gather from the power table; (bits + 1) >= 0: Div = floor)
      7x:  x = min(x, (x + n // max(x, 1)) // 2)   (all non-negative: Div = floor, // 2 = >> 1)
    """
    pow2 = g.i64(_POW2, "pow2")
    bits = g.op("ReduceSum", [g.op("Cast", [g.op("GreaterOrEqual", [n, pow2], "at_least")], "at_least_i64", to=INT64),
                              g.i64([-1], "last_axis")], "bit_length", keepdims=1)
    start = g.op("Div", [g.op("Add", [bits, g.i64(1, "one")], "bits_plus_one"), g.i64(2, "two")], "start_exponent")
    x = g.op("Gather", [pow2, start], "start", axis=0)  # indices (..., 1) -> (..., 1)
    for step in range(ISQRT_STEPS):
        quotient = g.op("Div", [n, g.op("Max", [x, g.i64(1, "one")], f"x{step}_floor")], f"n_over_x{step}")
        nxt = g.op("Div", [g.op("Add", [x, quotient], f"newton_sum{step}"), g.i64(2, "two")], f"newton{step}")
        x = g.op("Min", [x, nxt], f"x{step + 1}")
    return x


def int_layernorm(g: GraphBuilder, q: str, channels: int, shift: int, sign: np.ndarray, bias: np.ndarray) -> str:
    """Integer LayerNorm over the last axis of int64 q (|q| < 2^22): twin of ``intops.int_layernorm``.

      mean = floor((2 sum q + C) / (2 C))      (round half up of the row mean; |sum| < 2^22 C)
      y    = q - mean                          (|y| < 2^23)
      var  = sum((y >> shift)^2)               (floor shift, offset binary; < C 2^46 < 2^62 for C < 2^16)
      std  = max(isqrt(var) << shift, 1)
      n    = floor(y 2^30 / std)               (|y 2^30| < 2^53; floor_div through Mod)
      out  = clamp(sign (n + bias), int32)
    """
    total = g.op("ReduceSum", [q, g.i64([-1], "last_axis")], "row_sum", keepdims=1)
    numerator = g.op("Add", [g.op("Mul", [total, g.i64(2, "two")], "twice_sum"), g.i64(channels, "channels")],
                     "mean_numerator")
    mean = floor_div(g, numerator, np.int64(2 * channels))
    y = g.op("Sub", [q, mean], "centred")
    ys = shift_right(g, y, np.array(shift))
    var = g.op("ReduceSum", [g.op("Mul", [ys, ys], "squares"), g.i64([-1], "last_axis")], "variance", keepdims=1)
    std = g.op("Max", [g.op("Mul", [isqrt(g, var), g.i64(1 << shift, "two_shift")], "std_raw"), g.i64(1, "one")],
               "std")
    n = floor_div(g, g.op("Mul", [y, g.i64(1 << intops.LN_OUTPUT_FRAC_BITS, "two30")], "y_scaled"), std)
    signed = g.op("Mul", [g.i64(np.asarray(sign, np.int64).reshape(-1), "ln_sign"),
                          g.op("Add", [n, g.i64(np.asarray(bias, np.int64).reshape(-1), "ln_bias")], "n_plus_bias")],
                  "affine")
    return clip(g, signed, intops.INT32_MIN, intops.INT32_MAX)
