"""The compiled twins in intbert.quantization.fused are bit-identical to the intops definitions.

Inputs are above fused.MIN_NUMEL so the compiled path really runs; shapes follow the model's
(per-tensor and per-channel multipliers, masks, int32 and int64 inputs).
"""

import pytest
import torch

from intbert.quantization import fused
from intbert.quantization import intops as I

N = fused.MIN_NUMEL  # elements per case: the smallest size that takes the compiled path


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def compiled_on():
    was = fused.is_enabled()
    fused.set_enabled(True)
    yield
    fused.set_enabled(was)


def test_inputs_are_large_enough_to_take_the_compiled_path():
    assert 8 * (N // 8) >= fused.MIN_NUMEL


@pytest.mark.parametrize("input_bits,lo,hi", [(31, -(2**30), 2**30), (47, -(2**46), 2**46)])
@pytest.mark.parametrize("channels", [1, 64])
@pytest.mark.parametrize("num_bits", [8, 22, 32])
def test_rescale_and_clamp_equal_requantize(input_bits, lo, hi, channels, num_bits):
    q = torch.randint(lo, hi, (N // 64, 64), generator=gen(channels + num_bits))
    if input_bits == 31:
        q = q.int()  # attached integers are int32 where they fit
    m, e = I.dyadic(torch.rand(channels, dtype=torch.float64, generator=gen(3)) * 2.0 ** -(input_bits - 20))
    got = fused.rescale(q, m, e, input_bits).clamp_(*I.qrange(num_bits))
    assert torch.equal(got, I.requantize(q.long(), m, e, num_bits, input_bits))


def test_int_gelu_twin():
    q = torch.randint(-(2**26), 2**26, (N // 64, 64), generator=gen(1)).int()
    b, c, one, _ = I.gelu_constants(torch.rand(64, generator=gen(2)) * 1e-4 + 1e-5)
    assert torch.equal(fused.int_gelu(q, b, c, one), I.int_gelu(q, b, c, one))


def test_int_softmax_twin_with_padding_mask():
    q = torch.randint(-(2**18), 2**18, (4, 4, 64, 64), generator=gen(4)).int()
    mask = torch.ones(4, 1, 1, 64, dtype=torch.bool)
    mask[0, ..., 40:] = False
    mask[1] = False  # a fully masked row
    consts = I.softmax_constants(torch.tensor([1e-3]))
    assert torch.equal(fused.int_softmax(q, mask, consts, 8), I.int_softmax(q, mask, consts, 8))


def test_int_layernorm_twin():
    q = torch.randint(-(2**21), 2**21, (N // 64, 64), generator=gen(5)).int()
    sign, bias, _ = I.layernorm_constants(torch.randn(64, generator=gen(6)), torch.randn(64, generator=gen(7)), 64)
    for shift in (0, 3):
        s = torch.tensor([shift])
        assert torch.equal(fused.int_layernorm(q, s, sign, bias), I.int_layernorm(q, s, sign, bias))
