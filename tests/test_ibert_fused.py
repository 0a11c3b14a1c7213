"""The compiled twins in intbert.quantization.fused are bit-identical to the intops definitions.

Inputs are above fused.MIN_NUMEL so the compiled path really runs, and every twin test asserts that it did
(``fused.compiled_calls`` grew): with compilation strict (conftest.py), a twin that fails to compile raises,
and without it the eager fallback would not count, so a broken compile fails these tests either way rather
than comparing the eager definition with itself (proved by the last test). Shapes follow the model's
(per-tensor and per-channel multipliers, masks, int32 and int64 inputs).
"""

import contextlib

import pytest
import torch

from intbert.quantization import fused
from intbert.quantization import intops as I

N = fused.MIN_NUMEL  # elements per case: the smallest size that takes the compiled path


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def compiled_on():
    was, was_strict = fused.is_enabled(), fused.is_strict()
    fused.set_enabled(True)
    fused.set_strict(True)
    yield
    fused.set_enabled(was)
    fused.set_strict(was_strict)


@contextlib.contextmanager
def compiled_path(calls: int = 1):
    """The block must make ``calls`` twin calls that ran compiled code (not the eager definition)."""
    before = fused.compiled_calls()
    yield
    ran = fused.compiled_calls() - before
    assert ran >= calls, f"{ran} of {calls} twin calls ran compiled: the test compared the eager definition with itself"


def test_inputs_are_large_enough_to_take_the_compiled_path():
    assert 8 * (N // 8) >= fused.MIN_NUMEL


@pytest.mark.slow
@pytest.mark.parametrize("input_bits,lo,hi", [(31, -(2**30), 2**30), (47, -(2**46), 2**46)])
@pytest.mark.parametrize("channels", [1, 64])
@pytest.mark.parametrize("num_bits", [8, 22, 32])
def test_rescale_and_clamp_equal_requantize(input_bits, lo, hi, channels, num_bits):
    q = torch.randint(lo, hi, (N // 64, 64), generator=gen(channels + num_bits))
    if input_bits == 31:
        q = q.int()  # attached integers are int32 where they fit
    m, e = I.dyadic(torch.rand(channels, dtype=torch.float64, generator=gen(3)) * 2.0 ** -(input_bits - 20))
    with compiled_path():
        got = fused.rescale(q, m, e, input_bits).clamp_(*I.quant_bounds(num_bits))
    assert torch.equal(got, I.requantize(q.long(), m, e, num_bits, input_bits))


@pytest.mark.slow
def test_int_gelu_twin():
    q = torch.randint(-(2**26), 2**26, (N // 64, 64), generator=gen(1)).int()
    b, c, one, _ = I.gelu_constants(torch.rand(64, generator=gen(2)) * 1e-4 + 1e-5)
    with compiled_path():
        got = fused.int_gelu(q, b, c, one)
    assert torch.equal(got, I.int_gelu(q, b, c, one))


@pytest.mark.slow
def test_int_softmax_twin_with_padding_mask():
    q = torch.randint(-(2**18), 2**18, (4, 4, 64, 64), generator=gen(4)).int()
    mask = torch.ones(4, 1, 1, 64, dtype=torch.bool)
    mask[0, ..., 40:] = False
    mask[1] = False  # a fully masked row
    consts = I.softmax_constants(torch.tensor([1e-3]))
    with compiled_path():
        got = fused.int_softmax(q, mask, consts, 8)
    assert torch.equal(got, I.int_softmax(q, mask, consts, 8))


@pytest.mark.slow
def test_int_layernorm_twin():
    q = torch.randint(-(2**21), 2**21, (N // 64, 64), generator=gen(5)).int()
    sign, bias, _ = I.layernorm_constants(torch.randn(64, generator=gen(6)), torch.randn(64, generator=gen(7)), 64)
    for shift in (0, 3):
        s = torch.tensor([shift])
        with compiled_path():
            got = fused.int_layernorm(q, s, sign, bias)
        assert torch.equal(got, I.int_layernorm(q, s, sign, bias))


TWIN_TESTS = [
    lambda: test_rescale_and_clamp_equal_requantize(31, -(2**30), 2**30, 64, 8),
    test_int_gelu_twin,
    test_int_softmax_twin_with_padding_mask,
    test_int_layernorm_twin,
]


def _compile_raises(*args, **kwargs):
    raise RuntimeError("boom: no C++ compiler")


def _compiled_call_raises(fn, **kwargs):
    def run(*args):
        raise RuntimeError("boom: inductor failed")

    return run


@pytest.mark.parametrize("breakage", [_compile_raises, _compiled_call_raises], ids=["compile", "compiled-call"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "fallback"])
@pytest.mark.parametrize("twin_test", range(len(TWIN_TESTS)))
def test_a_twin_that_fails_to_compile_fails_its_test(monkeypatch, breakage, strict, twin_test):
    """torch.compile raising (or its compiled function raising) fails every twin test above: strict, with the
    compile error; with the user-facing fallback, the eager answer is right but is not counted as compiled, and
    the fallback warns, naming the error."""
    monkeypatch.setattr(fused, "_state", dict(fused._state, strict=strict))
    monkeypatch.setattr(fused, "_compiled", {})  # nothing compiled yet: the next call compiles
    monkeypatch.setattr(torch, "compile", breakage)
    if strict:
        with pytest.raises(fused.CompiledTwinError, match="boom"):
            TWIN_TESTS[twin_test]()
    else:
        with pytest.warns(RuntimeWarning, match="torch.compile of .* failed .*boom"):
            with pytest.raises(AssertionError, match="ran compiled"):
                TWIN_TESTS[twin_test]()
        assert not fused.is_enabled()  # the fallback holds for the rest of the process (here: this test)
