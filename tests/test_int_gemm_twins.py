"""Every integer GEMM in the package equals its definition, ``intops.int_matmul``, on the same operands.

``intbert.quantization.intops.int_matmul`` (the lowest layer; the simulation's GEMM) defines the integer GEMM: the
exact product of integer operands, int32 result. The engine's GEMMs are its twins, each checked here directly
(not only through a whole model) with ``torch.equal``:

* ``reference.int8_matmul`` / ``ReferenceBackend``: int32 ``torch.matmul`` on CPU (the engine runs no float op,
  so the reference cannot use int_matmul's float32 path); ``torch._int_mm`` with padding on CUDA (skipped
  without a GPU);
* the ``cpu`` backend's onnxruntime GEMMs (``ort_gemm.OrtLinear`` / ``OrtBatchedMatMul``) with each kernel this
  CPU runs exactly (u8s8 for 8-bit operands only where the saturation probe says so);
* the native C++ GEMM (``NativeBackend.linear``) at every ISA level this CPU runs;
* the exported graph's ``MatMulInteger`` (``OnnxGraphBackend.linear`` / ``matmul``, run in onnxruntime through
  tests/test_engine_onnx_backend.py's adapter).

Operands: K over the shared awkward sizes, 7- and 8-bit weights, full-range int8 activations (-128 included),
uint8 probabilities up to 255, rows and columns at the int16 pair-saturation point of ``vpmaddubsw``
(2 * 255 * 127 > 32,767), a GEMV (M = 1) and non-contiguous (transposed) views. ``int_matmul`` itself is anchored
to the int64 product first.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from intbert.engine.backends.reference import ReferenceBackend, int8_matmul
from intbert.engine.modules import IntLinear
from intbert.quantization import intops

from _sizes import AWKWARD_SIZES, randint


def _signed(seed: int, bits: int, shape, symmetric: bool) -> torch.Tensor:
    """int8 values over ``bits`` bits: [-(2^(b-1) - 1), 2^(b-1) - 1] for weights (symmetric), down to -2^(b-1) else."""
    top = 2 ** (bits - 1) - 1
    return randint(seed, -top - (0 if symmetric else 1), top + 1, shape).to(torch.int8)


def _linear_operands(K: int, bits: int, M: int = 3, N: int = 5):
    """x int8 (M, K) with a row at 127 and one at -128; W int8 (N, K) of ``bits`` bits with rows at +-max."""
    x = _signed(K, 8, (M, K), symmetric=False)
    x[0] = 127
    if M > 1:
        x[1] = -128
    w = _signed(K + 1, bits, (N, K), symmetric=True)
    top = 2 ** (bits - 1) - 1
    w[0], w[1] = top, -top
    w[2, 1::2] = -top  # signs alternating inside each pair of products
    return x, w


def _ort_missing() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx") else \
        "needs onnxruntime and onnx"


# ---------------------------------------------------------------------------------------------------------------------
# The definition, anchored


@pytest.mark.parametrize("K", AWKWARD_SIZES + (3072,))
def test_int_matmul_is_the_exact_integer_product(K):
    """Against the int64 product, K up to BERT's 3072 (several float32 chunks), with the worst case -128 x -128."""
    x, w = _linear_operands(K, 8)
    assert torch.equal(intops.int_matmul(x, w.t(), 128, 127), (x.long() @ w.long().t()).int())
    worst = torch.full((1, K), -128, dtype=torch.int8)
    assert int(intops.int_matmul(worst, worst.t(), 128, 128)) == K * 128 * 128  # 50,331,648 for K = 3072: > 2^24


# ---------------------------------------------------------------------------------------------------------------------
# The linear GEMMs: x (M, K) int8 @ W^T (K, N), W of 7 or 8 bits


def _reference_linear(x, w, bits):
    return ReferenceBackend().linear(x, IntLinear(w, torch.zeros(w.shape[0], dtype=torch.int32), bits))


def _ort_linear(kernel):
    def run(x, w, bits):
        from intbert.engine.backends.cpu import to_biased_u8
        from intbert.engine.backends.ort_gemm import OrtLinear

        return OrtLinear(w, bits, kernel=kernel)(to_biased_u8(x))

    return run


def _onnx_linear(kernel):
    def run(x, w, bits):
        from test_engine_onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(kernel).linear(x, IntLinear(w, torch.zeros(w.shape[0], dtype=torch.int32), bits))

    return run


def _native_linear(isa: str):
    def run(x, w, bits):
        from intbert.engine.backends import native, resolve_backend

        with native.use_isa(isa):
            be = resolve_backend("native", torch.device("cpu"))
            return be.linear(x, IntLinear(w, torch.zeros(w.shape[0], dtype=torch.int32), bits))

    return run


def _native_missing(isa: str):
    def missing(bits: int) -> str | None:
        from intbert.engine.backends import native

        if not native.native_available():
            return native.unavailable_reason()
        return None if isa in native.available_isas() else f"this CPU does not run the {isa} kernels"

    return missing


def _u8s8_missing(bits: int) -> str | None:
    missing = _ort_missing()
    if missing or bits <= 7:
        return missing
    from intbert.engine.backends.ort_gemm import u8s8_is_exact_for_8bit

    return None if u8s8_is_exact_for_8bit() else "this CPU's u8 x s8 kernel saturates 8-bit operands"


