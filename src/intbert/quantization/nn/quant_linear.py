"""`QuantLinear`: ``nn.Linear`` whose input and weight pass through a `TensorQuantizer` each."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from ..tensor_quantizer import TensorQuantizer

__all__ = ["QuantLinear", "Linear"]


def _check_desc(desc: QuantDescriptor, role: str) -> QuantDescriptor:
    if not isinstance(desc, QuantDescriptor):
        raise TypeError(f"quant_desc_{role} must be a QuantDescriptor, got {type(desc).__name__}")
    return desc


class QuantLinear(nn.Linear):
    """``y = F.linear(input_quantizer(x), weight_quantizer(W), b)``; the bias stays float.

    Defaults (class level, changed with ``set_default_quant_desc_input/weight``): the input is
    8-bit per tensor with a max calibrator; the weight is 8-bit with one amax per output row
    (``axis=(0,)``, amax shape ``[out_features, 1]``). State-dict keys are pytorch-quantization's:
    ``_input_quantizer._amax`` and ``_weight_quantizer._amax``.
    """

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        quant_desc_input: QuantDescriptor | None = None,
        quant_desc_weight: QuantDescriptor | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        desc_in = _check_desc(quant_desc_input or type(self).default_quant_desc_input, "input")
        desc_w = _check_desc(quant_desc_weight or type(self).default_quant_desc_weight, "weight")
        # The quantizers follow the weight's device so that a calibrated amax is created next to it.
        self._input_quantizer = TensorQuantizer(desc_in).to(self.weight.device)
        self._weight_quantizer = TensorQuantizer(desc_w).to(self.weight.device)

    @classmethod
    def set_default_quant_desc_input(cls, value: QuantDescriptor) -> None:
        """Descriptor for the input quantizer of QuantLinear modules built from now on."""
        cls.default_quant_desc_input = copy.deepcopy(_check_desc(value, "input"))

    @classmethod
    def set_default_quant_desc_weight(cls, value: QuantDescriptor) -> None:
        """Descriptor for the weight quantizer of QuantLinear modules built from now on."""
        cls.default_quant_desc_weight = copy.deepcopy(_check_desc(value, "weight"))

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quant_desc_input: QuantDescriptor | None = None,
        quant_desc_weight: QuantDescriptor | None = None,
    ) -> QuantLinear:
        """A QuantLinear sharing ``linear``'s weight and bias tensors (not copies)."""
        module = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            quant_desc_input=quant_desc_input,
            quant_desc_weight=quant_desc_weight,
            device="meta",
        )
        module.weight = linear.weight
        module.bias = linear.bias
        module._input_quantizer.to(linear.weight.device)
        module._weight_quantizer.to(linear.weight.device)
        return module

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    @property
    def weight_quantizer(self) -> TensorQuantizer:
        return self._weight_quantizer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input_quantizer(input), self._weight_quantizer(self.weight), self.bias)


# pytorch-quantization's alias: quant_nn.Linear.
Linear = QuantLinear
