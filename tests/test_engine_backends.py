"""Every fast backend equals the reference backend bit for bit, on tensors large enough to take the
compiled (fused) path, with adversarial values at the edges of each op's input range."""

from __future__ import annotations

import pytest
import torch

from intbert.engine.backends import ReferenceBackend, default_backend_name, ort_gemm, resolve_backend
from intbert.engine.modules import GELUConstants, ResidualRequant, SoftmaxConstants
from intbert.quantization import fused, intops

from _engine_parts import int8, layernorm, linear, requant
from _sizes import randint

needs_ort = pytest.mark.skipif(not ort_gemm.ort_available(), reason="needs onnxruntime")
FAST = [pytest.param("cpu", marks=needs_ort), pytest.param("cuda", marks=pytest.mark.gpu)]
B, L, H, I, NH = 4, 130, 136, 520, 4  # B*L*I and B*NH*L*L exceed fused.MIN_NUMEL: the compiled path runs


def device_of(name):
    return torch.device("cuda" if name == "cuda" else "cpu")


def _both(name):
    dev = device_of(name)
    return ReferenceBackend(), resolve_backend(name, dev), dev


def _to(dev, *modules):
    return [m.to(dev) for m in modules]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("weight_bit", [8, 7])
def test_linear_and_linear_requant(name, weight_bit):
    ref, fast, dev = _both(name)
    lin, rq = _to(dev, linear(1, I, H, weight_bit), requant(2, I, 8, 31))
    x = int8(3, B, L, H).to(dev)
    assert torch.equal(ref.linear(x, lin), fast.linear(x, lin))
    assert torch.equal(ref.linear_requant(x, lin, rq), fast.linear_requant(x, lin, rq))


@pytest.mark.parametrize("name", FAST)
def test_attention_matmuls_and_softmax(name):
    ref, fast, dev = _both(name)
    d = H // NH
    q, k, v = (int8(s, B, NH, L, d).to(dev) for s in (4, 5, 6))
    keep = (randint(7, 0, 5, (B, 1, 1, L)) > 0).to(dev)
    keep[0] = False  # a fully masked row
    scale = torch.tensor([3e-4])
    sm = SoftmaxConstants(8, **intops.softmax_constants(scale)).to(dev)
    ctx_ref, p_ref = ref.attention(q, k, v, keep, sm)
    ctx, p = fast.attention(q, k, v, keep, sm)
    assert torch.equal(p_ref, p) and torch.equal(ctx_ref, ctx)
    assert int(p[0].max()) == 0
    assert torch.equal(ref.softmax(ref.matmul(q, k.transpose(-1, -2)), None, sm),
                       fast.softmax(fast.matmul(q, k.transpose(-1, -2)), None, sm))


@pytest.mark.parametrize("name", FAST)
def test_gelu_chain(name):
    ref, fast, dev = _both(name)
    lin = _to(dev, linear(8, I, H))[0]
    scale = torch.rand(I, generator=torch.Generator().manual_seed(9)) * 1e-3 + 2**-20
    g = GELUConstants(*intops.gelu_constants(scale)[:3]).to(dev)
    rq1, rq2 = _to(dev, requant(10, I, 8, intops.GELU_OUTPUT_BITS, (40, 63)), requant(11, 1, 8, 31, (30, 31)))
    x = int8(12, B, L, H).to(dev)
    assert torch.equal(ref.linear_gelu_requant(x, lin, g, rq1, rq2), fast.linear_gelu_requant(x, lin, g, rq1, rq2))
    acc = ref.linear(x, lin)
    assert torch.equal(ref.gelu(acc, g), fast.gelu(acc, g))


@pytest.mark.parametrize("name", FAST)
def test_residual_layernorm_chain(name):
    ref, fast, dev = _both(name)
    lin = _to(dev, linear(13, H, I))[0]
    add = ResidualRequant(requant(14, H, 22, 31, (25, 35)), requant(15, 1, 22, 31, (20, 25))).to(dev)
    ln, rq = _to(dev, layernorm(16, H), requant(17, H, 8, 31, (30, 40)))
    x, res = int8(18, B, L, I).to(dev), int8(19, B, L, H).to(dev)
    want = ref.linear_residual_layernorm(x, lin, res, add, ln, rq)
    assert torch.equal(want, fast.linear_residual_layernorm(x, lin, res, add, ln, rq))
    h = ref.residual(ref.linear(x, lin), res, add)
    assert torch.equal(h, fast.residual(ref.linear(x, lin), res, add))
    assert torch.equal(ref.layernorm(h, ln), fast.layernorm(h, ln))
    wide = randint(20, -(2**21), 2**21, (B, L, H)).to(dev)
    assert torch.equal(ref.requantize(wide, rq), fast.requantize(wide, rq))


@needs_ort
def test_compiled_path_is_exercised_here():
    assert fused.is_enabled() or pytest.skip("torch.compile disabled (INTBERT_COMPILE=0)")
    assert B * L * I >= fused.MIN_NUMEL and B * NH * L * L >= fused.MIN_NUMEL


def test_backend_choice_by_device_and_refusals():
    cpu = torch.device("cpu")
    from intbert.engine.backends import native

    fallback = "cpu" if ort_gemm.ort_available() else "reference"
    assert default_backend_name(cpu) == ("native" if native.native_available() else fallback)
    assert resolve_backend("reference", cpu).name == "reference"
    with pytest.raises(ValueError, match="cannot run on cpu"):
        resolve_backend("cuda", cpu)
    with pytest.raises(ValueError, match="unknown engine backend"):
        resolve_backend("fast", cpu)
