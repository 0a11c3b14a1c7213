"""intbert's quantization toolkit: pytorch-quantization's API, in pure PyTorch.

The names follow NVIDIA's pytorch-quantization (``QuantDescriptor``, ``TensorQuantizer``,
``quant_nn.QuantLinear``, ``calib.MaxCalibrator`` / ``HistogramCalibrator``), so code and checkpoints
written for it work; the numerics are defined once in `fake_quant`.
"""

# Subpackages, reachable as intbert.quantization.calib / .nn; left out of __all__ so that a star import
# does not shadow torch.nn.
from . import calib, nn, tensor_quant
from .descriptor import (
    QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW,
    QUANT_DESC_8BIT_PER_TENSOR,
    QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR,
    QuantDescriptor,
    ScaledQuantDescriptor,
)
from .fake_quant import TINY_AMAX, dequantize, fake_tensor_quant, quant_bounds, quantize
from .tensor_quantizer import TensorQuantizer, enable_onnx_export
from .workflow import (
    CALIBRATION_METHODS,
    calibrate_quantizers,
    disable_quantizers,
    enable_quantizers,
    named_quantizers,
    quantizer_summary,
    recalibrate_weights,
    set_quantizer_by_name,
)

__all__ = [
    "QuantDescriptor",
    "ScaledQuantDescriptor",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR",
    "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW",
    "TensorQuantizer",
    "enable_onnx_export",
    "fake_tensor_quant",
    "quantize",
    "dequantize",
    "quant_bounds",
    "TINY_AMAX",
    "CALIBRATION_METHODS",
    "calibrate_quantizers",
    "recalibrate_weights",
    "set_quantizer_by_name",
    "enable_quantizers",
    "disable_quantizers",
    "named_quantizers",
    "quantizer_summary",
]
