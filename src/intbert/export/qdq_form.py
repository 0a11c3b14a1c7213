"""The export form of a calibrated QDQBERT: a copy whose quantizers are explicit Q/DQ ops and int8 weights.

``export_form(model, target, reduce_range)`` deep-copies the model (the caller's model is never changed) and swaps

* every activation `TensorQuantizer` for `ActivationQDQ` (``QuantizeLinear`` then ``DequantizeLinear``),
* every `QuantLinear` for `ExportLinear`: its input through `ActivationQDQ`, its weight stored as an int8 buffer
  (``intbert.quantization.quantize``, the one integer definition) read through ``DequantizeLinear``, so the
  exported graph carries int8 initializers and no float copy of the weight,
* a disabled (or quantization-off) quantizer for ``nn.Identity``: it emits nothing.

How a quantizer's integers are written depends on the target, never what they mean:

* ``tensorrt``: signed int8 with zero point 0 and ``scale = amax / 127``, TensorRT's explicit-quantization contract.
* ``onnxruntime``: activations as **uint8 with zero point 128**. ``clamp(round(x/s) + 128, 0, 255) - 128`` equals
  ``clamp(round(x/s), -128, 127)`` for every x, so the numbers are identical to signed int8; but ORT's CPU QDQ fusion
  turns ``DQ(uint8) -> MatMul`` into an int8 GEMM even when one Q feeds several MatMuls (QDQBERT's q/k/v inputs, which
  ORT's common-subexpression pass merges when their scales are equal), where int8 activations stay in float32
  (research notes, qdqbert.md 9.3). Weights stay int8 with zero point 0 (MLAS's fast u8 x s8 kernels). With
  ``reduce_range`` the 8-bit weights are written with 7 bits (``scale = amax / 63``, values in [-64, 63]): AVX2 without
  VNNI multiplies u8 x s8 pairs with ``vpmaddubsw``, which saturates at 2^15 - 1 when ``2 * 255 * |w|`` exceeds it
  (``2 * 255 * 128 = 65280``); ``2 * 255 * 64 = 32640`` cannot. That changes the model (coarser weights), so it is an
  explicit choice with a VNNI-based default, and `reduced_weight_range` gives the matching torch reference.

Range flags that a plain QuantizeLinear cannot express are written as a clamp before it: ``narrow_range`` clamps at
``-amax`` (``round(max(x/s, -qmax)) == max(round(x/s), -qmax)`` because ``-qmax`` is an integer) and a quantizer with
clipping on (``learn_amax``) clamps to ``[-amax, amax]`` as `TensorQuantizer` does.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from intbert.errors import UncalibratedError
from intbert.quantization import TINY_AMAX, TensorQuantizer, quant_bounds, quantize
from intbert.quantization.nn import QuantLinear

from .qdq_ops import dequantize_linear, quantize_linear

__all__ = ["TARGETS", "ActivationQDQ", "ExportLinear", "QDQCounts", "export_form", "reduced_weight_range"]

TARGETS = ("onnxruntime", "tensorrt")

# uint8 zero point that makes [0, 255] hold the signed range [-128, 127] (onnxruntime target).
UINT8_SIGNED_ZERO_POINT = 128
# Weight bits with `reduce_range`: 2 * 255 * 2^(7-1) = 32640 <= 2^15 - 1, the int16 pair sum of vpmaddubsw.
REDUCED_WEIGHT_BITS = 7


@dataclass(frozen=True)
class QDQCounts:
    """What the exported graph must contain: one Q and one DQ per activation quantizer, one DQ per weight.

    ``quantized_linears`` counts the QuantLinears whose input and weight are both quantized: those an int8 runtime can
    run as integer GEMMs (a weight-only or input-only one stays a float MatMul).
    """

    activation_quantizers: int
    weight_quantizers: int
    quantized_linears: int

    @property
    def quantize_nodes(self) -> int:
        return self.activation_quantizers

    @property
    def dequantize_nodes(self) -> int:
        return self.activation_quantizers + self.weight_quantizers


def _is_active(q: TensorQuantizer) -> bool:
    """Whether the quantizer changes its input in eval (the same test as `TensorQuantizer.forward`)."""
    return not q._disabled and (q._if_quant or q._if_clip)


def _quantizes(q: TensorQuantizer) -> bool:
    """Whether the quantizer emits Q/DQ nodes (a clip-only one emits a clamp)."""
    return not q._disabled and q._if_quant


def _effective_amax(name: str, q: TensorQuantizer) -> torch.Tensor:
    """The amax the quantizer's forward uses (``amax * scale_amax``), float32 on CPU; refuses dynamic mode."""
    if q._if_calib:
        raise UncalibratedError(
            f"{name} is still collecting calibration statistics; finish calibration first "
            "(intbert.calibrate / calibrate_qdq do it, or call load_calib_amax() and disable_calib())"
        )
    amax = q.amax
    if amax is None:
        raise UncalibratedError(
            f"{name} has no amax (it would quantize each tensor by its own max, which an exported graph cannot do); "
            "calibrate the model first: intbert.calibrate(model, batches)"
        )
    amax = amax.detach().to("cpu", torch.float32)
    if q._scale_amax is not None:
        amax = amax * q._scale_amax
    return amax


