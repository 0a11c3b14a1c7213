"""The frozen engine's integer state: one small module per kind of constant, buffers only.

Everything here is computed once by :func:`intbert.engine.freeze` from a calibrated simulation and
never changes; a backend reads these buffers. They are ``nn.Module`` s so that ``.to(device)``,
``state_dict`` and safetensors work as for any model. Integer widths (the bounds are checked at freeze):

* ``IntLinear``: int8 weights [N, K] (|w| <= 2^(wb-1)-1), int32 bias with |bias| + K*128*2^(wb-1) < 2^31.
* ``Requant``: dyadic m in [0, 2^31), shift e in [0, 63] (int64), per tensor (1,) or per channel (C,).
* i-GELU / i-exp / LayerNorm constants: int64 (their bounds are written in ``intops``).

Each kind has a ``validate`` that checks these bounds (and exact shapes) on a loaded file: the loader calls
it for every constant, and ``freeze`` for what it built, so a file can hold nothing freeze would not write.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointIntegrityError
from ..quantization import intops

#: Bounds a loaded constant must meet: the ones freeze guarantees and the kernels rely on (intops says why).
#: Activation integers feeding a GEMM are int8, so |x| <= 128.
GEMM_INPUT_BOUND = 128
#: Requantization input widths up to i-GELU's output (intops.requantize splits wider-than-31-bit inputs).
MAX_REQUANT_INPUT_BITS = intops.GELU_OUTPUT_BITS
#: i-exp: d = -x0 <= ln2 * 2^14 (scores pre-shifted to S >= 2^-14), b < 2^16, c < 2^30 (see int_softmax).
SOFTMAX_MAX_X0 = 11356
#: i-GELU for input scales >= 2^-20 (see int_gelu): |b| < 2^22, |c| < 2^43, |one| < 2^29; all negative.
GELU_MAX_B_BITS, GELU_MAX_C_BITS, GELU_MAX_ONE_BITS = 22, 43, 29
#: LayerNorm: |bias_int| < 2^30 (layernorm_constants); shift <= 22 keeps std = isqrt(var) << shift below 2^32
#: for |y| < 2^23 and C < 2^16 (floor_div_by_reciprocal's bound).
LN_MAX_BIAS_BITS, LN_MAX_SHIFT, LN_MAX_CHANNELS = 30, intops.LN_INPUT_BITS, 2**16


def _require(ok: bool, where: str, what: str, error: type[Exception]) -> None:
    if not ok:
        raise error(f"{where}: {what}")


def _check_tensor(t: torch.Tensor, where: str, dtype: torch.dtype, shape: tuple, error) -> None:
    """Exact dtype and shape: a per-channel constant cut to (1,) would broadcast, so (1,) is not (C,)."""
    _require(t.dtype == dtype and tuple(t.shape) == shape, where,
             f"expected {dtype} {shape}, found {t.dtype} {tuple(t.shape)}", error)


def _check_range(t: torch.Tensor, where: str, lo: int, hi: int, error) -> None:
    """Every value in [lo, hi] (one host sync)."""
    if t.numel():
        tmin, tmax = int(t.min()), int(t.max())
        _require(lo <= tmin and tmax <= hi, where, f"values {tmin}..{tmax} outside [{lo}, {hi}]", error)



def storage_dtype(bits: int, signed: bool = True) -> torch.dtype:
    """The torch integer dtype that holds a ``bits``-bit integer: int8, else int32, else int64.

    No int16: the 16-bit embedding sums are kept in int32 because the compiled kernels read int16
    about 3x slower (scalar conversion loops) and the tensors are small.
    """
    if not signed:
        return torch.uint8 if bits <= 8 else storage_dtype(bits + 1)
    return torch.int8 if bits <= 8 else torch.int32 if bits <= 32 else torch.int64


class _Constants(nn.Module):
    """Buffers named in BUFFERS (+ the Python ints named in SPEC, saved as an int64 ``spec`` buffer).

    ``from_state`` rebuilds a module from a loaded state dict, shapes included, so a saved engine
    loads without the simulation model.
    """

    BUFFERS: tuple[str, ...] = ()
    SPEC: tuple[str, ...] = ()

    def _set(self, buffers: dict[str, torch.Tensor], spec: dict[str, int]):
        for name in self.BUFFERS:
            self.register_buffer(name, buffers[name].contiguous())
        if self.SPEC:
            self.register_buffer("spec", torch.tensor([spec[n] for n in self.SPEC], dtype=torch.int64))
            for name in self.SPEC:
                setattr(self, name, int(spec[name]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.SPEC:
            for name, value in zip(self.SPEC, self.spec.tolist()):
                setattr(self, name, int(value))

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str):
        spec = tensors[prefix + "spec"].tolist() if cls.SPEC else []
        return cls(**{n: tensors[prefix + n] for n in cls.BUFFERS}, **dict(zip(cls.SPEC, spec)))


class IntLinear(_Constants):
    """y = x @ W^T + b on integers: int8 x int8 -> int32 accumulator (bias included)."""

    BUFFERS, SPEC = ("weight", "bias"), ("weight_bit",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, weight_bit: int):
        super().__init__()
        self._set({"weight": weight.to(torch.int8), "bias": bias.to(torch.int32)}, {"weight_bit": weight_bit})

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def validate(self, where: str, error: type[Exception] = CheckpointIntegrityError) -> None:
        """int8 weights of ``weight_bit`` bits, int32 bias with K * 128 * 2^(wb-1) + max|bias| <= 2^31 - 1."""
        _require(self.weight.dim() == 2, f"{where}.weight", f"expected 2 dims, found {self.weight.dim()}", error)
        N, K = self.weight.shape
        _require(2 <= self.weight_bit <= 8, f"{where}.spec", f"weight_bit {self.weight_bit} outside [2, 8]", error)
        top = 2 ** (self.weight_bit - 1) - 1
        _check_tensor(self.weight, f"{where}.weight", torch.int8, (N, K), error)
        _check_range(self.weight, f"{where}.weight", -top, top, error)
        _check_tensor(self.bias, f"{where}.bias", torch.int32, (N,), error)
        room = intops.INT32_MAX - K * GEMM_INPUT_BOUND * (top + 1)
        _require(room >= 0, where, f"K={K} x 128 x 2^{self.weight_bit - 1} overflows the int32 accumulator", error)
        _check_range(self.bias, f"{where}.bias", -room, room, error)


class Requant(_Constants):
    """y = clamp(round_half_up(q * m / 2^e), -2^(bits-1), 2^(bits-1)-1) for |q| < 2^input_bits.

    ``scale`` (float32) is the output's scale, kept only to dequantize at the ends of the encoder: (1,), or (C,) at a
    layer boundary of a smoothed model (``intbert.smooth``), whose integers stand for the hidden states divided by the
    smoothing factor of the next layer, so that ``output_hidden_states`` gives their true values.
    """

    BUFFERS, SPEC = ("m", "e", "scale"), ("bits", "input_bits")

    def __init__(self, m: torch.Tensor, e: torch.Tensor, scale: torch.Tensor, bits: int, input_bits: int):
        super().__init__()
        self._set({"m": m.to(torch.int64).reshape(-1), "e": e.to(torch.int64).reshape(-1),
                   "scale": scale.detach().to(torch.float32).reshape(-1)}, {"bits": bits, "input_bits": input_bits})

    @property
    def dtype(self) -> torch.dtype:
        return storage_dtype(self.bits)

    def validate(self, where: str, channels: int, error: type[Exception] = CheckpointIntegrityError) -> None:
        """m in [0, 2^31) and e in [0, 63] (int64, ``channels`` of each), a positive finite float32 scale (1,) (or
        (channels,): a smoothed boundary), output bits in [2, 32], input bits in [1, 47]."""
        _check_tensor(self.m, f"{where}.m", torch.int64, (channels,), error)
        _check_tensor(self.e, f"{where}.e", torch.int64, (channels,), error)
        _check_range(self.m, f"{where}.m", 0, 2**intops.DYADIC_MANTISSA_BITS - 1, error)
        _check_range(self.e, f"{where}.e", 0, intops.DYADIC_MAX_SHIFT, error)
        scale_shape = (channels,) if channels > 1 and self.scale.numel() == channels else (1,)
        _check_tensor(self.scale, f"{where}.scale", torch.float32, scale_shape, error)
        _require(bool(torch.isfinite(self.scale).all()) and bool((self.scale > 0).all()), f"{where}.scale",
                 f"{self.scale.tolist()} is not a positive number", error)
        _require(2 <= self.bits <= 32, f"{where}.spec", f"output bits {self.bits} outside [2, 32]", error)
        _require(1 <= self.input_bits <= MAX_REQUANT_INPUT_BITS, f"{where}.spec",
                 f"input bits {self.input_bits} outside [1, {MAX_REQUANT_INPUT_BITS}]", error)


class ResidualRequant(nn.Module):
    """y = clamp(rescale(a) + rescale(b)): a residual add onto one grid, each addend rounded on its own."""

    def __init__(self, a: Requant, b: Requant):
        super().__init__()
        self.a, self.b = a, b

    @property
    def bits(self) -> int:
        return self.a.bits

    @classmethod
    def from_state(cls, tensors, prefix):
        return cls(Requant.from_state(tensors, prefix + "a."), Requant.from_state(tensors, prefix + "b."))

    def validate(self, where: str, channels: tuple[int, int], error: type[Exception] = CheckpointIntegrityError) -> None:
        """Both addends' requantizations (``channels`` of a and of b), onto one grid of one width."""
        self.a.validate(f"{where}.a", channels[0], error)
        self.b.validate(f"{where}.b", channels[1], error)
        _require(self.a.bits == self.b.bits, where, f"addends of {self.a.bits} and {self.b.bits} bits", error)


