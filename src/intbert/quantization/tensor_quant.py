"""pytorch-quantization's ``tensor_quant`` module: its functions under its names, signatures and defaults.

Code written against ``from pytorch_quantization import tensor_quant`` runs with
``from intbert.quantization import tensor_quant``. The numbers come from intbert's one definition
(`fake_quant`: ``q = clamp(round_half_even(x / (amax / qmax)))``); what follows the peer is the interface:

* ``tensor_quant(inputs, amax, num_bits=8, unsigned=False, narrow_range=True) -> (outputs, scale)``: real
  quantization. ``outputs`` holds the integers in the input's dtype and ``scale = qmax / amax`` is the
  peer's *reciprocal* step (``inputs ~= outputs / scale``); an ``amax <= 2^-24`` gives 0 and scale 1.
* ``fake_tensor_quant(...)``: the same integers dequantized, straight-through gradient inside the range.
  Note the peer's functional default ``narrow_range=True`` (``[-127, 127]``), kept here; intbert's own
  ``intbert.quantization.fake_tensor_quant`` and ``QuantDescriptor`` default to the full range.
* ``legacy_fake_tensor_quant(...)``: the peer's older function: the same values, gradient for ``inputs`` only.
* ``fake_affine_tensor_quant(inputs, min_range, max_range, num_bits=8)``: gemmlowp-style affine
  quantization (scale and zero point from a min/max range), with the peer's formula.

Differences, on purpose: the division ``x / (amax / qmax)`` (as ONNX QuantizeLinear) instead of the peer's
``x * (qmax / amax)`` can move an element by one level; unsigned quantization of negative inputs raises
``TypeError`` as the peer does; a negative or NaN amax raises ``ValueError``.
"""

from __future__ import annotations

import torch

from .descriptor import (
    QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW,
    QUANT_DESC_8BIT_PER_TENSOR,
    QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR,
    QuantDescriptor,
    ScaledQuantDescriptor,
)
from .fake_quant import FakeTensorQuantFunction, _quantize_fp32, quant_bounds

__all__ = [
    "QuantDescriptor",
    "ScaledQuantDescriptor",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR",
    "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW",
    "TensorQuantFunction",
    "FakeTensorQuantFunction",
    "LegacyFakeTensorQuantFunction",
    "FakeAffineTensorQuantFunction",
    "tensor_quant",
    "fake_tensor_quant",
    "legacy_fake_tensor_quant",
    "fake_affine_tensor_quant",
]


