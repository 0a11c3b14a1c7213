"""QuantDescriptor: pytorch-quantization defaults, validation with clear errors, lossless serialization."""

import json

import pytest
import torch

from intbert.quantization import (
    QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW,
    QUANT_DESC_8BIT_PER_TENSOR,
    QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR,
    QuantDescriptor,
    ScaledQuantDescriptor,
)


def test_defaults_match_pytorch_quantization():
    d = QuantDescriptor()
    assert (d.num_bits, d.name, d.fake_quant, d.axis, d.amax) == (8, None, True, None, None)
    assert (d.learn_amax, d.scale_amax, d.calib_method, d.unsigned, d.narrow_range) == (False, None, "max", False, False)
    assert ScaledQuantDescriptor is QuantDescriptor


def test_predefined_descriptors():
    assert QUANT_DESC_8BIT_PER_TENSOR == QuantDescriptor(num_bits=8)
    assert QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR.unsigned
    assert QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW.axis == (0,)


def test_unknown_key_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="calib_methd"):
        QuantDescriptor(calib_methd="max")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_bits=0), "num_bits"),
        (dict(num_bits=1), "num_bits"),  # signed 1-bit has no positive level
        (dict(num_bits=25), "num_bits"),  # beyond float32's exact integers
        (dict(num_bits=(4, 3)), "num_bits"),
        (dict(calib_method="percentile"), "calib_method"),
        (dict(amax=-1.0), "amax"),
        (dict(amax=[1.0, -0.5]), "amax"),
        (dict(amax=float("nan")), "amax"),
        (dict(scale_amax=0.0), "scale_amax"),
        (dict(axis="0"), "axis"),
        (dict(axis=(0, 0)), "axis"),
        (dict(fake_quant="no"), "fake_quant"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QuantDescriptor(**kwargs)


def test_unsigned_one_bit_is_allowed():
    assert QuantDescriptor(num_bits=1, unsigned=True).num_bits == 1


def test_round_trip_is_lossless_through_json():
    d = QuantDescriptor(
        num_bits=6, name="w", axis=(0, 2), amax=[[1.5], [2.25]], learn_amax=True, scale_amax=0.5,
        calib_method="histogram", unsigned=False, narrow_range=True,
    )
    data = json.loads(json.dumps(d.to_dict()))
    back = QuantDescriptor.from_dict(data)
    assert back == d
    assert back.to_dict() == d.to_dict()
    assert back.calib_method == "histogram" and back.narrow_range is True and back.axis == (0, 2)


def test_amax_tensor_is_stored_as_float32_values():
    d = QuantDescriptor(amax=torch.tensor([[1.0], [0.1]], dtype=torch.float64))
    assert d.amax == torch.tensor([[1.0], [0.1]], dtype=torch.float32).tolist()


def test_equality_compares_axis_meaning_not_spelling():
    assert QuantDescriptor(axis=0) == QuantDescriptor(axis=(0,))
    assert QuantDescriptor(narrow_range=True) != QuantDescriptor()
    assert QuantDescriptor(calib_method="histogram") != QuantDescriptor()


def test_repr_lists_non_default_fields():
    text = repr(QuantDescriptor(num_bits=4, unsigned=True))
    assert text == "QuantDescriptor(num_bits=4, unsigned=True)"


def test_descriptor_is_read_only():
    with pytest.raises(AttributeError):
        QUANT_DESC_8BIT_PER_TENSOR.num_bits = 4