class SoftmaxConstants(_Constants):
    """i-exp softmax constants (``intops.softmax_constants``); probabilities are uint8 at 2^-output_bit."""

    BUFFERS, SPEC = ("pre_shift", "x0", "zm", "b", "c", "m", "e"), ("output_bit",)

    def __init__(self, output_bit: int, **consts: torch.Tensor):
        super().__init__()
        self._set({n: consts[n].to(torch.int64).reshape(()) for n in self.BUFFERS}, {"output_bit": output_bit})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.BUFFERS}

    def validate(self, where: str, error: type[Exception] = CheckpointIntegrityError) -> None:
        """The ranges ``intops.softmax_constants`` produces and ``int_softmax``'s int64 bounds assume."""
        for name in self.BUFFERS:
            _check_tensor(getattr(self, name), f"{where}.{name}", torch.int64, (), error)
        _require(1 <= self.output_bit <= 8, f"{where}.spec", f"output_bit {self.output_bit} outside [1, 8] "
                 "(probabilities are uint8)", error)
        _check_range(self.pre_shift, f"{where}.pre_shift", 0, 62, error)
        _check_range(self.x0, f"{where}.x0", -SOFTMAX_MAX_X0, -1, error)
        d = -int(self.x0)
        want_zm = -(-(2**intops.EXP_Z_SHIFT) // d)  # ceil(2^33 / d)
        _require(int(self.zm) == want_zm, f"{where}.zm", f"{int(self.zm)} is not ceil(2^33 / {d}) = {want_zm}", error)
        _check_range(self.b, f"{where}.b", 0, 2**16 - 1, error)
        _check_range(self.c, f"{where}.c", 0, 2**30 - 1, error)
        _check_range(self.m, f"{where}.m", 0, 2**intops.DYADIC_MANTISSA_BITS - 1, error)
        _check_range(self.e, f"{where}.e", 0, intops.DYADIC_MAX_SHIFT, error)


class GELUConstants(_Constants):
    """i-GELU constants per channel (``intops.gelu_constants``); output |q| < 2^GELU_OUTPUT_BITS."""

    BUFFERS = ("b", "c", "one")

    def __init__(self, b: torch.Tensor, c: torch.Tensor, one: torch.Tensor):
        super().__init__()
        self._set({"b": b.long().reshape(-1), "c": c.long().reshape(-1), "one": one.long().reshape(-1)}, {})

    def validate(self, where: str, channels: int, error: type[Exception] = CheckpointIntegrityError) -> None:
        """``channels`` of each; the negative ranges of input scales >= 2^-20 (``int_gelu``'s int64 bounds)."""
        for name, bits in (("b", GELU_MAX_B_BITS), ("c", GELU_MAX_C_BITS), ("one", GELU_MAX_ONE_BITS)):
            t = getattr(self, name)
            _check_tensor(t, f"{where}.{name}", torch.int64, (channels,), error)
            _check_range(t, f"{where}.{name}", -(2**bits) + 1, -1, error)


class LayerNormConstants(_Constants):
    """Integer LayerNorm (``intops.int_layernorm``): calibrated shift, per-channel sign and bias; int32 output."""

    BUFFERS = ("shift", "sign", "bias")

    def __init__(self, shift: torch.Tensor, sign: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self._set({"shift": shift.long().reshape(()), "sign": sign.long().reshape(-1),
                   "bias": bias.long().reshape(-1)}, {})

    def validate(self, where: str, channels: int, error: type[Exception] = CheckpointIntegrityError) -> None:
        """shift in [0, 22], sign in {-1, 1} and bias in [-2^30, 2^30) per channel, fewer than 2^16 channels."""
        _require(channels < LN_MAX_CHANNELS, where, f"{channels} channels (the integer variance needs < 2^16)",
                 error)
        _check_tensor(self.shift, f"{where}.shift", torch.int64, (), error)
        _check_range(self.shift, f"{where}.shift", 0, LN_MAX_SHIFT, error)
        _check_tensor(self.sign, f"{where}.sign", torch.int64, (channels,), error)
        _require(bool(((self.sign == 1) | (self.sign == -1)).all()), f"{where}.sign", "values other than -1 and 1",
                 error)
        _check_tensor(self.bias, f"{where}.bias", torch.int64, (channels,), error)
        _check_range(self.bias, f"{where}.bias", -(2**LN_MAX_BIAS_BITS), 2**LN_MAX_BIAS_BITS - 1, error)
