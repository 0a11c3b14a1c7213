"""The onnxruntime integer GEMM is bit-exact against int64 products, on every kernel this CPU allows.

References are independent of the code under test: ``(x.long() - 128) @ w.long().T`` for the linear
and ``(a.long() - za) @ (b.long() - zb)`` for the batched product, compared with ``torch.equal``.
Extreme inputs put every u8*s8 pair at the int16 saturation point of ``vpmaddubsw`` (255 * 127 * 2 =
64,770 > 32,767), so a kernel that saturates is caught wherever it runs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from _sizes import AWKWARD_SIZES, gen, randint  # noqa: E402

from intbert.engine.backends import ort_gemm  # noqa: E402
from intbert.engine.backends.ort_gemm import (  # noqa: E402
    MAX_K,
    U8S8_SAFE_WEIGHT_MAX,
    OrtBatchedMatMul,
    OrtLinear,
    OrtUnavailableError,
    ort_available,
    choose_kernel,
    u8s8_is_exact_for_8bit,
)
from intbert.errors import OverflowRiskError  # noqa: E402

#: BERT-base reduction lengths: head dim, hidden, intermediate.
BERT_K = (64, 768, 3072)


def _kernels(bits: int) -> list:
    """Every kernel this CPU can run exactly for weights of ``bits`` bits (None = automatic)."""
    out = [None, "u8u8"]
    if bits <= 7 or u8s8_is_exact_for_8bit():
        out.append("u8s8")
    return out


def _weight(seed: int, bits: int, shape) -> torch.Tensor:
    lim = 2 ** (bits - 1) - 1
    return randint(seed, -lim, lim + 1, shape).to(torch.int8)


def _act(seed: int, shape) -> torch.Tensor:
    return randint(seed, 0, 256, shape).to(torch.uint8)


def _ref_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x.long() - 128) @ w.long().T


def _ref_bmm(a: torch.Tensor, za: int, b: torch.Tensor, zb: int) -> torch.Tensor:
    return (a.long() - za) @ (b.long() - zb)


def _check_linear(lin: OrtLinear, x: torch.Tensor, w: torch.Tensor) -> None:
    got = lin(x)
    ref = _ref_linear(x, w)
    assert got.dtype == torch.int32 and got.shape == ref.shape
    err = (got.long() - ref).abs().max().item() if ref.numel() else 0
    assert torch.equal(got.long(), ref), f"kernel {lin.kernel}: max |error| {err}"


# ---------------------------------------------------------------------------------------------
# OrtLinear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("K", AWKWARD_SIZES + BERT_K)
def test_linear_exact_on_random_full_range_data(bits, K):
    """Random activations over all of [0, 255] and weights over the whole declared range."""
    w = _weight(K, bits, (19, K))
    x = _act(K + 1, (5, K))
    for kernel in _kernels(bits):
        _check_linear(OrtLinear(w, bits, kernel=kernel), x, w)


@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("K", BERT_K)
def test_linear_exact_on_saturating_extremes(bits, K):
    """Activations at 255 (q = +127) and 0 (q = -128) against weights at +-max: row 0 all +max, row 1 all
    -max, row 2 alternating in pairs, row 3 alternating inside each pair. Rows 1..3 of x put 1, 2 and 3
    rows through the GEMM (M = 1 takes MLAS's GEMV path)."""
    lim = 2 ** (bits - 1) - 1
    w = torch.full((4, K), lim, dtype=torch.int8)
    w[1] = -lim
    w[2, (torch.arange(K) // 2) % 2 == 1] = -lim
    w[3, 1::2] = -lim
    for x in (torch.full((3, K), 255, dtype=torch.uint8), torch.zeros(3, K, dtype=torch.uint8),
              torch.full((1, K), 255, dtype=torch.uint8)):
        for kernel in _kernels(bits):
            _check_linear(OrtLinear(w, bits, kernel=kernel), x, w)


@pytest.mark.parametrize("lead", [(), (1,), (2, 3), (2, 1, 4), (0,), (2, 0)])
def test_linear_keeps_leading_dimensions(lead):
    w = _weight(1, 8, (7, 33))
    x = _act(2, (*lead, 33))
    for kernel in _kernels(8):
        _check_linear(OrtLinear(w, 8, kernel=kernel), x, w)


def test_linear_accepts_non_contiguous_input():
    w = _weight(3, 8, (11, 64))
    base = _act(4, (6, 128))
    views = (base[:, ::2], base.t().contiguous().t()[:, :64], _act(5, (64, 6)).t())
    for x in views:
        assert not x.is_contiguous()
        _check_linear(OrtLinear(w, 8), x, w)


def test_linear_picks_u8s8_wherever_pair_sums_cannot_saturate():
    """u8s8 for 7-bit weights, and for 8-bit weights with max|w| <= 64 (2 * 255 * 64 = 32,640 <= 32,767);
    full 8-bit weights get u8s8 only where this CPU's u8s8 kernel is exact."""
    assert U8S8_SAFE_WEIGHT_MAX == 64 and 2 * 255 * 64 <= 2**15 - 1 < 2 * 255 * 65
    assert OrtLinear(_weight(6, 7, (3, 8)), 7).kernel == "u8s8"
    narrow = torch.tensor([[64, -64, 0, 1]], dtype=torch.int8)
    assert OrtLinear(narrow, 8).kernel == "u8s8"
    full = torch.tensor([[65, -127, 0, 1]], dtype=torch.int8)
    assert OrtLinear(full, 8).kernel == ("u8s8" if u8s8_is_exact_for_8bit() else "u8u8")


def test_linear_on_a_saturating_cpu_uses_u8u8_and_refuses_u8s8(monkeypatch):
    """Where the probe finds saturation (AVX2 without VNNI), 8-bit weights go to u8u8 and a forced u8s8
    is refused; 7-bit weights still take u8s8."""
    monkeypatch.setattr(ort_gemm, "u8s8_is_exact_for_8bit", lambda: False)
    w = _weight(7, 8, (5, 40))
    w[0, 0] = 127
    lin = OrtLinear(w, 8)
    assert lin.kernel == "u8u8"
    _check_linear(lin, _act(8, (3, 40)), w)
    with pytest.raises(OverflowRiskError, match="saturate"):
        OrtLinear(w, 8, kernel="u8s8")
    assert OrtLinear(_weight(9, 7, (5, 40)), 7, kernel="u8s8").kernel == "u8s8"
    assert OrtBatchedMatMul().kernel == "u8u8"
    with pytest.raises(OverflowRiskError, match="saturate"):
        OrtBatchedMatMul(kernel="u8s8")


@pytest.mark.parametrize("exact", [True, False])
def test_one_saturation_answer_serves_the_backend_the_exporter_and_qdq_reduce_range(monkeypatch, exact):
    """The probe is the only source of the verdict: flipping it flips every client's choice (the cpu backend's
    automatic kernel, QDQBERT's reduce_range=None), while a portable choice (the I-BERT exporter's) never depends
    on this machine: u8s8 only where no CPU can saturate (|operand| <= 64)."""
    from intbert.export.qdq_onnx import _resolve_reduce_range

    monkeypatch.setattr(ort_gemm, "u8s8_is_exact_for_8bit", lambda: exact)
    assert choose_kernel(None, 127, "test") == ("u8s8" if exact else "u8u8")
    assert choose_kernel(None, U8S8_SAFE_WEIGHT_MAX, "test") == "u8s8"
    assert choose_kernel(None, 127, "test", portable=True) == "u8u8"
    assert choose_kernel(None, U8S8_SAFE_WEIGHT_MAX, "test", portable=True) == "u8s8"
    assert _resolve_reduce_range("onnxruntime", None) is (not exact)
    if exact:
        assert choose_kernel("u8s8", 128, "test", portable=True) == "u8s8"
    else:
        with pytest.raises(OverflowRiskError, match="saturates"):
            choose_kernel("u8s8", 128, "test", portable=True)


def test_probe_verdict_matches_a_full_range_u8s8_product():
    """The probe's answer holds on data it never saw: if it says exact, forced u8s8 is exact on random
    full-range 8-bit weights at BERT's sizes."""
    if not u8s8_is_exact_for_8bit():
        pytest.skip("this CPU's u8s8 kernel saturates; covered by the u8u8 fallback tests")
    w = _weight(10, 8, (64, 3072))
    _check_linear(OrtLinear(w, 8, kernel="u8s8"), _act(11, (33, 3072)), w)


def test_linear_threads_default_to_torch():
    lin = OrtLinear(_weight(12, 7, (3, 8)), 7)
    assert lin.num_threads == torch.get_num_threads()
    assert OrtLinear(_weight(12, 7, (3, 8)), 7, num_threads=1).num_threads == 1


def test_linear_session_does_not_keep_a_second_copy_of_the_weight():
    """ORT's Python session would hold the serialized model (weight included) next to its prepacked copy."""
    lin = OrtLinear(_weight(14, 8, (16, 32)), 8)
    assert getattr(lin._session, "_model_bytes", None) is None


def test_linear_rejects_bad_weights():
    with pytest.raises(TypeError, match="int8"):
        OrtLinear(torch.zeros(3, 4), 8)
    with pytest.raises(TypeError, match="int8"):
        OrtLinear(torch.zeros(3, 4, dtype=torch.int16), 8)
    with pytest.raises(TypeError, match="int8"):
        OrtLinear(torch.zeros(4, dtype=torch.int8), 8)
    for bits in (1, 9, 7.0, True):
        with pytest.raises(ValueError, match="weight_bits"):
            OrtLinear(torch.zeros(3, 4, dtype=torch.int8), bits)
    with pytest.raises(OverflowRiskError, match=r"\|w\| = 64.*7-bit"):
        OrtLinear(torch.tensor([[64, 0]], dtype=torch.int8), 7)
    with pytest.raises(OverflowRiskError, match=r"\|w\| = 128.*8-bit"):
        OrtLinear(torch.tensor([[-128, 0]], dtype=torch.int8), 8)
    with pytest.raises(OverflowRiskError, match="int32 accumulator"):
        OrtLinear(torch.zeros(1, MAX_K + 1, dtype=torch.int8), 8)
    with pytest.raises(ValueError, match="kernel"):
        OrtLinear(torch.zeros(3, 4, dtype=torch.int8), 8, kernel="s8s8")
    with pytest.raises(ValueError, match="num_threads"):
        OrtLinear(torch.zeros(3, 4, dtype=torch.int8), 8, num_threads=0)


def test_linear_rejects_bad_inputs():
    lin = OrtLinear(_weight(13, 8, (3, 8)), 8)
    with pytest.raises(TypeError, match="uint8"):
        lin(torch.zeros(2, 8, dtype=torch.int8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        lin(torch.zeros(2, 8, dtype=torch.uint8).numpy())
    with pytest.raises(ValueError, match="in_features = 8"):
        lin(torch.zeros(2, 9, dtype=torch.uint8))
    with pytest.raises(ValueError, match="in_features = 8"):
        lin(torch.tensor(3, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# OrtBatchedMatMul
# ---------------------------------------------------------------------------------------------

#: (a zero point, b zero point): attention scores q.k^T, context probs.v, and an arbitrary pair.
ZERO_POINTS = [(128, 128), (0, 128), (7, 250)]


@pytest.mark.parametrize("za,zb", ZERO_POINTS)
@pytest.mark.parametrize("kernel", [None, "u8u8"])
def test_batched_exact_on_random_data(za, zb, kernel):
    bmm = OrtBatchedMatMul(kernel=kernel)
    for seed, (M, K, N) in enumerate([(17, 64, 33), (128, 64, 128), (1, 129, 7), (33, 769, 1)]):
        a, b = _act(2 * seed, (2, 3, M, K)), _act(2 * seed + 1, (2, 3, K, N))
        assert torch.equal(bmm(a, za, b, zb).long(), _ref_bmm(a, za, b, zb))


@pytest.mark.parametrize("za,zb", ZERO_POINTS)
@pytest.mark.parametrize("kernel", [None, "u8u8"])
def test_batched_exact_on_extremes(za, zb, kernel):
    """Operands at 0 and 255 in every combination, K up to BERT's 512-token context."""
    bmm = OrtBatchedMatMul(kernel=kernel)
    for K in (64, 512):
        for av in (0, 255):
            for bv in (0, 255):
                a = torch.full((1, 2, 3, K), av, dtype=torch.uint8)
                b = torch.full((1, 2, K, 5), bv, dtype=torch.uint8)
                b[..., 1::2, 1] = 255 - bv  # alternate inside pairs in one column
                assert torch.equal(bmm(a, za, b, zb).long(), _ref_bmm(a, za, b, zb))


def test_batched_any_rank_through_one_cached_session():
    bmm = OrtBatchedMatMul()
    for rank in (2, 3, 4, 5):
        lead = (2, 3, 1)[: rank - 2]
        for seed, (M, K, N) in enumerate([(4, 16, 5), (9, 16, 2)]):
            a, b = _act(40 + seed, (*lead, M, K)), _act(50 + seed, (*lead, K, N))
            assert torch.equal(bmm(a, 128, b, 128).long(), _ref_bmm(a, 128, b, 128))
    assert len(bmm._sessions) == 1  # one session per zero-point pair; rank and sizes are dynamic


def test_batched_accepts_non_contiguous_operands():
    """k^T arrives as a transposed view of k [B, h, S, d]; q as a slice."""
    bmm = OrtBatchedMatMul()
    k = _act(60, (2, 3, 20, 64))
    q = _act(61, (2, 3, 40, 64))[:, :, ::2]
    kt = k.transpose(-1, -2)
    assert not kt.is_contiguous() and not q.is_contiguous()
    assert torch.equal(bmm(q, 128, kt, 128).long(), _ref_bmm(q, 128, kt, 128))


def test_batched_handles_empty_operands():
    bmm = OrtBatchedMatMul()
    a, b = torch.zeros(2, 0, 4, dtype=torch.uint8), torch.zeros(2, 4, 3, dtype=torch.uint8)
    assert bmm(a, 128, b, 128).shape == (2, 0, 3)


def test_batched_rejects_bad_inputs():
    bmm = OrtBatchedMatMul()
    a, b = torch.zeros(2, 3, 4, dtype=torch.uint8), torch.zeros(2, 4, 5, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        bmm(a.to(torch.int8), 128, b, 128)
    with pytest.raises(TypeError, match="uint8"):
        bmm(a, 128, b.to(torch.int32), 128)
    with pytest.raises(ValueError, match="equal leading"):
        bmm(a, 128, torch.zeros(2, 5, 5, dtype=torch.uint8), 128)
    with pytest.raises(ValueError, match="equal leading"):
        bmm(a, 128, torch.zeros(3, 4, 5, dtype=torch.uint8), 128)
    with pytest.raises(ValueError, match="equal leading"):
        bmm(a, 128, torch.zeros(4, 5, dtype=torch.uint8), 128)
    for zp in (-1, 256, 1.0, None):
        with pytest.raises(ValueError, match="zero_point"):
            bmm(a, zp, b, 128)
        with pytest.raises(ValueError, match="zero_point"):
            bmm(a, 128, b, zp)
    with pytest.raises(OverflowRiskError, match="int32 accumulator"):
        bmm(torch.zeros(1, MAX_K + 1, dtype=torch.uint8), 0, torch.zeros(MAX_K + 1, 1, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="kernel"):
        OrtBatchedMatMul(kernel="fp32")


# ---------------------------------------------------------------------------------------------
# onnxruntime stays optional
# ---------------------------------------------------------------------------------------------


def test_module_imports_onnxruntime_only_when_used():
    """No top-level import of onnxruntime or onnx: intbert.engine imports without them."""
    tree = ast.parse(Path(ort_gemm.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] in ("onnxruntime", "onnx")]


def test_missing_onnxruntime_names_the_install_command(monkeypatch):
    assert ort_available()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    assert not ort_available()
    with pytest.raises(OrtUnavailableError, match="pip install") as info:
        OrtLinear(torch.zeros(3, 4, dtype=torch.int8), 7)
    assert isinstance(info.value, ImportError)