def _channel_axis(name: str, amax: torch.Tensor) -> int | None:
    """``None`` for a per-tensor amax, else the one dimension of a keep-dims amax that has more than one entry."""
    if amax.numel() == 1:
        return None
    axes = [d for d, size in enumerate(amax.shape) if size > 1]
    if len(axes) != 1:
        raise ValueError(
            f"{name} has an amax of shape {list(amax.shape)}: ONNX Q/DQ take one scale per tensor or per index of a "
            "single axis; calibrate it per tensor or along one axis"
        )
    return axes[0]


class ActivationQDQ(nn.Module):
    """``DequantizeLinear(QuantizeLinear(clamp(x)))`` with fixed scale and zero point; an activation quantizer's twin.

    ``clamp_min`` / ``clamp_max`` (None, or tensors broadcasting to the input) express narrow range and clipping.
    """

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
                 clamp_min: torch.Tensor | None = None, clamp_max: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.axis = 0 if axis is None else axis  # ONNX ignores axis when the scale is a scalar
        self.register_buffer("clamp_min", clamp_min)
        self.register_buffer("clamp_max", clamp_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clamp_min is not None:
            x = torch.maximum(x, self.clamp_min)
        if self.clamp_max is not None:
            x = torch.minimum(x, self.clamp_max)
        q = quantize_linear(x, self.scale, self.zero_point, self.axis)
        return dequantize_linear(q, self.scale, self.zero_point, self.axis).to(x.dtype)


class ClampOnly(nn.Module):
    """A quantizer with clipping on and quantization off: ``clamp(x)`` only."""

    def __init__(self, clamp_min: torch.Tensor, clamp_max: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("clamp_min", clamp_min)
        self.register_buffer("clamp_max", clamp_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x, self.clamp_min), self.clamp_max)


class ExportLinear(nn.Module):
    """``F.linear(input_qdq(x), W, b)`` where ``W = DequantizeLinear(weight_q)`` (int8 buffer) or a float weight.

    The weight keeps nn.Linear's ``[out, in]`` layout and ``F.linear``, the op QuantLinear itself calls, so the export
    form computes the same float32 result as the model in torch; the exporters write ``MatMul(x, Transpose(DQ(W)))``,
    which ORT's transpose optimizer folds into the initializer before its int8 fusion.
    """

    def __init__(self, input_qdq: nn.Module, bias: torch.Tensor | None, *, weight: torch.Tensor | None = None,
                 weight_q: torch.Tensor | None = None, weight_scale: torch.Tensor | None = None,
                 weight_zero_point: torch.Tensor | None = None, weight_axis: int | None = None) -> None:
        super().__init__()
        self.input_qdq = input_qdq
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        if weight_q is None:
            self.register_buffer("weight", weight.detach().clone())
        else:
            self.register_buffer("weight", None)
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_zero_point", weight_zero_point)
        self.weight_axis = 0 if weight_axis is None else weight_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_q is not None:
            weight = dequantize_linear(self.weight_q, self.weight_scale, self.weight_zero_point, self.weight_axis)
        else:
            weight = self.weight
        return F.linear(self.input_qdq(x), weight, self.bias)


def _activation_module(name: str, q: TensorQuantizer, target: str) -> nn.Module:
    if not _is_active(q):
        return nn.Identity()
    amax = _effective_amax(name, q)
    if bool((amax <= TINY_AMAX).any()):
        raise ValueError(
            f"{name} has amax {amax.min().item():.3g} <= 2^-24: it turns its input into zeros, which a QuantizeLinear "
            "cannot express; recalibrate on data that reaches it, or disable it (quantizer.disable())"
        )
    axis = _channel_axis(name, amax)
    unsigned = q.unsigned
    lo_clamp = torch.zeros_like(amax) if unsigned else -amax
    clamp_min = clamp_max = None
    if q._if_clip:
        clamp_min, clamp_max = lo_clamp, amax.clone()
    if not q._if_quant:
        return ClampOnly(clamp_min, clamp_max)
    if q.num_bits != 8:
        raise ValueError(
            f"{name} quantizes activations to {q.num_bits} bits; ONNX QuantizeLinear saturates to the full 8-bit range, "
            "so only 8-bit activation quantizers can be exported (rebuild it with num_bits=8)"
        )
    if unsigned and target == "tensorrt":
        raise ValueError(
            f"{name} is unsigned; TensorRT takes signed int8 with zero point 0 only: rebuild it with unsigned=False "
            "or export with target='onnxruntime'"
        )
    if q.narrow_range and not unsigned and clamp_min is None:
        # QuantizeLinear saturates at -128; -amax maps to exactly -127 (module docstring).
        clamp_min = -amax
    _, qmax = quant_bounds(8, unsigned)
    scale = amax / qmax  # float32 division, as fake_quant computes it
    if unsigned:
        zero_point = torch.zeros(amax.shape, dtype=torch.uint8)
    elif target == "onnxruntime":
        zero_point = torch.full(amax.shape, UINT8_SIGNED_ZERO_POINT, dtype=torch.uint8)
    else:
        zero_point = torch.zeros(amax.shape, dtype=torch.int8)
    if axis is not None:
        scale, zero_point = scale.flatten(), zero_point.flatten()
    else:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return ActivationQDQ(scale, zero_point, axis, clamp_min, clamp_max)


def _weight_bits(q: TensorQuantizer, reduce_range: bool) -> int:
    return REDUCED_WEIGHT_BITS if reduce_range and q.num_bits == 8 and not q.unsigned else q.num_bits


def _export_linear(name: str, linear: QuantLinear, target: str, reduce_range: bool) -> ExportLinear:
    input_qdq = _activation_module(f"{name}._input_quantizer", linear._input_quantizer, target)
    wq = linear._weight_quantizer
    weight = linear.weight.detach().to(torch.float32)
    bias = None if linear.bias is None else linear.bias.detach().to(torch.float32)
    if not _is_active(wq):
        return ExportLinear(input_qdq, bias, weight=weight)
    wname = f"{name}._weight_quantizer"
    amax = _effective_amax(wname, wq)
    if wq.num_bits > 8:
        raise ValueError(f"{wname} has {wq.num_bits}-bit weights; ONNX int8 initializers hold at most 8 bits")
    if wq.unsigned and target == "tensorrt":
        raise ValueError(f"{wname} is unsigned; TensorRT takes signed int8 weights only (rebuild with unsigned=False)")
    if wq._if_clip:
        lo = torch.zeros_like(amax) if wq.unsigned else -amax
        weight = torch.minimum(torch.maximum(weight, lo), amax)
    if not wq._if_quant:
        return ExportLinear(input_qdq, bias, weight=weight)
    axis = _channel_axis(wname, amax)
    # The one integer definition (fake_quant): q = clamp(round_half_even(W / (amax / qmax))); a row with a degenerate
    # amax gets q = 0 and scale 1, which DequantizeLinear turns into the same zeros fake quantization gives.
    bits = _weight_bits(wq, reduce_range)
    weight_q, scale = quantize(weight, amax, bits, wq.unsigned, wq.narrow_range)
    scale = scale.reshape(()) if axis is None else scale.flatten()
    zero_point = torch.zeros(scale.shape, dtype=weight_q.dtype)
    return ExportLinear(input_qdq, bias, weight_q=weight_q, weight_scale=scale.contiguous(),
                        weight_zero_point=zero_point, weight_axis=axis)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def export_form(model: nn.Module, target: str, reduce_range: bool) -> tuple[nn.Module, QDQCounts]:
    """A float32 eval-mode copy of ``model`` with Q/DQ ops in place of its quantizers, and the node counts it implies.

    Raises:
        UncalibratedError: an active quantizer has no amax or is still calibrating (the message names it).
        ValueError: a quantizer option that ONNX Q/DQ cannot express for ``target`` (the message names it).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
    for name, module in model.named_modules():  # options no Q/DQ pair carries: refused, never dropped silently
        if isinstance(module, TensorQuantizer) and _is_active(module):
            if module.pre_quant_scale is not None:
                raise ValueError(f"{name} has a pre_quant_scale, which a QuantizeLinear does not apply; fold it into "
                                 "the previous layer's weights (and divide this input by it) before export")
            if not module.fake_quant:
                raise ValueError(f"{name} quantizes for real (fake_quant=False) and outputs integers; export needs "
                                 "fake quantization (QuantDescriptor(fake_quant=True), the default)")
    replacements: dict[str, nn.Module] = {}
    activations = weights = linears = 0
    inside_linear: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            replacements[name] = _export_linear(name, module, target, reduce_range)
            inside_linear.update({f"{name}._input_quantizer", f"{name}._weight_quantizer"})
            quantized_in, quantized_w = _quantizes(module._input_quantizer), _quantizes(module._weight_quantizer)
            activations += quantized_in
            weights += quantized_w
            linears += quantized_in and quantized_w
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and name not in inside_linear:
            replacements[name] = _activation_module(name, module, target)
            activations += _quantizes(module)
    if not weights and not activations:
        raise ValueError(
            f"{type(model).__name__} has no active quantizer, so there is nothing to export as Q/DQ; enable and "
            "calibrate its quantizers (or export the float model with torch.onnx.export)"
        )
    exported = copy.deepcopy(model).float().eval()
    for name, module in replacements.items():
        _set_submodule(exported, name, module)
    return exported, QDQCounts(int(activations), int(weights), int(linears))


@contextlib.contextmanager
def reduced_weight_range(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Temporarily give ``model``'s 8-bit signed weight quantizers 7 bits: the torch twin of a ``reduce_range`` export.

    The amax stays, so the step doubles (``amax / 63``) exactly as the exporter wrote it. Restored on exit.
    """
    changed: list[TensorQuantizer] = []
    try:
        if enabled:
            for module in model.modules():
                if isinstance(module, QuantLinear):
                    wq = module._weight_quantizer
                    bits = _weight_bits(wq, True)
                    if bits != wq.num_bits:
                        wq.num_bits = bits
                        changed.append(wq)
        yield model
    finally:
        for wq in changed:
            wq.num_bits = 8
