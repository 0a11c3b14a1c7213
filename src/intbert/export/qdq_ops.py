"""ONNX ``QuantizeLinear`` / ``DequantizeLinear`` as torch custom ops that both ONNX exporters translate.

Why custom ops: pytorch-quantization exported Q/DQ through an ``autograd.Function.symbolic()``, which the TorchScript
exporter honours and the dynamo exporter (``torch.onnx.export``'s default since torch 2.9) silently ignores: it traces
the Python body instead and writes ``Div/Round/Clip/Mul`` with no Q/DQ node. A ``torch.library.custom_op`` is opaque to
both tracers, so each exporter needs one translation, registered here: an onnxscript function for dynamo
(``custom_translation_table``) and a symbolic for TorchScript (``register_custom_op_symbolic``).

The torch bodies implement the ONNX operator definitions (opset 13+), so a module in export form computes in torch what
the exported graph computes:

    QuantizeLinear:   q = saturate(round_half_even(x / scale) + zero_point)     saturate to zero_point's dtype range
    DequantizeLinear: y = (q - zero_point) * scale                             in float32

``scale`` and ``zero_point`` are 0-dim (per tensor) or 1-dim with one entry per index of ``axis`` (per channel).
``x / scale`` is a true float32 division, as in ONNX and in ``intbert.quantization.fake_quant``; ``torch.round`` rounds
half to even, as ONNX does. With ``zero_point = 0`` and ``scale = amax / qmax`` this is exactly ``fake_quant``'s
formula, and with a uint8 ``zero_point = 128`` it is the same integers shifted by 128 (tests prove both).
"""

from __future__ import annotations

import torch

__all__ = ["quantize_linear", "dequantize_linear", "dynamo_translation_table", "register_torchscript_symbolics"]

# Opset 13 gave QuantizeLinear/DequantizeLinear their `axis` attribute (per-channel scales).
MIN_OPSET = 13


def _per_axis_view(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A 1-dim per-channel ``t`` reshaped to broadcast along ``axis`` of a rank-``rank`` tensor; 0-dim stays."""
    if t.dim() == 0:
        return t
    shape = [1] * rank
    shape[axis % rank] = -1
    return t.reshape(shape)


@torch.library.custom_op("intbert_onnx::quantize_linear", mutates_args=())
def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX QuantizeLinear: ``saturate(round_half_even(x / scale) + zero_point)`` in ``zero_point``'s dtype."""
    info = torch.iinfo(zero_point.dtype)
    s = _per_axis_view(scale.to(torch.float32), axis, x.dim())
    zp = _per_axis_view(zero_point.to(torch.float32), axis, x.dim())
    # Rounding happens before the zero point is added; zp is an integer, so adding it after rounding is exact.
    q = torch.round(x.to(torch.float32) / s) + zp
    return q.clamp_(info.min, info.max).to(zero_point.dtype)


@quantize_linear.register_fake
def _quantize_linear_fake(x, scale, zero_point, axis):
    return torch.empty_like(x, dtype=zero_point.dtype)


@torch.library.custom_op("intbert_onnx::dequantize_linear", mutates_args=())
def dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32 (exact integers times the step)."""
    s = _per_axis_view(scale.to(torch.float32), axis, q.dim())
    zp = _per_axis_view(zero_point.to(torch.float32), axis, q.dim())
    return (q.to(torch.float32) - zp) * s


@dequantize_linear.register_fake
def _dequantize_linear_fake(q, scale, zero_point, axis):
    return torch.empty_like(q, dtype=torch.float32)


def dynamo_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: the two ops as ONNX nodes.

    Imports onnxscript, which the dynamo exporter needs anyway; the caller turns its absence into an error that says
    what to install.
    """
    from onnxscript import opset18 as op

    def onnx_quantize_linear(x, scale, zero_point, axis: int):
        return op.QuantizeLinear(x, scale, zero_point, axis=axis)

    def onnx_dequantize_linear(q, scale, zero_point, axis: int):
        return op.DequantizeLinear(q, scale, zero_point, axis=axis)

    return {
        torch.ops.intbert_onnx.quantize_linear.default: onnx_quantize_linear,
        torch.ops.intbert_onnx.dequantize_linear.default: onnx_dequantize_linear,
    }


_torchscript_registered = False


def register_torchscript_symbolics() -> None:
    """Teach the TorchScript exporter (``dynamo=False``) the two ops; idempotent, process-wide."""
    global _torchscript_registered
    if _torchscript_registered:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "i")
    def symbolic_quantize_linear(g, x, scale, zero_point, axis):
        return g.op("QuantizeLinear", x, scale, zero_point, axis_i=axis)

    @parse_args("v", "v", "v", "i")
    def symbolic_dequantize_linear(g, q, scale, zero_point, axis):
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)

    register_custom_op_symbolic("intbert_onnx::quantize_linear", symbolic_quantize_linear, MIN_OPSET)
    register_custom_op_symbolic("intbert_onnx::dequantize_linear", symbolic_dequantize_linear, MIN_OPSET)
    _torchscript_registered = True
