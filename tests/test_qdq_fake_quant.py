"""fake_quant: the one numerics definition, checked against a plain-Python reference with torch.equal."""

import struct

import pytest
import torch

from intbert.quantization import TINY_AMAX, dequantize, fake_tensor_quant, quant_bounds, quantize
from intbert.quantization.calib import amax_per_axis, reduce_amax


def f32(v: float) -> float:
    """Round a Python float (float64) to the nearest float32, ties to even."""
    return struct.unpack("f", struct.pack("f", v))[0]


def ref_fake_quant(values, amax, num_bits, unsigned=False, narrow=False):
    """Scalar reference: float32 scale = amax / qmax, q = clamp(round_half_even(x / scale)), y = q * scale.

    float64 division/product of float32 operands, rounded once to float32, equals the float32
    operation (53 >= 2*24 + 2 bits, so the double rounding is innocuous). Python's round() is half-to-even.
    """
    qmax = 2 ** (num_bits - 1 + int(unsigned)) - 1
    qmin = 0 if unsigned else (-qmax if narrow else -qmax - 1)
    if amax <= 2.0**-24:
        return [0.0 for _ in values], [0 for _ in values]
    scale = f32(f32(amax) / qmax)
    qs = [min(max(round(f32(x / scale)), qmin), qmax) for x in values]
    return [f32(q * scale) for q in qs], qs


CASES = [(8, False, False), (8, False, True), (8, True, False), (4, False, False), (3, True, False), (16, False, True)]


@pytest.mark.parametrize("num_bits, unsigned, narrow", CASES)
@pytest.mark.parametrize("amax", [1.0, 0.37, 3.3e-3, 1234.5])
def test_matches_python_reference_exactly(num_bits, unsigned, narrow, amax):
    gen = torch.Generator().manual_seed(num_bits * 7 + int(unsigned) + 2 * int(narrow))
    x = torch.randn(500, generator=gen) * amax * 0.8
    x[:5] = torch.tensor([amax, -amax, 1.3 * amax, -1.3 * amax, 0.0])
    expected, qs = ref_fake_quant(x.tolist(), f32(amax), num_bits, unsigned, narrow)
    got = fake_tensor_quant(x, torch.tensor(amax), num_bits, unsigned, narrow)
    assert torch.equal(got, torch.tensor(expected, dtype=torch.float32))
    q, scale = quantize(x, torch.tensor(amax), num_bits, unsigned, narrow)
    assert torch.equal(q.to(torch.int64), torch.tensor(qs))
    assert torch.equal(dequantize(q, scale), got)


def test_ties_round_half_to_even_on_both_signs():
    # amax = qmax makes scale exactly 1, so x / scale is exactly k + 0.5.
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 126.5, -127.5])
    q, scale = quantize(x, torch.tensor(127.0))
    assert scale.item() == 1.0
    assert q.tolist() == [0, 2, 2, 4, 0, -2, -2, -4, 126, -128]


def test_saturation_per_range():
    x = torch.tensor([1000.0, -1000.0])
    one = torch.tensor(1.0)
    assert quantize(x, one)[0].tolist() == [127, -128]
    assert quantize(x, one, narrow_range=True)[0].tolist() == [127, -127]
    assert quantize(x, one, unsigned=True)[0].tolist() == [255, 0]
    assert quantize(x, one, num_bits=4)[0].tolist() == [7, -8]


def test_quant_bounds():
    assert quant_bounds(8) == (-128, 127)
    assert quant_bounds(8, narrow_range=True) == (-127, 127)
    assert quant_bounds(8, unsigned=True) == (0, 255)
    assert quant_bounds(8, unsigned=True, narrow_range=True) == (0, 255)
    with pytest.raises(ValueError, match="num_bits"):
        quant_bounds(1)


