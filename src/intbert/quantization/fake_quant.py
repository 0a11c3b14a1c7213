"""The one definition of symmetric linear quantization used by every quantizer in intbert.

For ``b`` bits, an absolute maximum ``amax`` (per tensor, or one per kept channel) and the range flags::

    qmax  = 2^(b - 1 + unsigned) - 1                      127 for int8, 255 for uint8
    qmin  = 0 if unsigned
            -(2^(b-1) - 1) if narrow_range                -127 (symmetric)
            -2^(b-1) otherwise                            -128 (full range, the default)
    scale = amax / qmax                                   float32 division
    q     = clamp(round_half_even(x / scale), qmin, qmax) float32 division, then torch.round (ties to even)
    y     = q * scale                                     float32 product, cast to the input dtype

(qmin, qmax) is ``intops.quant_bounds``, the one range definition I-BERT's integer ops use too.

Rounding rules, each chosen on purpose:

* ``x / scale`` is a true float32 division, as ONNX ``QuantizeLinear`` computes it. ``x * (1 / scale)``
  (what ``torch.fake_quantize_per_tensor_affine`` does) differs by one level on some elements, so
  bit-exact parity with an exported graph needs the division.
* ``torch.round`` rounds half to even (2.5 -> 2, -2.5 -> -2, 3.5 -> 4), like ONNX and C ``rint``.
* The math always runs in float32, whatever the input dtype (fp16/bf16/fp64): float32 holds every
  level exactly (``|q| <= 2^24``, see ``descriptor.MAX_NUM_BITS``), and fp16 would round ``x / scale``
  before ``round`` sees it. The result ``q * scale`` is rounded once, to the input dtype, at the end.

Degenerate case: an ``amax`` element ``<= 2^-24`` (``TINY_AMAX``, including 0) quantizes its whole
slice to ``q = 0`` (so ``y = 0``) and reports ``scale = 1``: dividing by such a scale would overflow,
and a scale of 1 is a valid (non-zero) ONNX scale.

``amax`` is a 0-dim tensor (per tensor) or a keep-dims tensor with the input's rank whose dimensions
are 1 or the input's size (per channel, e.g. ``[out, 1]`` for a Linear weight ``[out, in]``).
"""

from __future__ import annotations

import sys

import torch

from .intops import quant_bounds

__all__ = ["TINY_AMAX", "quant_bounds", "quantize", "dequantize", "fake_tensor_quant", "FakeTensorQuantFunction"]

# At or below this an amax means "no range" (a calibrator that saw only zeros, or a learned amax that
# collapsed). The bound is pytorch-quantization's, kept so that both give 0 on the same inputs; with
# scale = amax / qmax below 2^-30, `x / scale` would also leave the float32 range for |x| above ~2^98.
TINY_AMAX = 2.0**-24


def _int_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The smallest integer dtype that holds ``[qmin, qmax]``."""
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    if qmin >= -(2**15) and qmax <= 2**15 - 1:
        return torch.int16
    return torch.int32


def _check_amax(x: torch.Tensor, amax: torch.Tensor) -> None:
    """Reject an amax that cannot mean what the caller thinks (wrong shape, negative, NaN)."""
    if amax.dim() not in (0, x.dim()) and amax.numel() != 1:
        raise ValueError(
            f"amax of shape {list(amax.shape)} does not fit an input of shape {list(x.shape)}; use a 0-dim amax "
            f"(per tensor) or a keep-dims amax of rank {x.dim()} such as [out, 1]"
        )
    try:
        broadcast = torch.broadcast_shapes(amax.shape, x.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x.shape:
        raise ValueError(f"amax of shape {list(amax.shape)} does not broadcast to the input shape {list(x.shape)}")
    # Data-dependent checks would break tracing and compiling (ONNX export); the amax was checked
    # when it was set. torch.onnx is looked up, not imported: importing it costs ~0.5 s, and an
    # export in progress has imported it already.
    onnx = sys.modules.get("torch.onnx")
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or (onnx is not None and onnx.is_in_onnx_export()):
        return
    if bool((amax < 0).any()) or bool(torch.isnan(amax).any()):
        raise ValueError(
            f"amax must be >= 0 and not NaN (min is {amax.min().item()}); calibrate again, or if amax is learned "
            "lower the learning rate or clamp it after each step"
        )


def _quantize_fp32(
    x: torch.Tensor, amax: torch.Tensor, num_bits: int, unsigned: bool, narrow_range: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The formula itself: ``(q, scale, ok)`` in float32; ``ok`` is False where amax is degenerate.

    ``q`` holds exact integers in float32. Every public function goes through here, so the
    definition exists once.
    """
    qmin, qmax = quant_bounds(num_bits, unsigned, narrow_range)
    x32 = x.to(torch.float32)
    amax32 = amax.to(device=x.device, dtype=torch.float32)
    ok = amax32 > TINY_AMAX
    # A degenerate slice gets scale 1, so the division below stays finite; its q is forced to 0.
    scale = torch.where(ok, amax32 / qmax, torch.ones_like(amax32))
    q = torch.round(x32 / scale).clamp_(qmin, qmax)  # torch.round: half to even
    q = torch.where(ok, q, torch.zeros_like(q))
    return q, scale, ok