#: name -> (gemm(x, w, bits) -> int32 x @ w^T, why it cannot run here or None)
LINEAR_GEMMS = {
    "reference.int8_matmul": (lambda x, w, bits: int8_matmul(x, w.t()), lambda bits: None),
    "ReferenceBackend.linear": (_reference_linear, lambda bits: None),
    "OrtLinear u8u8": (_ort_linear("u8u8"), lambda bits: _ort_missing()),
    "OrtLinear u8s8": (_ort_linear("u8s8"), _u8s8_missing),
    "ONNX MatMulInteger u8u8": (_onnx_linear("u8u8"), lambda bits: _ort_missing()),
    "ONNX MatMulInteger u8s8": (_onnx_linear("u8s8"), _u8s8_missing),
    **{f"NativeBackend.linear@{isa}": (_native_linear(isa), _native_missing(isa))
       for isa in ("scalar", "avx2", "avx512", "amx")},
}


@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("K", AWKWARD_SIZES)
@pytest.mark.parametrize("gemm", list(LINEAR_GEMMS))
def test_every_linear_gemm_equals_int_matmul(gemm, K, bits):
    run, missing = LINEAR_GEMMS[gemm]
    if reason := missing(bits):
        pytest.skip(reason)
    x, w = _linear_operands(K, bits)
    top = 2 ** (bits - 1) - 1
    for rows in (x, x[:1], x.t().contiguous().t()):  # a GEMM, a GEMV (M = 1), a column-major view
        want = intops.int_matmul(rows, w.t(), 128, top)
        got = run(rows, w, bits)
        assert got.dtype == torch.int32 and torch.equal(got, want), f"{gemm}: max |diff| {(got - want).abs().max()}"


# ---------------------------------------------------------------------------------------------------------------------
# The attention GEMMs: q k^T (int8 x int8) and p v (uint8 probabilities x int8), batched over (batch, heads)


def _ort_batched(kernel):
    def run(a, b):
        from intbert.engine.backends.cpu import to_biased_u8
        from intbert.engine.backends.ort_gemm import OrtBatchedMatMul

        bmm = OrtBatchedMatMul(kernel=kernel)
        if a.dtype == torch.uint8:  # probabilities: zero point 0
            return bmm(a.contiguous(), 0, to_biased_u8(b.contiguous()), 128)
        return bmm(to_biased_u8(a.contiguous()), 128, to_biased_u8(b.contiguous()), 128)

    return run


def _onnx_matmul(kernel):
    def run(a, b):
        from test_engine_onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(attention_kernel=kernel).matmul(a, b)

    return run


#: name -> (gemm(a, b) -> int32 a @ b, why it cannot run here or None)
ATTENTION_GEMMS = {
    "reference.int8_matmul": (int8_matmul, lambda: None),
    "OrtBatchedMatMul u8u8": (_ort_batched("u8u8"), _ort_missing),
    "OrtBatchedMatMul u8s8": (_ort_batched("u8s8"), lambda: _u8s8_missing(8)),
    "ONNX MatMulInteger u8u8": (_onnx_matmul("u8u8"), _ort_missing),
    "ONNX MatMulInteger u8s8": (_onnx_matmul("u8s8"), lambda: _u8s8_missing(8)),
}


@pytest.mark.parametrize("L", [1, 7, 17, 65, 130])
@pytest.mark.parametrize("gemm", list(ATTENTION_GEMMS))
def test_every_attention_gemm_equals_int_matmul(gemm, L):
    run, missing = ATTENTION_GEMMS[gemm]
    if reason := missing():
        pytest.skip(reason)
    d = 15
    q, k, v = (_signed(L + s, 8, (2, 3, L, d), symmetric=False) for s in (0, 1, 2))
    q[0, 0, 0], k[0, 0, 0] = 127, 127  # a score row at the pair-saturation point
    probs = randint(L + 3, 0, 256, (2, 3, L, L)).to(torch.uint8)
    probs[0, 0] = 255
    k_t = k.transpose(-1, -2)  # a transposed view, as attention passes it
    for a, b, bounds in ((q, k_t, (128, 128)), (probs, v, (255, 128))):
        want = intops.int_matmul(a, b, *bounds)
        got = run(a, b)
        assert got.dtype == torch.int32 and torch.equal(got, want), f"{gemm}: max |diff| {(got - want).abs().max()}"


# ---------------------------------------------------------------------------------------------------------------------
# CUDA: torch._int_mm (tensor cores) through reference.int8_matmul's padding


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("K", AWKWARD_SIZES)
def test_cuda_int_mm_equals_int_matmul(K):
    """_int_mm needs M > 16 and K, N multiples of 8: the zero padding must change no product, on every K."""
    dev = torch.device("cuda")
    x, w = _linear_operands(K, 8, M=3, N=5)
    for rows in (x, x[:1]):
        got = int8_matmul(rows.to(dev), w.t().to(dev)).cpu()
        assert torch.equal(got, intops.int_matmul(rows, w.t(), 128, 127))
    probs = randint(K, 0, 256, (2, 7, K)).to(torch.uint8)
    v = _signed(K + 1, 8, (2, K, 5), symmetric=False)
    assert torch.equal(int8_matmul(probs.to(dev), v.to(dev)).cpu(), intops.int_matmul(probs, v, 255, 128))
