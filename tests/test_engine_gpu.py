"""On a CUDA device the engine gives the CPU reference's integers: both kernel sets, every head, CUDA graphs.

Every comparison is ``torch.equal`` between the reference backend on the CPU and the ``cuda`` backend on the
GPU: the fused Triton kernels (``kernels="triton"``) and the ``torch._int_mm`` fallback (``kernels="torch"``),
kernel by kernel at BERT-like sizes (K = 768 and 3072, one key block at L = 128 and several at L = 200),
then whole frozen models: every head, head size 15, padding (at the end and inside), batch > 1, and the
encoder replayed from CUDA graphs. All marked gpu (skipped without a CUDA device, conftest.py) but the last, which
checks on the CPU what the graphs rely on: padding a batch to its bucket changes no integer.
"""

from __future__ import annotations

import pytest
import torch

import intbert
from intbert.engine import freeze
from intbert.engine.backends import ReferenceBackend
from intbert.engine.backends.cuda import CUDABackend, triton_available
from intbert.engine.modules import GELUConstants, ResidualRequant, SoftmaxConstants
from intbert.engine.tokens import TokenLayout
from intbert.quantization import intops

from _engine_parts import int8, layernorm, linear, requant
from _sizes import randint
from test_ibert_modeling import HEADS, batch, build, calibrated, tiny_config

KERNELS = [pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="needs triton")), "torch"]
REF = ReferenceBackend()


@pytest.fixture(autouse=True)
def _fixed_tiles(monkeypatch):
    """One fixed tile per Triton GEMM (read at each launch): autotuning every test shape would compile for minutes
    (benchmarks/gpu_engine.py autotunes)."""
    monkeypatch.setenv("INTBERT_TRITON_AUTOTUNE", "0")


def _cuda(*modules):
    return [m.cuda() for m in modules]


def _same_on_gpu(kernels, run, *modules):
    """run(be, *modules) on the CPU reference and on the GPU backend; the integers must be equal."""
    want = run(REF, *modules)
    got = run(CUDABackend(kernels), *_cuda(*[m for m in modules]))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.cpu(), want), f"{int((got.cpu() != want).sum())} of {want.numel()} integers differ"


class _Inputs(torch.nn.Module):
    """Tensors that travel to the GPU with the constants (buffers)."""

    def __init__(self, **tensors):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("weight_bit", [8, 7])
@pytest.mark.parametrize("M,K,N", [(1, 768, 768), (300, 768, 2304), (4 * 128, 3072, 768)])
def test_linear_requant_and_stacked_qkv(kernels, weight_bit, M, K, N):
    lin, rq, x = linear(1, N, K, weight_bit), requant(2, N, 8, 31, (37, 45)), _Inputs(x=int8(3, M, K))
    _same_on_gpu(kernels, lambda be, lin, rq, x: be.linear_requant(x.x, lin, rq), lin, rq, x)
    lins = [linear(s, 96, K, weight_bit) for s in (4, 5, 6)]
    rqs = [requant(7, 96, 8, 31, (37, 45)), requant(8, 1, 8, 31, (37, 45)), requant(9, 96, 8, 31, (37, 45))]

    def qkv(be, x, *parts):
        return torch.cat(be.linear_requant_many(x.x, list(zip(parts[:3], parts[3:]))), dim=-1)

    _same_on_gpu(kernels, qkv, _Inputs(x=int8(3, M, K)), *lins, *rqs)


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("M", [1, 4 * 128 + 3])
def test_ffn_up_gelu_chain(kernels, M):
    scale = torch.rand(3072, generator=torch.Generator().manual_seed(9)) * 1e-3 + 2**-20
    parts = (linear(8, 3072, 768), GELUConstants(*intops.gelu_constants(scale)[:3]),
             requant(10, 3072, 8, intops.GELU_OUTPUT_BITS, (40, 63)), requant(11, 1, 8, 31, (30, 31)),
             _Inputs(x=int8(12, M, 768)))
    _same_on_gpu(kernels, lambda be, lin, g, rq1, rq2, x: be.linear_gelu_requant(x.x, lin, g, rq1, rq2), *parts)


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("M,K,N", [(1, 3072, 768), (4 * 128 + 3, 768, 768), (37, 72, 30)])
@pytest.mark.parametrize("small_rows", [False, True])
def test_dense_residual_layernorm_chain(kernels, M, K, N, small_rows):
    """small_rows: few-bit LayerNorm inputs, where one unit of the row mean moves the int8 output by ~1/2."""
    a_e, b_e, out_e = ((40, 42), (32, 33), (53, 55)) if small_rows else ((25, 35), (20, 25), (55, 59))
    if small_rows and K > 1000:
        a_e = (44, 46)  # K = 3072 accumulators are 2^2 larger
    add = ResidualRequant(requant(14, N, 22, 31, a_e), requant(15, 1, 22, 31, b_e))
    parts = (linear(13, N, K), add, layernorm(16, N), requant(17, N, 8, 31, out_e),
             _Inputs(x=int8(18, M, K), res=int8(19, M, N)))
    _same_on_gpu(kernels, lambda be, lin, add, ln, rq, x: be.linear_residual_layernorm(x.x, lin, x.res, add, ln, rq),
                 *parts)


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("B,L,heads,d", [(2, 1, 2, 15), (3, 17, 2, 15), (2, 128, 12, 64), (2, 200, 4, 64),
                                         (1, 33, 3, 15)])