def _amax_tensor(inputs: torch.Tensor, amax) -> torch.Tensor:
    """amax as float32 on the input's device; it must broadcast to the input and be >= 0 (the peer's rules)."""
    amax = torch.as_tensor(amax, dtype=torch.float32, device=inputs.device)
    try:
        shape = torch.broadcast_shapes(amax.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise ValueError(f"amax of shape {list(amax.shape)} does not broadcast to the input shape {list(inputs.shape)}")
    if amax.numel() and (bool((amax < 0).any()) or bool(torch.isnan(amax).any())):
        raise ValueError("Negative values in amax")
    return amax


def _peer_quant(inputs, amax, num_bits, unsigned, narrow_range):
    """(integers in the input's dtype, the peer's scale qmax / amax (1 where amax <= 2^-24), amax as used)."""
    if unsigned and inputs.numel() and bool((inputs < 0).any()):
        raise TypeError("Negative values encountered in unsigned quantization.")
    amax = _amax_tensor(inputs, amax)
    q, _, ok = _quantize_fp32(inputs, amax, num_bits, unsigned, narrow_range)
    qmax = quant_bounds(num_bits, unsigned, narrow_range)[1]
    scale = torch.where(ok, qmax / torch.where(ok, amax, torch.ones_like(amax)), torch.ones_like(amax))
    return q.to(inputs.dtype), scale, amax


def _clip_gradient(grad: torch.Tensor, inputs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    return torch.where(inside, grad, torch.zeros_like(grad))


class TensorQuantFunction(torch.autograd.Function):
    """Real quantization: ``(outputs, scale)`` with integer ``outputs`` and ``scale = qmax / amax``.

    Backward (the peer's): the gradient passes where ``|inputs| <= amax``, 0 elsewhere; none for amax.
    """

    @staticmethod
    def forward(ctx, inputs, amax, num_bits=8, unsigned=False, narrow_range=True):  # noqa: D102
        outputs, scale, amax = _peer_quant(inputs, amax, num_bits, unsigned, narrow_range)
        ctx.save_for_backward(inputs, amax)
        scale = scale.to(inputs.dtype)
        ctx.mark_non_differentiable(scale)
        return outputs, scale

    @staticmethod
    def backward(ctx, grad_outputs, grad_scale):  # noqa: D102
        inputs, amax = ctx.saved_tensors
        return _clip_gradient(grad_outputs, inputs, inputs.abs() <= amax), None, None, None, None


class LegacyFakeTensorQuantFunction(torch.autograd.Function):
    """Fake quantization with the peer's legacy gradient: straight through where ``|inputs| <= amax``, none for amax."""

    @staticmethod
    def forward(ctx, inputs, amax, num_bits=8, unsigned=False, narrow_range=True):  # noqa: D102
        if unsigned and inputs.numel() and bool((inputs < 0).any()):
            raise TypeError("Negative values encountered in unsigned quantization.")
        amax = _amax_tensor(inputs, amax)
        q, step, _ = _quantize_fp32(inputs, amax, num_bits, unsigned, narrow_range)
        ctx.save_for_backward(inputs, amax)
        return (q * step).to(inputs.dtype)

    @staticmethod
    def backward(ctx, grad_outputs):  # noqa: D102
        inputs, amax = ctx.saved_tensors
        return _clip_gradient(grad_outputs, inputs, inputs.abs() <= amax), None, None, None, None


class FakeAffineTensorQuantFunction(torch.autograd.Function):
    """gemmlowp-style affine fake quantization over ``[min_range, max_range]`` (the peer's formula):

        step = (max_range - min_range) / (2^b - 1),  zero = round(min_range / step) + 2^(b-1)
        q = clamp(round(x / step) - zero, -2^(b-1), 2^(b-1) - 1),  y = (q + zero) * step

    Backward: straight through where ``min_range <= x <= max_range``, 0 elsewhere. The peer calls it experimental;
    intbert's graphs and engine are symmetric, so nothing else uses it.
    """

    @staticmethod
    def forward(ctx, inputs, min_range, max_range, num_bits=8):  # noqa: D102
        min_range = torch.as_tensor(min_range, dtype=torch.float32, device=inputs.device)
        max_range = torch.as_tensor(max_range, dtype=torch.float32, device=inputs.device)
        if bool((max_range <= min_range).any()):
            raise ValueError(f"max_range must exceed min_range, got {min_range.tolist()} and {max_range.tolist()}")
        ctx.save_for_backward(inputs, min_range, max_range)
        step = (max_range - min_range) / (2.0**num_bits - 1)
        min_bound, max_bound = -(2.0 ** (num_bits - 1)), 2.0 ** (num_bits - 1) - 1
        zero = torch.round(min_range / step) - min_bound
        q = torch.clamp(torch.round(inputs.to(torch.float32) / step) - zero, min_bound, max_bound)
        return ((q + zero) * step).to(inputs.dtype)

    @staticmethod
    def backward(ctx, grad_outputs):  # noqa: D102
        inputs, min_range, max_range = ctx.saved_tensors
        inside = (inputs <= max_range) & (inputs >= min_range)
        return _clip_gradient(grad_outputs, inputs, inside), None, None, None


def tensor_quant(inputs: torch.Tensor, amax, num_bits: int = 8, unsigned: bool = False, narrow_range: bool = True):
    """``(outputs, scale)``: integer-valued ``outputs`` (input dtype) and the peer's ``scale = qmax / amax``."""
    return TensorQuantFunction.apply(inputs, amax, num_bits, unsigned, narrow_range)


def fake_tensor_quant(inputs: torch.Tensor, amax, num_bits: int = 8, unsigned: bool = False,
                      narrow_range: bool = True) -> torch.Tensor:
    """Quantize-dequantize with the peer's defaults (narrow range); intbert's numerics and gradients
    (``intbert.quantization.fake_quant.FakeTensorQuantFunction``: straight through inside the range, LSQ for a
    learned amax)."""
    if unsigned and inputs.numel() and bool((inputs < 0).any()):
        raise TypeError("Negative values encountered in unsigned quantization.")
    return FakeTensorQuantFunction.apply(inputs, _amax_tensor(inputs, amax), num_bits, unsigned, narrow_range)


def legacy_fake_tensor_quant(inputs: torch.Tensor, amax, num_bits: int = 8, unsigned: bool = False,
                             narrow_range: bool = True) -> torch.Tensor:
    """The peer's legacy fake quantization (same values as `fake_tensor_quant`, no amax gradient)."""
    return LegacyFakeTensorQuantFunction.apply(inputs, amax, num_bits, unsigned, narrow_range)


def fake_affine_tensor_quant(inputs: torch.Tensor, min_range, max_range, num_bits: int = 8) -> torch.Tensor:
    """Affine (zero-point) fake quantization over ``[min_range, max_range]``; see `FakeAffineTensorQuantFunction`."""
    return FakeAffineTensorQuantFunction.apply(inputs, min_range, max_range, num_bits)