def test_integer_dtype_is_the_smallest_that_fits():
    x = torch.tensor([0.5])
    one = torch.tensor(1.0)
    assert quantize(x, one)[0].dtype == torch.int8
    assert quantize(x, one, unsigned=True)[0].dtype == torch.uint8
    assert quantize(x, one, num_bits=16)[0].dtype == torch.int16
    assert quantize(x, one, num_bits=24, unsigned=True)[0].dtype == torch.int32


def test_tiny_amax_gives_zero_and_scale_one():
    x = torch.tensor([1.0, -3.0, 1e-9])
    for amax in (0.0, TINY_AMAX):
        assert torch.equal(fake_tensor_quant(x, torch.tensor(amax)), torch.zeros(3))
        q, scale = quantize(x, torch.tensor(amax))
        assert q.tolist() == [0, 0, 0] and scale.item() == 1.0
    # Just above the bound quantizes normally (1e-9 is ~ 2^-30, well inside 127 steps of 2^-23/127).
    assert fake_tensor_quant(torch.tensor([2.0**-23]), torch.tensor(2.0**-23)).item() == f32(127 * f32(2.0**-23 / 127))


def test_tiny_amax_zeroes_only_its_own_channel():
    x = torch.ones(3, 4)
    amax = torch.tensor([[1.0], [0.0], [2.0**-25]])
    out = fake_tensor_quant(x, amax)
    assert torch.equal(out[0], torch.ones(4)) and torch.equal(out[1:], torch.zeros(2, 4))
    assert quantize(x, amax)[1].flatten().tolist() == [f32(1 / 127), 1.0, 1.0]


@pytest.mark.parametrize("axis", [0, 1, 2, -1, (0, 1), (0, 2)])
def test_per_channel_equals_per_slice_loop(axis):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 6, generator=gen) * torch.arange(1, 7.0)
    amax = amax_per_axis(x, axis) * 0.7  # clip a bit so saturation is exercised too
    got = fake_tensor_quant(x, amax)
    expected = torch.empty_like(x)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in amax.shape]).reshape(-1, 3).tolist():
        sl = tuple(slice(None) if n == 1 else i for i, n in zip(index, amax.shape))
        expected[sl] = fake_tensor_quant(x[sl], amax[tuple(index)])
    assert torch.equal(got, expected)


def test_amax_per_axis_keeps_the_quantizer_axis():
    x = torch.randn(4, 5, 6)
    assert amax_per_axis(x, None).shape == ()
    assert amax_per_axis(x, 0).shape == (4, 1, 1)
    assert amax_per_axis(x, (0, 1)).shape == (4, 5, 1)
    assert amax_per_axis(x, -1).shape == (1, 1, 6)
    with pytest.raises(ValueError, match="axis"):
        amax_per_axis(x, 3)


def test_reduce_amax_reduces_over_axis_as_pytorch_quantization():
    """Was: intbert's reduce_amax kept ``axis`` (the opposite) and had no default."""
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(reduce_amax(x), x.abs().max()) and reduce_amax(x).shape == ()
    assert reduce_amax(x, 0).shape == (1, 5, 6) and torch.equal(reduce_amax(x, 0), x.abs().amax(0, keepdim=True))
    assert reduce_amax(x, (1, 2)).shape == (4, 1, 1) and torch.equal(reduce_amax(x, (1, 2)), amax_per_axis(x, 0))
    assert reduce_amax(x, -1, keepdims=False).shape == (4, 5)
    with pytest.raises(ValueError, match="axis"):
        reduce_amax(x, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_quantize_in_float32(dtype):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(1000, generator=gen) * 3).to(dtype)
    amax = torch.tensor(2.7)
    got = fake_tensor_quant(x, amax)
    assert got.dtype == dtype
    assert torch.equal(got, fake_tensor_quant(x.float(), amax).to(dtype))
    assert torch.equal(quantize(x, amax)[0], quantize(x.float(), amax)[0])


