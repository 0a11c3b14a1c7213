"""csrc/chains_ref.cpp (the scalar definition of the native chains) equals the reference backend bit for bit.

The test builds a tiny shared library of chains_ref.cpp plus extern "C" shims (written here, in a
temporary directory) and calls it through ctypes on torch tensors; the expected values come from
``ReferenceBackend`` on the engine's own constant modules, composed as ``engine/model.py`` and
``backends/fused_ops.py`` compose them. Skips cleanly without g++.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from intbert.engine.backends.reference import ReferenceBackend
from intbert.engine.modules import GELUConstants, LayerNormConstants, Requant, ResidualRequant, SoftmaxConstants
from intbert.quantization import intops

CSRC = Path(__file__).resolve().parents[1] / "csrc"
E_EDGES = (0, 1, 15, 16, 17, 31, 40, 62, 63)

SHIMS = r"""
#include "kernels.h"
using namespace intbert;
typedef const int64_t* P;
static RequantC rq(P m, P e, int bits, int in) { return RequantC{m, e, bits, in}; }
extern "C" {
void t_bias_requant(const int32_t* acc, int64_t ld, int64_t rows, int64_t n, const int32_t* bias, P m, P e,
                    int bits, int in, int8_t* out, int64_t ld_out) {
  bias_requant_ref(acc, ld, rows, n, bias, rq(m, e, bits, in), out, ld_out);
}
void t_requant_i32(const int32_t* q, int64_t ld, int64_t rows, int64_t n, P m, P e, int bits, int in, int8_t* out,
                   int64_t ld_out) {
  requant_i32_ref(q, ld, rows, n, rq(m, e, bits, in), out, ld_out);
}
// k = {b, c, one, m1, e1, m2, e2}; b = {bits1, in1, bits2, in2}
void t_gelu(const int32_t* acc, int64_t ld, int64_t rows, int64_t n, const int32_t* bias, P* k, const int* b,
            int8_t* out, int64_t ld_out) {
  GeluC g{k[0], k[1], k[2]};
  bias_gelu_requant2_ref(acc, ld, rows, n, bias, g, rq(k[3], k[4], b[0], b[1]), rq(k[5], k[6], b[2], b[3]), out,
                         ld_out);
}
// k = {ma, ea, mb, eb, sign, lnbias, m, e}; b = {bits_a, in_a, bits_b, in_b, add_bits, bits, in}
void t_ln(const int32_t* acc, int64_t ld, int64_t rows, int64_t n, const int32_t* bias, const int8_t* res,
          int64_t ld_res, P* k, const int* b, int64_t shift, int8_t* out, int64_t ld_out) {
  ResidualC add{rq(k[0], k[1], b[0], b[1]), rq(k[2], k[3], b[2], b[3]), b[4]};
  LayerNormC ln{shift, k[4], k[5]};
  bias_residual_ln_requant_ref(acc, ld, rows, n, bias, res, ld_res, add, ln, rq(k[6], k[7], b[5], b[6]), out, ld_out);
}
// k = {a1m, a1e, b1m, b1e, a2m, a2e, b2m, b2e, sign, lnbias, m, e};
// b = {a1bits, a1in, b1bits, b1in, add1bits, a2bits, a2in, b2bits, b2in, add2bits, bits, in}
void t_embed(const int8_t* word, const int8_t* tt, const int8_t* pos, P ids, P tids, P pids, int64_t rows, int64_t n,
             P* k, const int* b, int64_t shift, int8_t* out, int64_t ld_out) {
  ResidualC add1{rq(k[0], k[1], b[0], b[1]), rq(k[2], k[3], b[2], b[3]), b[4]};
  ResidualC add2{rq(k[4], k[5], b[5], b[6]), rq(k[6], k[7], b[7], b[8]), b[9]};
  LayerNormC ln{shift, k[8], k[9]};
  embed_ref(word, tt, pos, ids, tids, pids, rows, n, add1, add2, ln, rq(k[10], k[11], b[10], b[11]), out, ld_out);
}
// k = {pre_shift, x0, zm, b, c, m, e}
void t_softmax(const int32_t* scores, int64_t L, const uint8_t* keep, P k, int output_bit, uint8_t* probs) {
  SoftmaxC sm{k[0], k[1], k[2], k[3], k[4], k[5], k[6], output_bit};
  softmax_row_ref(scores, L, keep, sm, probs);
}
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    tmp = tmp_path_factory.mktemp("chains_ref")
    (tmp / "shims.cpp").write_text(SHIMS)
    so = tmp / "libchains_ref.so"
    cmd = [gxx, "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{CSRC}", str(CSRC / "chains_ref.cpp"),
           str(tmp / "shims.cpp"), "-o", str(so)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(so))


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def ptrs(*ts: torch.Tensor):
    arr = (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])
    return arr


