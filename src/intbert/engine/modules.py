"""The frozen engine's integer state: one small module per kind of constant, buffers only.

Everything here is computed once by :func:`intbert.engine.freeze` from a calibrated simulation and
never changes; a backend reads these buffers. They are ``nn.Module`` s so that ``.to(device)``,
``state_dict`` and safetensors work as for any model. Integer widths (the bounds are checked at freeze):

* ``IntLinear``: int8 weights [N, K] (|w| <= 2^(wb-1)-1), int32 bias with |bias| + K*128*2^(wb-1) < 2^31.
* ``Requant``: dyadic m in [0, 2^31), shift e in [0, 63] (int64), per tensor (1,) or per channel (C,).
* i-GELU / i-exp / LayerNorm constants: int64 (their bounds are written in ``intops``).
"""

from __future__ import annotations

import torch
from torch import nn



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


class Requant(_Constants):
    """y = clamp(round_half_up(q * m / 2^e), -2^(bits-1), 2^(bits-1)-1) for |q| < 2^input_bits.

    ``scale`` (float32) is the output's scale, kept only to dequantize at the ends of the encoder.
    """

    BUFFERS, SPEC = ("m", "e", "scale"), ("bits", "input_bits")

    def __init__(self, m: torch.Tensor, e: torch.Tensor, scale: torch.Tensor, bits: int, input_bits: int):
        super().__init__()
        self._set({"m": m.to(torch.int64).reshape(-1), "e": e.to(torch.int64).reshape(-1),
                   "scale": scale.detach().to(torch.float32).reshape(-1)}, {"bits": bits, "input_bits": input_bits})

    @property
    def dtype(self) -> torch.dtype:
        return storage_dtype(self.bits)


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


class SoftmaxConstants(_Constants):
    """i-exp softmax constants (``intops.softmax_constants``); probabilities are uint8 at 2^-output_bit."""

    BUFFERS, SPEC = ("pre_shift", "x0", "zm", "b", "c", "m", "e"), ("output_bit",)

    def __init__(self, output_bit: int, **consts: torch.Tensor):
        super().__init__()
        self._set({n: consts[n].to(torch.int64).reshape(()) for n in self.BUFFERS}, {"output_bit": output_bit})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.BUFFERS}


class GELUConstants(_Constants):
    """i-GELU constants per channel (``intops.gelu_constants``); output |q| < 2^GELU_OUTPUT_BITS."""

    BUFFERS = ("b", "c", "one")

    def __init__(self, b: torch.Tensor, c: torch.Tensor, one: torch.Tensor):
        super().__init__()
        self._set({"b": b.long().reshape(-1), "c": c.long().reshape(-1), "one": one.long().reshape(-1)}, {})


class LayerNormConstants(_Constants):
    """Integer LayerNorm (``intops.int_layernorm``): calibrated shift, per-channel sign and bias; int32 output."""

    BUFFERS = ("shift", "sign", "bias")

    def __init__(self, shift: torch.Tensor, sign: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self._set({"shift": shift.long().reshape(()), "sign": sign.long().reshape(-1),
                   "bias": bias.long().reshape(-1)}, {})
