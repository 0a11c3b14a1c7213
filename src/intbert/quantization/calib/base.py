"""What every calibrator shares: the quantizer settings it calibrates for, and the three verbs."""

from __future__ import annotations

import torch

from ..descriptor import normalize_axis

__all__ = ["Calibrator"]


class Calibrator:
    """Collects statistics of the tensors a quantizer sees and turns them into an ``amax``.

    ``collect(x)`` only records (it never changes ``x``); ``compute_amax(...)`` turns the record into
    a float32 amax (``None`` when nothing was collected); ``reset()`` forgets everything. Keeping
    collection apart from the computation lets one histogram be read with several methods.

    Args:
        num_bits: bits of the quantizer being calibrated (the mse/entropy searches depend on it).
        axis: ``None`` (per tensor) or the dimension(s) that keep their own amax.
        unsigned: whether the quantizer is unsigned (``[0, 2^b - 1]``).
    """

    def __init__(self, num_bits: int = 8, axis: int | tuple[int, ...] | None = None, unsigned: bool = False) -> None:
        normalize_axis(axis)  # validates
        self.num_bits = num_bits
        self.axis = axis
        self.unsigned = unsigned

    def collect(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def compute_amax(self, *args, **kwargs) -> torch.Tensor | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_bits={self.num_bits}, axis={self.axis}, unsigned={self.unsigned})"