def ints(*vals: int):
    return (ctypes.c_int * len(vals))(*vals)


I64 = ctypes.c_int64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _requant(n: int, g: torch.Generator, bits: int, input_bits: int, ratio_range=(-30.0, 5.0)) -> Requant:
    """Per-channel dyadics: realistic (from log-uniform ratios) plus edge m (0, 1, 2^31 - 1) and edge e."""
    lo, hi = ratio_range
    ratio = torch.pow(2.0, lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    m, e = intops.dyadic(ratio)
    k = max(1, n // 4)
    idx = torch.randperm(n, generator=g)[:k]
    e[idx] = torch.tensor(E_EDGES)[torch.randint(len(E_EDGES), (k,), generator=g)]
    choices = torch.tensor([0, 1, 12345, 2**30, 2**31 - 1, 2**31 - 2])
    m[idx] = torch.where(torch.rand(k, generator=g) < 0.5, choices[torch.randint(len(choices), (k,), generator=g)],
                         torch.randint(2**30, 2**31, (k,), generator=g))
    return Requant(m, e, torch.ones(n), bits, input_bits)


def _acc(rows: int, n: int, g: torch.Generator, bound: int = 2**31 - 1) -> torch.Tensor:
    """int32 accumulators: mostly moderate, some at +-bound and INT32_MIN + 1."""
    a = torch.randint(-(2**20), 2**20, (rows, n), generator=g, dtype=torch.int64)
    big = torch.rand(rows, n, generator=g) < 0.1
    a = torch.where(big, torch.randint(-bound, bound + 1, (rows, n), generator=g), a)
    flat = a.view(-1)
    flat[: min(3, flat.numel())] = torch.tensor([bound, -bound, -bound])[: min(3, flat.numel())]
    return a.to(torch.int32)


@pytest.mark.parametrize("n", [1, 7, 17, 768])
@pytest.mark.parametrize("input_bits", [31, 32])
def test_bias_requant_and_requant_i32(lib, n, input_bits):
    g = _gen(n * 100 + input_bits)
    rows, ld = 3, n + 5
    be = ReferenceBackend()
    acc = _acc(rows, ld, g)
    bias = torch.randint(-(2**24), 2**24, (n,), generator=g, dtype=torch.int32)
    if input_bits == 31:  # |acc + bias| < 2^31: the contract of a 31-bit input
        acc = (acc.long()[:, :n] + bias).clamp(-(2**31) + 1, 2**31 - 1).sub(bias).to(torch.int32)
        acc = torch.nn.functional.pad(acc, (0, ld - n))
    for bits in (8, 4):
        rq = _requant(n, g, bits, input_bits)
        out = torch.zeros(rows, ld + 2, dtype=torch.int8)
        lib.t_bias_requant(ptr(acc), I64(ld), I64(rows), I64(n), ptr(bias), ptr(rq.m), ptr(rq.e), bits, input_bits,
                           ptr(out), I64(ld + 2))
        want = be.requantize(acc[:, :n].long() + bias, rq).to(torch.int8)
        assert torch.equal(out[:, :n], want)
        assert torch.equal(out[:, n:], torch.zeros(rows, ld + 2 - n, dtype=torch.int8))  # nothing past n
        lib.t_requant_i32(ptr(acc), I64(ld), I64(rows), I64(n), ptr(rq.m), ptr(rq.e), bits, input_bits, ptr(out),
                          I64(ld + 2))
        assert torch.equal(out[:, :n], be.requantize(acc[:, :n], rq).to(torch.int8))


def _gelu_consts(n: int, g: torch.Generator) -> tuple[GELUConstants, torch.Tensor]:
    """i-GELU constants of per-channel input scales 2^-20 .. 1e-2 (log-uniform); returns them and the scales."""
    lo, hi = -20.0, math.log2(1e-2)
    scale = torch.pow(2.0, lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    b, c, one, _ = intops.gelu_constants(scale)
    return GELUConstants(b, c, one), scale


@pytest.mark.parametrize("n", [1, 9, 33, 3072])
@pytest.mark.parametrize("bits1, in2", [(8, 31), (16, 32), (32, 32), (32, 31)])
def test_bias_gelu_requant2(lib, n, bits1, in2):
    g = _gen(7 + n + bits1 + in2)
    rows = 4
    be = ReferenceBackend()
    gc, scale = _gelu_consts(n, g)
    x = torch.randn(rows, n, generator=g, dtype=torch.float64) * 4
    acc = torch.round(x / scale).clamp(-(2**31) + 1, 2**31 - 1).long()
    acc[0, : min(n, 2)] = torch.tensor([2**31 - 1, -(2**31) + 1])[: min(n, 2)]
    bias = torch.randint(-1000, 1000, (n,), generator=g, dtype=torch.int32)
    q = (acc + bias).clamp(-(2**31) + 1, 2**31 - 1)
    # The contract of rq1 (input_bits 47): |i-GELU| < 2^47; channels with finer scales exceed it at
    # moderate x, so such inputs are zeroed here (see the report on intops' bound).
    ok = be.gelu(q, gc).abs() < 2**47
    acc = torch.where(ok, q - bias, torch.zeros_like(q)).to(torch.int32)
    rq1 = _requant(n, g, bits1, 47, ratio_range=(-40.0, -10.0) if bits1 == 8 else (-30.0, -5.0))
    rq2 = _requant(n, g, 8, in2, ratio_range=(-2.0, 2.0) if bits1 == 8 else (-25.0, -5.0))
    out = torch.zeros(rows, n, dtype=torch.int8)
    k = ptrs(gc.b, gc.c, gc.one, rq1.m, rq1.e, rq2.m, rq2.e)
    lib.t_gelu(ptr(acc), I64(n), I64(rows), I64(n), ptr(bias), k, ints(bits1, 47, 8, in2), ptr(out), I64(n))
    h = be.gelu(acc.long() + bias, gc)
    want = be.requantize(be.requantize(h, rq1), rq2).to(torch.int8)
    assert torch.equal(out, want)


def _ln_consts(n: int, g: torch.Generator, shift: int) -> LayerNormConstants:
    sign = torch.where(torch.rand(n, generator=g) < 0.3, -1, 1).long()
    bias = torch.randint(-(2**29), 2**29, (n,), generator=g)
    return LayerNormConstants(torch.tensor(shift), sign, bias)


def _ln_probes(h: torch.Tensor, ln: LayerNormConstants, g: torch.Generator):
    """Per-row probes of LayerNorm (h must be one row repeated or rows sharing n, see below).

    Yields (ln, rq) pairs: the calibrated constants with a coarse requant, and a "probe": an identity
    requant (m = 2^30, e = 30) with ln.bias = sign * offset - n(row 0) so that row 0's outputs are
    small offsets and any +-1 error in n (mean, variance, isqrt, the division) changes them.
    """
    n = h.shape[-1]
    yield ln, None
    plain = LayerNormConstants(ln.shift, torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    nrm = intops.int_layernorm(h[:1].long(), plain.shift, plain.sign, plain.bias)[0]
    offset = torch.randint(-120, 121, (n,), generator=g)
    probe = LayerNormConstants(ln.shift, ln.sign, ln.sign * offset - nrm)
    yield probe, Requant(torch.full((n,), 2**30), torch.full((n,), 30), torch.ones(n), 8, 31)


@pytest.mark.parametrize("n", [1, 2, 3, 64, 768])
@pytest.mark.parametrize("kind", ["random", "wide", "constant", "huge"])
def test_bias_residual_ln_requant(lib, n, kind):
    g = _gen(n + len(kind))
    rows, ld, ld_res = 3, n + 3, n + 1
    be = ReferenceBackend()
    # "wide": a 32-bit first addend, |acc + bias| beyond 2^31 (rescale's split / clamped-direct forms)
    in_a = 32 if kind == "wide" else 31
    acc = _acc(rows, ld, g, bound=2**31 - 1 if kind == "wide" else 2**30)
    bias = torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32)
    res = torch.randint(-128, 128, (rows, ld_res), generator=g, dtype=torch.int8)
    add = ResidualRequant(_requant(n, g, 22, in_a, (-12.0, 0.0)), _requant(n, g, 22, 31, (5.0, 14.0)))
    if kind == "wide":  # channels whose sum leaves int32 and whose ratio < 2^-10 keeps them unsaturated
        k = min(n, 3)
        acc[0, :k] = torch.tensor([2**31 - 1, -(2**31) + 1, 2**31 - 1], dtype=torch.int32)[:k]
        bias[:k] = torch.tensor([2**20, -(2**20), 0], dtype=torch.int32)[:k]
        add.a.m[:k] = torch.tensor([1, 3, 1])[:k]
        add.a.e[:k] = torch.tensor([15, 12, 15])[:k]
    if kind == "constant":
        acc[:] = 77
        res[:] = -3
        add = ResidualRequant(Requant(torch.full((n,), 2**30), torch.full((n,), 31), torch.ones(n), 22, 31),
                              Requant(torch.full((n,), 2**30), torch.full((n,), 20), torch.ones(n), 22, 31))
    if kind == "huge":  # the sum saturates the 22-bit grid: |h| ~ 2^21
        add = ResidualRequant(Requant(torch.full((n,), 2**31 - 1), torch.full((n,), 8), torch.ones(n), 22, 31),
                              Requant(torch.full((n,), 2**30), torch.full((n,), 15), torch.ones(n), 22, 31))
    h = be.residual(acc[:, :n].long() + bias, res[:, :n], add)
    shift = int(intops.layernorm_shift(h.long()))
    for sh in (shift, 0):
        for ln, probe_rq in _ln_probes(h, _ln_consts(n, g, sh), g):
            for bits, in_bits in ((8, 31), (8, 32)):
                rq = probe_rq or _requant(n, g, bits, in_bits, (-30.0, -18.0))
                out = torch.zeros(rows, ld, dtype=torch.int8)
                k = ptrs(add.a.m, add.a.e, add.b.m, add.b.e, ln.sign, ln.bias, rq.m, rq.e)
                b = ints(22, in_a, 22, 31, 22, bits, rq.input_bits)
                lib.t_ln(ptr(acc), I64(ld), I64(rows), I64(n), ptr(bias), ptr(res), I64(ld_res), k, b, I64(sh),
                         ptr(out), I64(ld))
                want = be.requantize(be.layernorm(h, ln), rq).to(torch.int8)
                assert torch.equal(out[:, :n], want), (kind, sh, in_bits, probe_rq is not None)
                if probe_rq is not None:
                    assert want[0].abs().max() <= 120  # the probe is in range: every unit of n is visible


# Pell pairs k^2 - 2 a^2 = 1: a row y = [a, -a, 0, ...] has var = k^2 - 1, one below a square.
PELL = [(3, 2), (17, 12), (99, 70), (577, 408), (3363, 2378), (19601, 13860), (114243, 80782), (665857, 470832)]


def _ln_edge_rows(n: int):
    """(row h, shift) with var = k^2 - 1, var = k^2, half-way means, a constant row."""
    def row(*vals, base=0):
        h = torch.full((n,), base, dtype=torch.long)
        k = min(n, len(vals))
        h[:k] = torch.tensor(vals[:k], dtype=torch.long)
        return h
    for k, a in PELL:
        for sh in (0, 2):
            yield row(a << sh, -(a << sh)), sh  # mean 0, var = k^2 - 1
            if n >= 4:
                yield row(a << sh, -(a << sh), a << sh, -(a << sh)), sh  # var = (2a)^2
    for v in (1, -1, 3, -3, 2**21 - 1, -(2**21)):
        yield row(v), 0  # mean = round_half_up(v / n): ties when n = 2
        yield row(v, base=-v), 0
    yield row(base=123), 0


@pytest.mark.parametrize("n", [1, 2, 4, 768])
def test_layernorm_edges(lib, n):
    """LayerNorm probes on rows built around isqrt's and the mean's boundaries (identity residual)."""
    g = _gen(n + 99)
    be = ReferenceBackend()
    one = Requant(torch.full((n,), 2**30), torch.full((n,), 30), torch.ones(n), 22, 31)  # rescale(q) = q
    zero = Requant(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.ones(n), 22, 31)
    add = ResidualRequant(one, zero)
    res = torch.zeros(1, n, dtype=torch.int8)
    for row, sh in _ln_edge_rows(n):
        acc = row.view(1, n).to(torch.int32)
        h = be.residual(acc, res, add)  # = row clamped to 22 bits
        for ln, probe_rq in _ln_probes(h, _ln_consts(n, g, sh), g):
            rq = probe_rq or _requant(n, g, 8, 31, (-30.0, -18.0))
            out = torch.zeros(1, n, dtype=torch.int8)
            k = ptrs(add.a.m, add.a.e, add.b.m, add.b.e, ln.sign, ln.bias, rq.m, rq.e)
            lib.t_ln(ptr(acc), I64(n), I64(1), I64(n), ptr(None), ptr(res), I64(n), k, ints(22, 31, 22, 31, 22, 8, 31),
                     I64(sh), ptr(out), I64(n))
            want = be.requantize(be.layernorm(h, ln), rq).to(torch.int8)
            assert torch.equal(out, want), (row[:4].tolist(), sh)


@pytest.mark.parametrize("n", [1, 17, 768])
def test_embed(lib, n):
    g = _gen(3 * n)
    be = ReferenceBackend()
    vocab, types, positions, rows = 50, 2, 20, 7
    word = torch.randint(-127, 128, (vocab, n), generator=g, dtype=torch.int8)
    tt = torch.randint(-127, 128, (types, n), generator=g, dtype=torch.int8)
    pos = torch.randint(-127, 128, (positions, n), generator=g, dtype=torch.int8)
    ids = torch.randint(vocab, (rows,), generator=g)
    tids = torch.randint(types, (rows,), generator=g)
    pids = torch.randint(positions, (rows,), generator=g)
    add1 = ResidualRequant(_requant(n, g, 16, 31, (0.0, 9.0)), _requant(n, g, 16, 31, (0.0, 9.0)))
    add2 = ResidualRequant(_requant(n, g, 16, 31, (-1.0, 1.0)), _requant(n, g, 16, 31, (0.0, 9.0)))
    h = be.residual(be.residual(word[ids], tt[tids], add1), pos[pids], add2)
    shift = int(intops.layernorm_shift(h.long()))
    for ln, probe_rq in _ln_probes(h, _ln_consts(n, g, shift), g):
        rq = probe_rq or _requant(n, g, 8, 31, (-30.0, -18.0))
        out = torch.zeros(rows, n + 4, dtype=torch.int8)
        k = ptrs(add1.a.m, add1.a.e, add1.b.m, add1.b.e, add2.a.m, add2.a.e, add2.b.m, add2.b.e, ln.sign, ln.bias,
                 rq.m, rq.e)
        b = ints(16, 31, 16, 31, 16, 16, 31, 16, 31, 16, 8, 31)
        lib.t_embed(ptr(word), ptr(tt), ptr(pos), ptr(ids), ptr(tids), ptr(pids), I64(rows), I64(n), k, b,
                    I64(shift), ptr(out), I64(n + 4))
        want = be.requantize(be.layernorm(h, ln), rq).to(torch.int8)
        assert torch.equal(out[:, :n], want)
        if probe_rq is not None:
            assert want[0].abs().max() <= 120


# Hand-made constants: L = (r + 20) r + 1 is negative for r < 0 (e clamps to 0) and e = 1 at the row max,
# so a row with one maximum sums to 1 (factor 2^32, p = 256 clamped to 255).
HAND_MADE = {"pre_shift": 0, "x0": -8, "zm": 2**30, "b": 20, "c": 1, "m": 2**30, "e": 30}


@pytest.mark.parametrize("scale", [2.0**-20, 1e-3, 0.05, 1.0, 0.6931 / 60.5, "hand-made"])
def test_softmax_row(lib, scale):
    if scale == "hand-made":
        g = _gen(0)
        sm = SoftmaxConstants(8, **{k: torch.tensor(v) for k, v in HAND_MADE.items()})
        scale = 0.1
    else:
        g = _gen(int(-math.log2(scale) * 10) + 1)
        sm = SoftmaxConstants(8, **intops.softmax_constants(torch.tensor([scale])))
    be = ReferenceBackend()
    consts = torch.stack([getattr(sm, k) for k in SoftmaxConstants.BUFFERS]).contiguous()
    for L in (1, 2, 15, 16, 17, 128, 129, 512):
        cases = []
        s = torch.round(torch.randn(L, generator=g, dtype=torch.float64) * 5 / scale).clamp(-(2**31), 2**31 - 1)
        cases.append((s.to(torch.int32), None))
        cases.append((s.to(torch.int32), torch.rand(L, generator=g) < 0.7))
        cases.append((s.to(torch.int32), torch.zeros(L, dtype=torch.bool)))  # fully masked
        cases.append((torch.full((L,), 12345, dtype=torch.int32), None))  # all equal
        ext = torch.tensor([2**31 - 1, -(2**31)] * L, dtype=torch.int32)[:L]
        cases.append((ext, None))
        cases.append((ext, torch.arange(L) % 3 != 0))
        # the max minus exact multiples of -x0 (before the pre-shift): z = j exactly
        p, x0 = int(sm.pre_shift), int(sm.x0)
        grid = [(100 + (i % 31) * x0) * 2**p + int(torch.randint(2**p, (1,), generator=g)) for i in range(L)]
        cases.append((torch.tensor(grid, dtype=torch.int32), None))
        for scores, keep in cases:
            out = torch.zeros(L, dtype=torch.uint8)
            keep_u8 = None if keep is None else keep.to(torch.uint8).contiguous()
            lib.t_softmax(ptr(scores), I64(L), ptr(keep_u8), ptr(consts), 8, ptr(out))
            want = be.softmax(scores.view(1, L), None if keep is None else keep.view(1, L), sm).view(L)
            assert torch.equal(out, want), (L, keep)
