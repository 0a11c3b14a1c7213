"""pytorch-quantization's API where its users call it: ``tensor_quant`` (real quantization with integers and the
reciprocal scale, the legacy and affine fake quantizers), ``fake_quant=False`` quantizers, descriptor YAML, the
``unsigned`` setter, ``pre_quant_scale`` and ``enable_onnx_export``. Each was missing or a no-op."""

from __future__ import annotations

import pytest
import torch

from intbert.quantization import QuantDescriptor, TensorQuantizer, enable_onnx_export, quantize, tensor_quant

from _sizes import randn


def test_tensor_quant_returns_integers_and_the_reciprocal_scale_with_the_peers_narrow_default():
    x = randn(1, (4, 33)) * 3
    amax = torch.tensor(2.0)
    outputs, scale = tensor_quant.tensor_quant(x, amax)
    q, step = quantize(x, amax, narrow_range=True)  # intbert's one definition
    assert outputs.dtype == x.dtype and torch.equal(outputs, q.to(x.dtype))
    assert outputs.min() == -127 and torch.equal(scale, 127 / amax)  # peer: inputs ~= outputs / scale
    assert torch.allclose(outputs / scale, tensor_quant.fake_tensor_quant(x, amax))
    zero_out, zero_scale = tensor_quant.tensor_quant(x, torch.tensor(0.0))
    assert not zero_out.any() and zero_scale.item() == 1.0
    with pytest.raises(TypeError, match="Negative values"):
        tensor_quant.tensor_quant(x, amax, unsigned=True)
    with pytest.raises(ValueError, match="Negative values in amax"):
        tensor_quant.tensor_quant(x, torch.tensor(-1.0))


def test_tensor_quant_and_legacy_fake_quant_pass_gradients_inside_the_range_only():
    x = torch.tensor([-3.0, -1.0, 0.5, 1.9, 2.5], requires_grad=True)
    for fn in (lambda v: tensor_quant.tensor_quant(v, torch.tensor(2.0))[0], lambda v: tensor_quant.legacy_fake_tensor_quant(v, torch.tensor(2.0))):
        x.grad = None
        fn(x).sum().backward()
        assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert torch.equal(tensor_quant.legacy_fake_tensor_quant(x, torch.tensor(2.0)), tensor_quant.fake_tensor_quant(x, torch.tensor(2.0)))


def test_fake_affine_tensor_quant_follows_the_peers_formula():
    x = torch.linspace(-1.5, 4.5, 101, requires_grad=True)
    lo, hi = torch.tensor(-1.0), torch.tensor(4.0)
    y = tensor_quant.fake_affine_tensor_quant(x, lo, hi, 8)
    step = (hi - lo) / 255
    zero = torch.round(lo / step) + 128
    q = torch.clamp(torch.round(x.detach() / step) - zero, -128, 127)
    assert torch.equal(y.detach(), (q + zero) * step)
    assert y.detach().min() >= lo - step and y.detach().max() <= hi + step  # the range is kept, asymmetric
    y.sum().backward()
    assert torch.equal(x.grad, ((x >= lo) & (x <= hi)).float())


def test_a_real_quantizer_returns_integers_and_keeps_the_scale():
    q = TensorQuantizer(QuantDescriptor(num_bits=8, fake_quant=False, amax=2.0))
    x = randn(2, (3, 17)) * 2
    out = q(x)
    assert torch.equal(out, torch.round(out)) and out.abs().max() <= 128 and not q.fake_quant
    assert torch.equal(q.scale, torch.tensor(127 / 2.0)) and torch.allclose(out / q.scale, x.clamp(-2, 2), atol=2 / 127)
    assert QuantDescriptor.from_dict(QuantDescriptor(fake_quant=False).to_dict()).fake_quant is False


def test_descriptor_yaml_round_trips_and_reads_the_peers_partial_form():
    desc = QuantDescriptor(num_bits=6, axis=(0,), amax=[1.0, 2.0], unsigned=True, calib_method="histogram", name="x")
    text = desc.to_yaml()
    assert "num_bits: 6" in text and QuantDescriptor.from_yaml(text) == desc
    assert QuantDescriptor.from_yaml("num_bits: 4\naxis:\n- 1\n") == QuantDescriptor(num_bits=4, axis=(1,))
    with pytest.raises(ValueError, match="mapping"):
        QuantDescriptor.from_yaml("- 1\n- 2\n")


def test_the_unsigned_setter_switches_the_range_and_the_calibrator():
    q = TensorQuantizer(QuantDescriptor(amax=1.0))
    x = torch.linspace(-1, 1, 9)
    assert q(x).min() < 0
    q.unsigned = True
    assert q.unsigned and q.maxbound == 255 and q.calibrator.unsigned and q(x).min() == 0


def test_pre_quant_scale_scales_the_input_before_calibration_and_quantization_and_is_saved():
    """Was: accepted as a plain attribute, with no effect."""
    scale = torch.tensor([1.0, 2.0, 4.0])
    q = TensorQuantizer(QuantDescriptor(axis=None))
    q.pre_quant_scale = scale
    q.enable_calib()
    q.disable_quant()
    x = torch.tensor([[1.0, 1.0, 1.0], [-0.5, 0.25, 0.5]])
    q(x)
    q.load_calib_amax()
    assert q.amax.item() == 4.0  # calibrated on x * scale
    q.disable_calib()
    q.enable_quant()
    assert torch.equal(q(x), TensorQuantizer(QuantDescriptor(amax=4.0))(x * scale))
    loaded = TensorQuantizer(QuantDescriptor())
    loaded.load_state_dict(q.state_dict())
    assert torch.equal(loaded.pre_quant_scale, scale) and torch.equal(loaded(x), q(x))
    with pytest.raises(ValueError, match="positive and finite"):
        q.pre_quant_scale = torch.tensor([1.0, 0.0, 1.0])
    q.pre_quant_scale = None
    assert q.pre_quant_scale is None and "_pre_quant_scale" not in q.state_dict()


def test_enable_onnx_export_sets_the_flag_for_the_block_and_names_intberts_exporter():
    assert TensorQuantizer.use_fb_fake_quant is False
    with pytest.warns(UserWarning, match="intbert.export_onnx"):
        with enable_onnx_export():
            assert TensorQuantizer.use_fb_fake_quant is True
    assert TensorQuantizer.use_fb_fake_quant is False
