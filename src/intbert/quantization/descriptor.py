"""`QuantDescriptor`: what a quantizer does, as a small immutable value object.

Compatible with pytorch-quantization's ``QuantDescriptor`` / ``ScaledQuantDescriptor``: the same
constructor ``QuantDescriptor(num_bits=8, name=None, **kwargs)``, field names and defaults. Better inside:

* every value is checked when the descriptor is built (a bad value raises ``ValueError`` naming the field
  and the fix; an unknown keyword raises ``TypeError`` naming the key);
* ``to_dict()`` / ``from_dict()`` are lossless (upstream's ``dict()`` drops ``calib_method`` and
  ``narrow_range``), and the dict is JSON-friendly so it can live in a ``config.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "QuantDescriptor",
    "ScaledQuantDescriptor",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR",
    "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW",
    "CALIB_METHODS",
    "MAX_NUM_BITS",
    "normalize_axis",
]

# The calibrator a quantizer builds; percentile/mse/entropy are chosen later, in `load_calib_amax`.
CALIB_METHODS = ("max", "histogram")

# Quantization math runs in float32, whose integers are exact only up to 2^24. The largest level is
# 2^(b-1+unsigned) - 1, so an unsigned 24-bit quantizer (max level 2^24 - 1) is the widest that is exact.
MAX_NUM_BITS = 24

_FIELDS = ("fake_quant", "axis", "amax", "learn_amax", "scale_amax", "calib_method", "unsigned", "narrow_range")


def normalize_axis(axis: int | Iterable[int] | None) -> tuple[int, ...] | None:
    """Return ``axis`` as a tuple of ints (``None`` stays ``None``: per tensor).

    ``axis`` names the dimensions that KEEP their own amax (the opposite of a reduce axis); the
    amax is reduced over every other dimension.
    """
    if axis is None:
        return None
    if isinstance(axis, bool):
        raise ValueError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
    if isinstance(axis, int):
        return (axis,)
    try:
        axes = tuple(axis)
    except TypeError:
        raise ValueError(f"axis must be None, an int or a tuple of ints, got {axis!r}") from None
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise ValueError(f"axis must be None, an int or a non-empty tuple of ints, got {axis!r}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} repeats a dimension; list each kept dimension once")
    return axes


def _normalize_amax(amax: Any) -> float | list | None:
    """Turn a float, nested list, numpy array or tensor into a float or nested list of floats.

    Stored as plain Python numbers so that the descriptor is hashable-free, JSON-friendly and
    independent of any device. Values are rounded to float32, the dtype the `_amax` buffer uses.
    """
    if amax is None:
        return None
    try:
        # Explicit CPU: a meta-device context (transformers' from_pretrained) would make values unreadable.
        t = torch.as_tensor(amax, dtype=torch.float32, device="cpu") if not isinstance(amax, torch.Tensor) else amax.detach()
        t = t.to("cpu", torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"amax must be a number, a (nested) list of numbers or a tensor, got {amax!r}") from None
    if t.numel() == 0:
        raise ValueError("amax is empty; give one value per tensor or one per kept channel")
    if torch.isnan(t).any() or torch.isinf(t).any():
        raise ValueError(f"amax must be finite, got {t.tolist()!r}; calibrate again or pass a finite value")
    if (t < 0).any():
        raise ValueError(f"amax must be >= 0 (it is an absolute maximum), got {t.tolist()!r}; pass abs(amax)")
    return t.tolist()


class QuantDescriptor:
    """Describes how a `TensorQuantizer` quantizes: bits, range, granularity, calibration.

    Args:
        num_bits: bits per value, ``1 <= num_bits <= 24`` (2 or more when signed: a signed 1-bit
            quantizer has no positive level). 24 is the float32 exact-integer limit (see ``MAX_NUM_BITS``).
        name: optional label, shown in reprs.
        fake_quant: True (quantize then dequantize in floating point, what the models use) or False (a
            ``TensorQuantizer`` then returns the integers and keeps the peer's reciprocal scale in ``scale``).
        axis: ``None`` for one amax per tensor, or the dimension(s) that keep their own amax
            (``0`` or ``(0,)`` for one amax per output row of a Linear weight).
        amax: optional fixed absolute maximum (number, nested list, array or tensor, all >= 0).
            A quantizer built from a descriptor with ``amax`` starts calibrated.
        learn_amax: make amax a trainable ``nn.Parameter`` (LSQ-style gradient, see `fake_quant`).
        scale_amax: optional positive factor applied to amax at use time (an experiment knob).
        calib_method: ``"max"`` (running abs-max) or ``"histogram"`` (percentile / mse / entropy
            chosen later in ``load_calib_amax``).
        unsigned: quantize to ``[0, 2^b - 1]`` instead of a signed range.
        narrow_range: signed range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (symmetric) instead of the
            full ``[-2^(b-1), 2^(b-1) - 1]``; ignored when ``unsigned``.

    Raises:
        TypeError: an unknown keyword (typo) is given.
        ValueError: a value is out of range; the message names the field and the fix.
    """

    def __init__(self, num_bits: int = 8, name: str | None = None, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(_FIELDS))
        if unknown:
            raise TypeError(f"QuantDescriptor got unknown keys {unknown}; valid keys are num_bits, name, {', '.join(_FIELDS)}")
        if isinstance(num_bits, tuple):
            raise ValueError(f"num_bits={num_bits!r}: floating-point (FP8) formats are not supported; use an int")
        if not isinstance(num_bits, int) or isinstance(num_bits, bool):
            raise ValueError(f"num_bits must be an int, got {num_bits!r}")
        unsigned = bool(kwargs.get("unsigned", False))
        min_bits = 1 if unsigned else 2
        if not min_bits <= num_bits <= MAX_NUM_BITS:
            raise ValueError(
                f"num_bits={num_bits} is out of range; use {min_bits} <= num_bits <= {MAX_NUM_BITS} "
                f"({'unsigned' if unsigned else 'signed needs a positive level, so at least 2'}; "
                f"{MAX_NUM_BITS} is where float32 stops holding integers exactly)"
            )
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a str or None, got {name!r}")
        fake_quant = kwargs.get("fake_quant", True)
        if not isinstance(fake_quant, bool):
            raise ValueError(f"fake_quant must be True or False, got {fake_quant!r}")
        calib_method = kwargs.get("calib_method", "max")
        if calib_method not in CALIB_METHODS:
            raise ValueError(
                f"calib_method={calib_method!r} is unknown; use 'max' or 'histogram' (pick percentile/mse/entropy "
                "later with load_calib_amax(method) or calibrate_quantizers(method=...))"
            )
        scale_amax = kwargs.get("scale_amax")
        if scale_amax is not None:
            if not isinstance(scale_amax, (int, float)) or isinstance(scale_amax, bool) or not (
                math.isfinite(scale_amax) and scale_amax > 0
            ):
                raise ValueError(f"scale_amax must be a positive finite number or None, got {scale_amax!r}")
            scale_amax = float(scale_amax)

        self._num_bits = num_bits
        self._name = name
        self._fake_quant = fake_quant
        self._axis = kwargs.get("axis")
        normalize_axis(self._axis)  # validates; the given spelling (0 vs (0,)) is kept for repr/to_dict
        if isinstance(self._axis, list):
            self._axis = tuple(self._axis)
        self._amax = _normalize_amax(kwargs.get("amax"))
        self._learn_amax = bool(kwargs.get("learn_amax", False))
        self._scale_amax = scale_amax
        self._calib_method = calib_method
        self._unsigned = unsigned
        self._narrow_range = bool(kwargs.get("narrow_range", False))

    # Read-only fields: a descriptor is shared (class-level defaults), so mutating one would change
    # every module built from it.
    num_bits = property(lambda self: self._num_bits)
    name = property(lambda self: self._name)
    fake_quant = property(lambda self: self._fake_quant)
    axis = property(lambda self: self._axis)
    amax = property(lambda self: self._amax)
    learn_amax = property(lambda self: self._learn_amax)
    scale_amax = property(lambda self: self._scale_amax)
    calib_method = property(lambda self: self._calib_method)
    unsigned = property(lambda self: self._unsigned)
    narrow_range = property(lambda self: self._narrow_range)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-friendly Python values (tuples become lists); ``from_dict`` inverts it."""
        axis = list(self._axis) if isinstance(self._axis, tuple) else self._axis
        return {"num_bits": self._num_bits, "name": self._name, "fake_quant": self._fake_quant, "axis": axis,
                "amax": self._amax, "learn_amax": self._learn_amax, "scale_amax": self._scale_amax,
                "calib_method": self._calib_method, "unsigned": self._unsigned, "narrow_range": self._narrow_range}

    # pytorch-quantization spells it `dict()`.
    dict = to_dict

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantDescriptor:
        """Build a descriptor from ``to_dict()`` output (lists are accepted for ``axis``)."""
        return cls(**d)

    def to_yaml(self) -> str:
        """The descriptor as YAML (pytorch-quantization's ``to_yaml``): ``to_dict()``, lists for tuples."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=120)

    @classmethod
    def from_yaml(cls, yaml_str: str) -> QuantDescriptor:
        """Build a descriptor from `to_yaml` output, or from the peer's (which leaves default fields out)."""
        import yaml

        d = yaml.safe_load(yaml_str)
        if not isinstance(d, dict):
            raise ValueError(f"a QuantDescriptor YAML must hold a mapping of fields, got {type(d).__name__}")
        return cls.from_dict(d)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantDescriptor):
            return NotImplemented
        # Compare the meaning of axis, not its spelling: axis=0 and axis=(0,) are the same quantizer.
        mine, theirs = self.to_dict(), other.to_dict()
        mine["axis"], theirs["axis"] = normalize_axis(self._axis), normalize_axis(other._axis)
        return mine == theirs

    __hash__ = None  # mutable-looking value object with __eq__: not hashable, like a dict

    def __repr__(self) -> str:
        defaults = QuantDescriptor().to_dict()
        parts = [f"num_bits={self._num_bits}"]
        for key, value in self.to_dict().items():
            if key != "num_bits" and value != defaults[key]:
                parts.append(f"{key}={value!r}")
        return f"QuantDescriptor({', '.join(parts)})"


ScaledQuantDescriptor = QuantDescriptor

QUANT_DESC_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8)
QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8, unsigned=True)
# One amax per output row of an nn.Linear weight [out, in]: the amax buffer has shape [out, 1].
QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW = QuantDescriptor(num_bits=8, axis=(0,))
