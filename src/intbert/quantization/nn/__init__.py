"""Quantized drop-in modules (pytorch-quantization's ``quant_nn``)."""

from .quant_linear import Linear, QuantLinear

__all__ = ["QuantLinear", "Linear"]