@pytest.mark.parametrize("score_scale", [3e-4, 1e-6])
def test_fused_attention(kernels, B, L, heads, d, score_scale):
    H = heads * d
    mask = (randint(26, 0, 4, (B, L)) > 0).long()
    mask[-1, L // 2:] = 0
    if B > 2:
        mask[1] = 0  # a sequence with no kept key
    sm = SoftmaxConstants(8, **intops.softmax_constants(torch.tensor([score_scale])))
    parts = (sm, requant(27, H, 8, 31, (36, 42)), _Inputs(q=int8(23, B, L, H), k=int8(24, B, L, H),
                                                          v=int8(25, B, L, H), mask=mask))

    def run(be, sm, rq, x):
        tokens = TokenLayout.padded(torch.zeros(B, L, dtype=torch.long, device=x.q.device), x.mask)
        return be.attention_requant(x.q, x.k, x.v, tokens, heads, sm, rq)

    _same_on_gpu(kernels, run, *parts)


def _odd_head(name):
    """HEADS[name] with hidden 30 in 2 heads (head size 15), calibrated."""
    cls, kwargs, overrides, make, _, _ = HEADS[name]
    model = build(cls, tiny_config(True, "d8", hidden_size=30, num_attention_heads=2, **overrides), **kwargs)
    return calibrated(model, make), make


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_on_cuda_equals_the_cpu_reference(kernels, name, monkeypatch):
    """Hidden states (the fused path) and attention probabilities (the unfused path that returns them) equal the
    CPU reference's; the float heads on top equal the simulation's on the same GPU (float layers are not
    bit-identical across devices, so the logits are compared on one device)."""
    monkeypatch.setenv("INTBERT_CUDA_KERNELS", kernels)
    model, make = _odd_head(name)
    x = make(5)
    x["attention_mask"].view(-1, x["attention_mask"].shape[-1])[-1, 2] = 0  # a hole inside the last sequence
    cpu = freeze(model, backend="reference")
    gpu = freeze(model.cuda(), backend="cuda")
    gx = {k: v.cuda() for k, v in x.items()}
    with torch.no_grad():
        for flag in ("output_hidden_states", "output_attentions"):
            key = flag[len("output_"):]
            want, got = getattr(cpu(**x, **{flag: True}), key), getattr(gpu(**gx, **{flag: True}), key)
            assert len(got) == len(want) and all(torch.equal(a.cpu(), b) for a, b in zip(got, want)), key
        sim, out = model(**gx), gpu(**gx)
    for key, value in sim.items():
        if torch.is_tensor(value):
            assert torch.equal(out[key], value), key


def _frozen_encoder(seq=40):
    config = tiny_config(True, "d8", hidden_size=30, num_attention_heads=2, max_position_embeddings=seq + 4)
    model = calibrated(build(intbert.IBertModel, config), make=lambda s: batch(s, b=3, seq=seq, pad_last=7))
    return freeze(model, backend="reference").encoder


def _holey(seed, b, seq):
    x = batch(seed, b=b, seq=seq, pad_last=5)
    x["attention_mask"][-1, 2] = 0  # a hole inside a sequence
    return x


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", KERNELS)
def test_encoder_integers_at_every_layer_boundary(kernels):
    encoder = _frozen_encoder()
    x = _holey(30, 3, 37)
    want = encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"], output_hidden_states=True)
    encoder.cuda()
    encoder.set_backend("cuda")
    encoder._backends[("cuda", str(encoder.device))] = CUDABackend(kernels)
    got = encoder.encode(*(x[k].cuda() for k in ("input_ids", "attention_mask", "token_type_ids")),
                         output_hidden_states=True)
    assert torch.equal(got[0].cpu(), want[0])
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got[1], want[1]))


@pytest.mark.gpu
@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_cuda_graph_replays_equal_the_cpu_reference_across_buckets():
    """Two buckets, each replayed with new inputs (lengths 5, 13, 37 and batches 1, 3), padding in the inputs:
    every replay equals the reference on the CPU; a bucket is captured once."""
    from intbert.engine.backends.cuda_graphs import GraphedEncoder

    encoder = _frozen_encoder()
    cases = [_holey(31, 3, 13), batch(32, b=1, seq=5, pad_last=0), _holey(33, 3, 37), _holey(34, 3, 9)]
    want = [encoder.encode(x["input_ids"], x["attention_mask"], x["token_type_ids"])[0] for x in cases]
    encoder.cuda()
    encoder.set_backend("cuda")
    encoder._backends[("cuda", str(encoder.device))] = CUDABackend("triton")
    graphed = GraphedEncoder(encoder, batches=(1, 4), lengths=(16, 40))
    for x, w in zip(cases, want):
        got = graphed.encode(*(x[k].cuda() for k in ("input_ids", "attention_mask", "token_type_ids")))
        assert torch.equal(got.cpu(), w)
    assert graphed.buckets == [(1, 16), (4, 16), (4, 40)]


@pytest.mark.parametrize("mask", [True, False])
def test_padding_to_a_graph_bucket_changes_no_integer(mask):
    """What GraphedEncoder relies on, on the CPU reference: (3, 13) ids padded to a (4, 16) bucket (pad ids, mask 0,
    a fully masked extra sequence) give the unpadded integers on [:3, :13], padded positions of the input included;
    without a mask too (it becomes ones on the real block)."""
    from intbert.engine.backends.cuda_graphs import pad_to_bucket
    from intbert.models.ibert.modeling_ibert import create_position_ids_from_input_ids

    encoder = _frozen_encoder()
    x = _holey(35, 3, 13)
    m = x["attention_mask"] if mask else None
    want = encoder.encode(x["input_ids"], m, x["token_type_ids"])[0]
    pos = create_position_ids_from_input_ids(x["input_ids"], encoder.config.pad_token_id)
    padded = pad_to_bucket(x["input_ids"], m, x["token_type_ids"], pos, 4, 16, encoder.config.pad_token_id)
    got = encoder.encode(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"],
                         padded["position_ids"])[0]
    assert got.shape == (4, 16, 30) and torch.equal(got[:3, :13], want)