def test_bad_amax_shape_or_sign_raises():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="keep-dims"):
        fake_tensor_quant(x, torch.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        fake_tensor_quant(x, torch.ones(2, 1))
    with pytest.raises(ValueError, match=">= 0"):
        fake_tensor_quant(x, torch.tensor(-1.0))


def test_straight_through_gradient_is_clipped_outside_the_range():
    amax = torch.tensor(1.27)  # scale 0.01: full range passes [-1.28, 1.27]
    x = torch.tensor([0.0, 1.0, 1.27, 1.2701, 1.5, -1.28, -1.2801, -1.5], requires_grad=True)
    fake_tensor_quant(x, amax).backward(torch.full((8,), 2.0))
    assert x.grad.tolist() == [2.0, 2.0, 2.0, 0.0, 0.0, 2.0, 0.0, 0.0]
    x.grad = None
    fake_tensor_quant(x, amax, narrow_range=True).backward(torch.ones(8))
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    x.grad = None
    fake_tensor_quant(x, amax, unsigned=True).backward(torch.ones(8))
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_gradient_keeps_the_input_dtype():
    x = torch.randn(10, dtype=torch.float16, requires_grad=True)
    fake_tensor_quant(x, torch.tensor(1.0)).sum().backward()
    assert x.grad.dtype == torch.float16


# Central differences of float32 forward values: error ~ 2^-24 * |y| / eps with eps = 1e-3.
FD_TOLERANCE = 1e-3


def test_learn_amax_gradient_matches_finite_differences_where_clipped():
    """Above/below the range y = amax and y = qmin/qmax * amax exactly, so FD of the real function applies."""
    x = torch.tensor([5.0, 9.0, -5.0, -7.0])
    amax = torch.tensor(2.0, requires_grad=True)
    fake_tensor_quant(x, amax).sum().backward()
    eps = 1e-3
    fd = (fake_tensor_quant(x, torch.tensor(2.0 + eps)) - fake_tensor_quant(x, torch.tensor(2.0 - eps))).sum() / (2 * eps)
    assert abs(amax.grad.item() - fd.item()) < FD_TOLERANCE
    assert abs(amax.grad.item() - (1 + 1 - 128 / 127 - 128 / 127)) < 1e-6


def test_learn_amax_gradient_matches_finite_differences_of_the_straight_through_surrogate():
    """Inside the range the forward is a staircase; the documented gradient is that of
    y = x + scale * r with the rounding residual r = q - x/scale held fixed (LSQ). Check it by FD, per channel."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 50, generator=gen, dtype=torch.float64) * 1.5
    g = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    amax0 = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    amax = amax0.float().clone().requires_grad_(True)
    fake_tensor_quant(x.float(), amax).backward(g.float())
    qmax = 127
    v0 = x / (amax0 / qmax)
    inside = (v0 >= -128) & (v0 <= 127)
    q0 = torch.round(v0).clamp(-128, 127)
    residual = q0 - v0

    def surrogate(a):
        s = a / qmax
        return torch.where(inside, x + s * residual, q0 * s)

    eps = 1e-4
    for row in range(3):
        bump = torch.zeros_like(amax0)
        bump[row] = eps
        fd = ((surrogate(amax0 + bump) - surrogate(amax0 - bump)) * g).sum() / (2 * eps)
        assert abs(amax.grad[row].item() - fd.item()) < FD_TOLERANCE * max(1.0, abs(fd.item()))


def test_degenerate_amax_gets_no_gradient():
    x = torch.randn(5, requires_grad=True)
    amax = torch.tensor(0.0, requires_grad=True)
    fake_tensor_quant(x, amax).sum().backward()
    assert amax.grad.item() == 0.0 and torch.equal(x.grad, torch.zeros(5))


@pytest.mark.gpu
def test_cuda_matches_cpu_bit_for_bit():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 129, generator=gen) * 4
    amax = amax_per_axis(x, 0) * 0.9
    assert torch.equal(fake_tensor_quant(x.cuda(), amax.cuda()).cpu(), fake_tensor_quant(x, amax))
    assert torch.equal(quantize(x.cuda(), torch.tensor(3.0))[0].cpu(), quantize(x, torch.tensor(3.0))[0])
