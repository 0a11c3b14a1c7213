"""TensorQuantizer: switches, amax handling, calibration, dynamic mode and the `_amax` state dict."""

import warnings

import pytest
import torch
from torch import nn

from intbert.quantization import QuantDescriptor, TensorQuantizer, fake_tensor_quant
from intbert.quantization.calib import HistogramCalibrator, MaxCalibrator, amax_per_axis


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_forward_with_amax_equals_fake_quant():
    q = TensorQuantizer(QuantDescriptor(num_bits=6, narrow_range=True, amax=1.5))
    x = randn(20, 7) * 2
    assert torch.equal(q(x), fake_tensor_quant(x, torch.tensor(1.5), 6, False, True))


def test_descriptor_amax_makes_a_float32_buffer():
    q = TensorQuantizer(QuantDescriptor(amax=[[1.0], [2.0]], axis=0))
    assert q.amax.dtype == torch.float32 and q.amax.shape == (2, 1)
    assert "_amax" in dict(q.named_buffers())


def test_dynamic_mode_uses_abs_max_per_axis():
    q = TensorQuantizer(QuantDescriptor(axis=(0,)))
    x = randn(4, 9)
    assert torch.equal(q(x), fake_tensor_quant(x, amax_per_axis(x, 0)))
    assert q.amax is None


