"""Max calibration: amax is the running maximum of ``|x|`` per kept axis."""

from __future__ import annotations

import warnings

import torch

from ..descriptor import normalize_axis
from .base import Calibrator

__all__ = ["MaxCalibrator", "amax_per_axis", "reduce_amax"]


def amax_per_axis(x: torch.Tensor, axis: int | tuple[int, ...] | None, keepdims: bool = True) -> torch.Tensor:
    """``max |x|`` over every dimension NOT in ``axis``: ``axis`` is a quantizer's (the dimensions that keep their
    own amax, as in ``QuantDescriptor(axis=0)``). pytorch-quantization's `reduce_amax` takes the opposite.

    ``axis=None`` gives a 0-dim tensor (per tensor). Otherwise the kept dimensions keep their size and
    the reduced ones become 1 (``keepdims=True``), so a Linear weight ``[out, in]`` with ``axis=0``
    gives ``[out, 1]``, which broadcasts against the weight in `fake_tensor_quant`. Negative axes count
    from the end. Used by the max calibrator, by dynamic mode and by weight recalibration alike.
    """
    axes = normalize_axis(axis)
    if x.numel() == 0:
        raise ValueError(f"cannot take the amax of an empty tensor of shape {list(x.shape)}")
    if axes is None:
        return x.detach().abs().amax()
    kept = set()
    for a in axes:
        if not -x.dim() <= a < x.dim():
            raise ValueError(f"axis {axis!r} does not exist in a tensor of shape {list(x.shape)}; use an axis < {x.dim()}")
        kept.add(a % x.dim())
    reduce = [d for d in range(x.dim()) if d not in kept]
    if not reduce:
        return x.detach().abs()
    return x.detach().abs().amax(dim=reduce, keepdim=keepdims)


def reduce_amax(input: torch.Tensor, axis: int | tuple[int, ...] | None = None, keepdims: bool = True) -> torch.Tensor:
    """``max |input|`` reduced OVER ``axis`` (all dimensions when None, giving a 0-dim tensor), as
    pytorch-quantization's ``utils.reduce_amax`` / ``calib.reduce_amax``.

    So a Linear weight ``[out, in]`` has per-row amax ``reduce_amax(w, axis=1)`` (shape ``[out, 1]``), which is
    ``amax_per_axis(w, 0)`` in a quantizer's terms. Negative axes count from the end. (Until this version intbert's
    ``reduce_amax`` kept ``axis`` and had no default; that function is now `amax_per_axis`.)
    """
    if input.numel() == 0:
        raise ValueError(f"cannot take the amax of an empty tensor of shape {list(input.shape)}")
    x = input.detach().abs()
    if axis is None:
        return x.amax()
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if len(axes) > x.dim() or any(not -x.dim() <= a < x.dim() for a in axes):
        raise ValueError(f"axis {axis!r} does not exist in a tensor of shape {list(x.shape)}")
    return x.amax(dim=axes, keepdim=keepdims)


class MaxCalibrator(Calibrator):
    """Running abs-max: ``amax = max over batches of amax_per_axis(x, axis)`` (float32, on x's device).

    Exact (no binning), so it is the right method for weights and for activations without outliers.
    Degenerate cases: all-zero data gives amax 0 (the quantizer then outputs 0, which is exact for
    zeros); no data at all gives ``compute_amax() is None``. Empty tensors are skipped. An unsigned
    quantizer seeing negative values warns once (its negative half will clip to 0) and uses ``|x|``.

    Args:
        track_amax: also keep each batch's amax (on CPU) in ``amaxs``, to inspect how it drifts.
    """

    def __init__(
        self, num_bits: int = 8, axis: int | tuple[int, ...] | None = None, unsigned: bool = False, track_amax: bool = False
    ) -> None:
        super().__init__(num_bits, axis, unsigned)
        self._track_amax = track_amax
        self._warned_negative = False
        self.reset()

    def reset(self) -> None:
        """Forget every collected batch."""
        self._calib_amax: torch.Tensor | None = None
        self.amaxs: list[torch.Tensor] = []

    def collect(self, x: torch.Tensor) -> None:
        """Fold ``x`` into the running maximum (a change of the per-channel shape raises ValueError)."""
        if x.numel() == 0:
            return
        if self.unsigned and not self._warned_negative and bool((x < 0).any()):
            self._warned_negative = True
            warnings.warn("unsigned quantizer saw negative values; calibrating on |x| (they will clip to 0)", stacklevel=2)
        local = amax_per_axis(x, self.axis).to(torch.float32)
        if self._calib_amax is None:
            self._calib_amax = local
        else:
            if local.shape != self._calib_amax.shape:
                raise ValueError(
                    f"amax shape changed from {list(self._calib_amax.shape)} to {list(local.shape)} between batches; "
                    f"the kept axis {self.axis!r} must have the same size in every batch (or use axis=None)"
                )
            self._calib_amax = torch.maximum(self._calib_amax, local.to(self._calib_amax.device))
        if self._track_amax:
            self.amaxs.append(local.cpu())

    def compute_amax(self) -> torch.Tensor | None:
        """The running max (float32), or ``None`` if nothing was collected."""
        return self._calib_amax
