"""QuantLinear: pytorch-quantization's quant_nn.Linear with per-row weights and per-tensor inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intbert.quantization import (
    QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW,
    QUANT_DESC_8BIT_PER_TENSOR,
    QuantDescriptor,
    TensorQuantizer,
    fake_tensor_quant,
)
from intbert.quantization.calib import reduce_amax
from intbert.quantization.nn import Linear, QuantLinear


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def restore_defaults():
    saved = (QuantLinear.default_quant_desc_input, QuantLinear.default_quant_desc_weight)
    yield
    QuantLinear.default_quant_desc_input, QuantLinear.default_quant_desc_weight = saved


def test_is_a_linear_with_two_quantizers_and_the_upstream_alias():
    m = QuantLinear(6, 3)
    assert isinstance(m, nn.Linear) and Linear is QuantLinear
    assert isinstance(m.input_quantizer, TensorQuantizer) and m.input_quantizer is m._input_quantizer
    assert m.weight_quantizer is m._weight_quantizer


def test_defaults_are_per_tensor_input_and_per_row_weight():
    assert QuantLinear.default_quant_desc_input == QUANT_DESC_8BIT_PER_TENSOR
    assert QuantLinear.default_quant_desc_weight == QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    m = QuantLinear(6, 3)
    assert m.input_quantizer.axis is None and m.weight_quantizer.axis == (0,)


def test_forward_quantizes_input_per_tensor_and_weight_per_row():
    torch.manual_seed(0)
    m = QuantLinear(6, 3)
    m.input_quantizer.amax = 1.5
    m.weight_quantizer.amax = reduce_amax(m.weight, axis=1) * 0.8
    x = randn(4, 6) * 2
    expected = F.linear(fake_tensor_quant(x, torch.tensor(1.5)), fake_tensor_quant(m.weight, m.weight_quantizer.amax), m.bias)
    assert torch.equal(m(x), expected)


def test_dynamic_weight_amax_is_per_row():
    torch.manual_seed(0)
    m = QuantLinear(5, 4, bias=False)
    m.input_quantizer.disable()
    x = randn(2, 5)
    expected = F.linear(x, fake_tensor_quant(m.weight, reduce_amax(m.weight, axis=1)))
    assert torch.equal(m(x), expected)


def test_disabled_quantizers_give_plain_linear():
    torch.manual_seed(0)
    m = QuantLinear(5, 4)
    m.input_quantizer.disable()
    m.weight_quantizer.disable()
    x = randn(2, 5)
    assert torch.equal(m(x), F.linear(x, m.weight, m.bias))


def test_state_dict_keys_match_pytorch_quantization():
    m = QuantLinear(5, 4)
    m.input_quantizer.amax = 1.0
    m.weight_quantizer.amax = torch.ones(4, 1)
    assert set(m.state_dict()) == {"weight", "bias", "_input_quantizer._amax", "_weight_quantizer._amax"}
    fresh = QuantLinear(5, 4)
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert fresh.weight_quantizer.amax.shape == (4, 1)


def test_legacy_checkpoint_loads_on_cpu():
    """A checkpoint as pytorch-quantization writes it: 0-dim input amax, [out, 1] weight amax."""
    legacy = {
        "weight": randn(4, 5),
        "bias": torch.zeros(4),
        "_input_quantizer._amax": torch.tensor(2.5),
        "_weight_quantizer._amax": torch.tensor([[0.5], [1.0], [1.5], [2.0]]),
    }
    m = QuantLinear(5, 4)
    result = m.load_state_dict(legacy, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert m.input_quantizer.amax.device.type == "cpu" and m.input_quantizer.amax.item() == 2.5
    assert torch.equal(m.weight_quantizer.amax, legacy["_weight_quantizer._amax"])


def test_set_default_descriptors_apply_to_later_modules(restore_defaults):
    QuantLinear.set_default_quant_desc_input(QuantDescriptor(num_bits=4, unsigned=True))
    QuantLinear.set_default_quant_desc_weight(QuantDescriptor(num_bits=6))
    m = QuantLinear(3, 2)
    assert (m.input_quantizer.num_bits, m.input_quantizer.unsigned) == (4, True)
    assert (m.weight_quantizer.num_bits, m.weight_quantizer.axis) == (6, None)


def test_explicit_descriptors_override_defaults():
    m = QuantLinear(3, 2, quant_desc_input=QuantDescriptor(num_bits=5), quant_desc_weight=QuantDescriptor(num_bits=7, axis=0))
    assert m.input_quantizer.num_bits == 5 and m.weight_quantizer.num_bits == 7


def test_non_descriptor_defaults_raise(restore_defaults):
    with pytest.raises(TypeError, match="QuantDescriptor"):
        QuantLinear.set_default_quant_desc_input({"num_bits": 8})
    with pytest.raises(TypeError, match="QuantDescriptor"):
        QuantLinear(3, 2, quant_desc_weight="per-row")


def test_from_linear_shares_parameters():
    lin = nn.Linear(5, 3)
    m = QuantLinear.from_linear(lin)
    assert m.weight is lin.weight and m.bias is lin.bias
    assert m(randn(2, 5)).shape == (2, 3)


def test_gradients_reach_weight_and_input():
    torch.manual_seed(0)
    m = QuantLinear(5, 3)
    x = randn(2, 5).requires_grad_(True)
    m(x).sum().backward()
    assert m.weight.grad is not None and x.grad is not None and m.weight.grad.abs().sum() > 0


@pytest.mark.gpu
def test_quantizers_follow_the_module_to_cuda():
    m = QuantLinear(5, 3).cuda()
    m.load_state_dict({**m.state_dict(), "_input_quantizer._amax": torch.tensor(1.0)}, strict=False)
    assert m.input_quantizer.amax.device.type == "cuda"
    assert m(torch.randn(2, 5, device="cuda")).device.type == "cuda"