def test_uncalibrated_quantizer_warns_once_in_eval_only():
    q = TensorQuantizer()
    x = randn(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(x)  # training mode: dynamic mode is legitimate (QAT from scratch)
    q.eval()
    with pytest.warns(UserWarning, match="dynamic mode"):
        q(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(x)


def test_disabled_returns_the_input_itself():
    q = TensorQuantizer(QuantDescriptor(amax=1.0), disabled=True)
    x = randn(3)
    assert q(x) is x
    q.enable()
    assert not torch.equal(q(x), x)


def test_calibration_with_quant_disabled_passes_input_through():
    q = TensorQuantizer(if_quant=False, if_calib=True)
    x = randn(10) * 3
    assert q(x) is x
    q.load_calib_amax()
    assert q.amax.item() == x.abs().max().item()


def test_clip_clamps_to_amax():
    q = TensorQuantizer(QuantDescriptor(amax=1.0), if_quant=False, if_clip=True)
    assert q(torch.tensor([-3.0, 0.5, 3.0])).tolist() == [-1.0, 0.5, 1.0]
    u = TensorQuantizer(QuantDescriptor(amax=1.0, unsigned=True), if_quant=False, if_clip=True)
    assert u(torch.tensor([-3.0, 0.5, 3.0])).tolist() == [0.0, 0.5, 1.0]


def test_amax_shape_change_raises():
    q = TensorQuantizer()
    q.amax = 2.0
    with pytest.raises(ValueError, match="shape change"):
        q.amax = torch.ones(3, 1)
    q.amax = None
    q.amax = torch.ones(3, 1)
    assert q.amax.shape == (3, 1)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_amax_value_raises(bad):
    with pytest.raises(ValueError, match="amax"):
        TensorQuantizer().amax = bad


def test_amax_setter_copies_in_place_and_accepts_parameters():
    q = TensorQuantizer()
    q.amax = 1.0
    buf = q.amax
    q.amax = nn.Parameter(torch.tensor(3.0))
    assert q.amax is buf and q.amax.item() == 3.0
    assert "amax" not in dict(q.named_parameters())


def test_load_calib_amax_without_data_raises_or_warns():
    q = TensorQuantizer()
    with pytest.raises(RuntimeError, match="collected no data"):
        q.load_calib_amax()
    with pytest.warns(UserWarning, match="collected no data"):
        assert q.load_calib_amax(strict=False) is None
    assert q.amax is None


def test_load_calib_amax_rejects_method_the_calibrator_cannot_compute():
    q = TensorQuantizer()
    q(randn(4))
    with pytest.raises(ValueError, match="histogram"):
        q.load_calib_amax("percentile")
    h = TensorQuantizer(QuantDescriptor(calib_method="histogram"), if_calib=True)
    h(randn(100))
    with pytest.raises(ValueError, match="method"):
        h.load_calib_amax()


def test_histogram_quantizer_loads_percentile_and_entropy():
    h = TensorQuantizer(QuantDescriptor(calib_method="histogram"), if_calib=True, if_quant=False)
    assert isinstance(h.calibrator, HistogramCalibrator)
    x = randn(4000)
    h(x)
    top = h.load_calib_amax("percentile", percentile=100.0).item()
    assert x.abs().max().item() <= top <= x.abs().max().item() * (1 + 1 / 2048) + 1e-6
    assert h.load_calib_amax("entropy", start_bin=64, stride=4).item() <= top


def test_learn_amax_makes_a_trainable_parameter():
    q = TensorQuantizer(QuantDescriptor(amax=1.0, learn_amax=True))
    assert isinstance(q.amax, nn.Parameter)
    assert [n for n, _ in q.named_parameters()] == ["_amax"]
    q(torch.tensor([3.0, 0.3])).sum().backward()
    assert q.amax.grad is not None and q.amax.grad.item() != 0.0


def test_learn_amax_after_calibration_becomes_a_parameter():
    q = TensorQuantizer(QuantDescriptor(learn_amax=True), if_calib=True)
    q(randn(8))
    q.load_calib_amax()
    assert isinstance(q.amax, nn.Parameter)


def test_scale_amax_multiplies_amax():
    q = TensorQuantizer(QuantDescriptor(amax=2.0, scale_amax=0.5))
    x = randn(30)
    assert torch.equal(q(x), fake_tensor_quant(x, torch.tensor(1.0)))


def test_properties():
    q = TensorQuantizer(QuantDescriptor(num_bits=8, axis=0, amax=[[1.27], [2.54]]))
    assert q.maxbound == 127 and q.axis == 0 and q.fake_quant and q.scale == 1.0
    assert torch.allclose(q.step_size, torch.tensor([[0.01], [0.02]]))
    q.num_bits = 4
    assert q.maxbound == 7 and q.calibrator.num_bits == 4
    q.narrow_range = True
    assert q.narrow_range


def test_state_dict_uses_reference_key_and_loads_into_a_quantizer_without_amax():
    src = TensorQuantizer(QuantDescriptor(axis=0))
    src.amax = torch.tensor([[0.5], [1.5]])
    state = src.state_dict()
    assert list(state) == ["_amax"]
    dst = TensorQuantizer(QuantDescriptor(axis=0))
    result = dst.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(dst.amax, src.amax) and dst.amax.device.type == "cpu" and dst.amax.dtype == torch.float32
    assert dst.amax is not state["_amax"]


def test_loading_checkpoint_amax_of_another_shape_takes_the_checkpoint_shape():
    dst = TensorQuantizer(QuantDescriptor(amax=1.0))
    with pytest.warns(UserWarning, match="shape"):
        dst.load_state_dict({"_amax": torch.tensor([[1.0], [2.0]])})
    assert dst.amax.shape == (2, 1)


def test_missing_amax_in_checkpoint_is_reported_when_the_module_has_one():
    dst = TensorQuantizer(QuantDescriptor(amax=1.0))
    with pytest.raises(RuntimeError, match="_amax"):
        dst.load_state_dict({}, strict=True)


def test_half_keeps_amax_in_float32():
    q = TensorQuantizer(QuantDescriptor(amax=1.0 / 3)).half()
    assert q.amax.dtype == torch.float32 and q.amax.item() == torch.tensor(1.0 / 3).item()


def test_extra_repr_lists_bits_axis_and_amax():
    q = TensorQuantizer(QuantDescriptor(axis=(0,), amax=[[0.25], [2.0]]))
    text = repr(q)
    assert "8bit" in text and "axis=(0,)" in text and "amax=[0.2500, 2.0000](2)" in text
    assert "amax=dynamic" in repr(TensorQuantizer())


def test_max_calibrator_is_the_default_and_histogram_is_selectable():
    assert isinstance(TensorQuantizer().calibrator, MaxCalibrator)
    assert isinstance(TensorQuantizer(QuantDescriptor(calib_method="histogram")).calibrator, HistogramCalibrator)


def test_non_descriptor_raises_type_error():
    with pytest.raises(TypeError, match="QuantDescriptor"):
        TensorQuantizer({"num_bits": 8})


@pytest.mark.gpu
def test_checkpoint_amax_loads_onto_the_module_device():
    cuda_q = TensorQuantizer().cuda()
    cuda_q.load_state_dict({"_amax": torch.tensor(2.0)})
    assert cuda_q.amax.device.type == "cuda"
    cpu_q = TensorQuantizer()
    cpu_q.load_state_dict({"_amax": torch.tensor(2.0, device="cuda")})
    assert cpu_q.amax.device.type == "cpu"
    calibrated = TensorQuantizer(if_calib=True).cuda()
    calibrated(torch.randn(10, device="cuda"))
    assert calibrated.load_calib_amax().device.type == "cuda"


def test_quantizer_with_descriptor_amax_builds_under_a_meta_device_context():
    """transformers' from_pretrained builds modules under torch.device('meta')."""
    with torch.device("meta"):
        q = TensorQuantizer(QuantDescriptor(amax=2.0))
        q.amax = 3.0
    assert q.amax.device.type == "cpu" and q.amax.item() == 3.0