def quantize(
    x: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False, narrow_range: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to integers: returns ``(q, scale)`` with ``x ~= q * scale``.

    ``q`` has the smallest integer dtype holding ``[qmin, qmax]`` (int8 for signed 8-bit, uint8 for
    unsigned 8-bit, int16 or int32 for wider). ``scale`` is float32 with amax's shape: the step
    ``amax / qmax`` (note: pytorch-quantization's ``tensor_quant`` returns the reciprocal), or 1 where
    ``amax <= 2^-24`` (there ``q`` is 0). This is what an ONNX QuantizeLinear with zero point 0 computes.
    (I-BERT's weight quantization, from a scale in float64 to the narrow range, is ``intops.quantize_by_scale``.)
    """
    amax = torch.as_tensor(amax, dtype=torch.float32, device=x.device)
    _check_amax(x, amax)
    q, scale, _ = _quantize_fp32(x, amax, num_bits, unsigned, narrow_range)
    qmin, qmax = quant_bounds(num_bits, unsigned, narrow_range)
    return q.to(_int_dtype(qmin, qmax)), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` computed in float32 (exact integers times the step), rounded once to ``dtype``."""
    return (q.to(torch.float32) * scale.to(torch.float32)).to(dtype)


class FakeTensorQuantFunction(torch.autograd.Function):
    """Fake quantization with a straight-through gradient for ``x`` and an LSQ gradient for ``amax``.

    Forward: ``y = q * scale`` (module docstring), in the input dtype.

    Backward, with ``v = x / scale`` and ``inside = qmin <= v <= qmax`` (the clamp is not active):

    * ``dL/dx = dL/dy`` inside, 0 outside (straight-through estimator with clipping). For the default
      full signed range this passes ``[-amax * (qmax + 1) / qmax, amax]``; narrow range passes exactly
      ``[-amax, amax]``; unsigned passes ``[0, amax]``.
    * ``dL/damax = sum over the elements each amax covers of dL/dy * d``, where
      ``d = (q - v) / qmax`` inside and ``d = q / qmax`` outside (``+1`` above the range, ``qmin/qmax``
      below it). This is the derivative of ``y = scale * round(v)`` with ``round`` treated as the
      identity in the backward pass (LSQ, Esser et al. 2019), times ``dscale/damax = 1 / qmax``. Outside
      the range it is the exact derivative (``y = qmax * scale = amax`` above).
    * A degenerate amax (``<= 2^-24``) gives ``y = 0`` and zero gradients for its slice.
    """

    @staticmethod
    def forward(ctx, x, amax, num_bits, unsigned, narrow_range):  # noqa: D102 - documented on the class
        q, scale, _ = _quantize_fp32(x, amax, num_bits, unsigned, narrow_range)
        ctx.save_for_backward(x, amax)
        ctx.quant_args = (num_bits, unsigned, narrow_range)
        return (q * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 - documented on the class
        x, amax = ctx.saved_tensors
        num_bits, unsigned, narrow_range = ctx.quant_args
        qmin, qmax = quant_bounds(num_bits, unsigned, narrow_range)
        # Recompute rather than save q: one division is cheaper than keeping a float32 copy alive.
        q, scale, ok = _quantize_fp32(x, amax, num_bits, unsigned, narrow_range)
        v = x.to(torch.float32) / scale
        inside = (v >= qmin) & (v <= qmax) & ok
        grad_x = torch.where(inside, grad_out, torch.zeros_like(grad_out)) if ctx.needs_input_grad[0] else None
        grad_amax = None
        if ctx.needs_input_grad[1]:
            d = torch.where(inside, q - v, q) / qmax
            d = torch.where(ok, d, torch.zeros_like(d))
            grad_amax = (grad_out.to(torch.float32) * d).sum_to_size(amax.shape).to(amax.dtype)
        return grad_x, grad_amax, None, None, None


def fake_tensor_quant(
    x: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False, narrow_range: bool = False
) -> torch.Tensor:
    """Quantize-dequantize ``x``: ``clamp(round_half_even(x / s), qmin, qmax) * s`` with ``s = amax / qmax``.

    Same integers as `quantize` (one definition), returned in ``x``'s dtype. Gradients: see
    `FakeTensorQuantFunction` (straight-through for ``x``; LSQ for ``amax`` when it requires grad).
    Note: pytorch-quantization's functional default is ``narrow_range=True``; here the default is
    the full range, matching ``QuantDescriptor`` and ONNX/TensorRT.
    """
    amax = torch.as_tensor(amax, dtype=torch.float32, device=x.device)
    _check_amax(x, amax)
    return FakeTensorQuantFunction.apply(x, amax, num_bits, unsigned, narrow_range)
