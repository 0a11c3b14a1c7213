"""Exact integer GEMM on CPU through onnxruntime's ``MatMulInteger`` (MLAS kernels).

Why onnxruntime: on the 2-vCPU AVX2 machines we target (AMD EPYC Milan, no VNNI), MLAS's
``MatMulInteger`` is the only int8 GEMM measured faster than an FP32 GEMM: u8 x s8 at about 2x FP32,
u8 x u8 at about 1.6x, while ``torch._int_mm``, int32 ``matmul`` and ORT s8 x s8 are slower than FP32
(the project's CPU baseline; benchmarks/int_gemm.py repeats the comparison on any machine).

Activations arrive as ``uint8`` holding an int8 value plus 128 (zero point 128); weights are int8.
The twin that defines every result here is ``intbert.quantization.intops.int_matmul`` (and, in the
tests, the int64 product ``(x.long() - 128) @ w.long().T``): results are bit-identical, never rounded.

Two MLAS kernels, and when each is exact:

* **u8 x s8** (``"u8s8"``). Without VNNI, AVX2 (and AVX-512 without VNNI) multiply with
  ``vpmaddubsw``, which adds each pair of adjacent u8*s8 products into a *saturating* int16. A pair is
  exact while ``2 * 255 * max|w| <= 32767``, i.e. ``max|w| <= 64``: 7-bit weights (|w| <= 63) give
  32,130, full 8-bit weights 2 * 255 * 127 = 64,770, which saturates (and on such a CPU random
  full-range data already comes out wrong). With AVX512-VNNI / AVX-VNNI / AMX the kernel accumulates
  each product in int32 (``vpdpbusd``, AMX ``tdpbusd``) and is exact for any int8. Which kernel MLAS picked is decided
  once per process from CPUID, so :func:`u8s8_is_exact_for_8bit` runs a saturating probe through it. That probe is the
  package's one answer to the saturation question (the cpu backend, the I-BERT exporter and QDQBERT's
  ``reduce_range=None`` ask it): CPU feature flags are not consulted, since they only predict what MLAS runs, and
  under an emulated CPU (``qemu -cpu ...``) CPUID and /proc/cpuinfo disagree; running the kernel measures it.
* **u8 x u8** (``"u8u8"``). On x86 MLAS widens both operands to int16 and multiplies with ``vpmaddwd``
  (int16 x int16 pairs summed into int32: at most 2 * 255 * 255 = 130,050), or uses ``vpdpbuud``
  (AVX-VNNI-INT8), or NEON ``udot``: exact for any u8 on every CPU. The weight is stored as w + 128 with
  zero point 128. It runs at about 0.75x the u8s8 speed on AVX2 (and at about 0.3x u8s8 on VNNI CPUs).

Kernel choice (:func:`choose_kernel`, ``kernel=None``): u8s8 when its pair sums cannot saturate (max|w| <= 64)
or when this CPU's u8s8 kernel is exact for full int8; otherwise u8u8. A file written for other CPUs (the ONNX
exporter: ``portable=True``) takes u8s8 only where it cannot saturate anywhere. Splitting an 8-bit weight into
two 7-bit-safe halves (``w = ceil(w/2) + floor(w/2)``, both in [-64, 64], run as one u8s8 GEMM with 2N
columns) is exact everywhere too, but loses to that choice: on a VNNI CPU it measured ~0.45x plain u8s8, and
without VNNI it does twice the u8s8 work (~165 GOPS per core on the baseline EPYC, so ~80 effective) where
u8u8 runs at ~130 (estimated from the baseline's kernel rates, not timed on that CPU; benchmarks/int_gemm.py).

int32 accumulators: MLAS sums the raw products ``sum_k x*w`` and subtracts the zero-point terms in
int32. With |raw product| <= 255 * 255 every partial sum stays below 2^31 while
``K <= MAX_K = (2^31 - 1) // (255 * 255) = 33,025``; longer K is refused (BERT's longest is 3072).

onnxruntime (and onnx, to build the one-node graphs) are optional: they are imported when first needed,
and a missing one raises :class:`OrtUnavailableError` naming the install command.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ...errors import OverflowRiskError

#: The kernels ``kernel=`` accepts (module docstring: when each is exact).
KERNELS = ("u8s8", "u8u8")
#: Activations are int8 values stored as uint8 with this zero point (q + 128).
ACTIVATION_ZERO_POINT = 128
#: Largest |q| of an int8 operand (-128): a full-range activation, the right operand of the attention GEMMs.
INT8_ABS_MAX = 128
#: Largest u8 operand value.
U8_MAX = 255
#: vpmaddubsw saturates a pair of u8*s8 products at the int16 maximum.
INT16_MAX = 2**15 - 1
#: Largest |w| for which u8s8 can never saturate: 2 * 255 * 64 = 32,640 <= 32,767 (65 gives 33,150).
U8S8_SAFE_WEIGHT_MAX = INT16_MAX // (2 * U8_MAX)
#: Longest reduction with every int32 partial sum exact: K * 255 * 255 <= 2^31 - 1.
MAX_K = (2**31 - 1) // (U8_MAX * U8_MAX)

# The one-node graphs use opset 13 / IR 7 (MatMulInteger exists since opset 10), which every
# onnxruntime since 1.6 loads, whatever newer IR version the installed onnx would default to.
_OPSET = 13
_IR_VERSION = 7

_OUTPUTS = ["Y"]
_INSTALL_HINT = "pip install 'intbert[onnx]' (or: pip install onnxruntime onnx)"


class OrtUnavailableError(ImportError):
    """onnxruntime or onnx is not installed; the ORT integer GEMM backend needs both."""


def ort_available() -> bool:
    """True when onnxruntime and onnx import (a broken install counts as missing)."""
    try:
        _import_ort()
    except OrtUnavailableError:
        return False
    return True


def _import_ort() -> tuple[Any, Any]:
    """(onnxruntime, onnx), or :class:`OrtUnavailableError` with the install command."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise OrtUnavailableError(
            f"the onnxruntime integer GEMM needs onnxruntime and onnx ({exc}); {_INSTALL_HINT}") from exc
    return onnxruntime, onnx


# ---------------------------------------------------------------------------------------------
# One-node MatMulInteger graphs and their sessions
# ---------------------------------------------------------------------------------------------


def _matmul_integer_session(b: Any, b_signed: bool, a_zero_point: int, b_zero_point: int, num_threads: int,
                            spin: bool = False):
    """A session computing ``Y = (A - a_zero_point) @ (B - b_zero_point)`` as int32 (numpy matmul rules).

    ``b`` is a numpy array baked in as a constant initializer (so ORT prepacks it once, at session
    creation) or None, making B a second graph input. Inputs are declared without a shape, so one session
    serves every rank and size (ORT returns [..., N] for A [..., K] and a 2-D B, and handles empty A).
    ``spin`` lets ORT's idle intra-op workers spin (the benchmark compares both settings).
    """
    ort, _ = _import_ort()
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    b_type = TensorProto.INT8 if b_signed else TensorProto.UINT8
    b_dtype = np.int8 if b_signed else np.uint8
    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, None)]
    initializers = [numpy_helper.from_array(np.array(a_zero_point, dtype=np.uint8), "a_zero_point"),
                    numpy_helper.from_array(np.array(b_zero_point, dtype=b_dtype), "b_zero_point")]
    if b is None:
        inputs.append(helper.make_tensor_value_info("B", b_type, None))
    else:
        initializers.append(numpy_helper.from_array(b, "B"))
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point", "b_zero_point"], ["Y"])
    graph = helper.make_graph([node], "intbert_matmul_integer", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, None)], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One node: nothing to fuse. Basic keeps ORT from rewriting MatMulInteger into another op.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3  # errors only
    # No spinning: between two GEMMs the engine runs torch ops, whose OpenMP threads would compete with ORT
    # workers spinning on the same 2 cores. Measured on a busy 2-vCPU VM with 2 threads: spinning burned
    # 1.3-2x the CPU time per GEMM and was slower in wall time too (benchmarks/int_gemm.py, spinning table).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # onnxruntime's Python InferenceSession keeps the model bytes (the weight included) for its provider
    # fallback, for the session's lifetime ("TODO: This is bad as we're holding the memory indefinitely" in
    # onnxruntime_inference_collection.py, still in 1.32.0). The C++ session has copied and prepacked the
    # weight, and the CPU provider has nothing to fall back to, so drop them: measured 129 -> 74 MB resident
    # for a 64 MiB weight. Without the attribute (a later onnxruntime) this does nothing.
    session.disable_fallback()
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    return session


def _resolve_threads(num_threads: int | None) -> int:
    if num_threads is None:
        return torch.get_num_threads()
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int or None (torch's thread count), got {num_threads!r}")
    return num_threads


def _check_k(K: int, what: str) -> None:
    if K > MAX_K:
        raise OverflowRiskError(f"{what}: K={K} > {MAX_K}: K * 255 * 255 can exceed the int32 accumulator; "
                                f"split the reduction into chunks of at most {MAX_K} and add the int32 results")


def _check_u8(t: Any, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (an int8 value q stored as q + 128), got {t.dtype}; "
                        f"convert with (q.to(torch.int16) + 128).to(torch.uint8)")
    if not t.is_cpu:
        raise ValueError(f"{name} is on {t.device}; the onnxruntime GEMM runs on CPU tensors only")


def _check_zero_point(zp: Any, name: str) -> int:
    if not isinstance(zp, int) or isinstance(zp, bool) or not 0 <= zp <= U8_MAX:
        raise ValueError(f"{name} must be an int in [0, 255], got {zp!r}")
    return zp


# ---------------------------------------------------------------------------------------------
# Does this CPU's u8s8 kernel saturate?
# ---------------------------------------------------------------------------------------------


@functools.cache
def u8s8_is_exact_for_8bit() -> bool:
    """True when MLAS's u8 x s8 kernel in this process is exact for full-range int8 operands.

    MLAS picks one u8s8 GEMM kernel and one GEMV kernel (M = 1) per process from CPUID. The probe runs
    both, with a constant (prepacked) and a runtime B, on inputs that saturate ``vpmaddubsw`` in every
    pair: all-255 activations against columns of +127, -127 and -128 (2 * 255 * 128 = 65,280 > 32,767),
    with K = 256 so that MLAS's K-blocking (128) is crossed. A saturating kernel is off by tens of
    thousands here; an int32-accumulating one (VNNI, AMX) matches the int64 reference. Cached.
    """
    import numpy as np

    K = 256
    b = np.empty((K, 4), dtype=np.int8)
    b[:, 0], b[:, 1], b[:, 2] = 127, -127, -128
    b[:, 3] = np.where(np.arange(K) % 3 == 0, -128, 127)  # mixed signs inside pairs
    for m in (1, 3):  # GEMV and GEMM kernels
        a = np.full((m, K), U8_MAX, dtype=np.uint8)
        expected = (a.astype(np.int64) - ACTIVATION_ZERO_POINT) @ b.astype(np.int64)
        for constant in (True, False):
            session = _matmul_integer_session(b if constant else None, True, ACTIVATION_ZERO_POINT, 0, 1)
            feeds = {"A": a} if constant else {"A": a, "B": b}
            if not np.array_equal(session.run(None, feeds)[0], expected):
                return False
    return True


def choose_kernel(requested: str | None, operand_max: int, what: str, *, portable: bool = False) -> str:
    """The MatMulInteger kernel for a product whose signed operand has |value| <= ``operand_max``.

    The one answer in the package to "can u8 x s8 saturate?": the cpu backend (``OrtLinear``,
    ``OrtBatchedMatMul``, for this process's CPU) and the ONNX exporter (for a file that may run on
    any CPU) both ask here. u8s8 cannot saturate when operand_max <= U8S8_SAFE_WEIGHT_MAX (64) on any
    CPU; for wider operands it is exact only where :func:`u8s8_is_exact_for_8bit` (the probe) holds.

    ``requested``: None (automatic: u8s8 where exact, else u8u8; with ``portable`` only where exact on
    every CPU, so wider operands get u8u8 even on a VNNI machine), ``"u8s8"`` (refused with
    :class:`OverflowRiskError` where it could saturate here) or ``"u8u8"`` (exact everywhere).
    """
    cannot_saturate = operand_max <= U8S8_SAFE_WEIGHT_MAX
    if requested is None:
        return "u8s8" if cannot_saturate or (not portable and u8s8_is_exact_for_8bit()) else "u8u8"
    if requested not in KERNELS:
        raise ValueError(f"{what}: kernel must be one of {KERNELS} or None (automatic), got {requested!r}")
    if requested == "u8s8" and not cannot_saturate and not u8s8_is_exact_for_8bit():
        raise OverflowRiskError(
            f"{what}: kernel='u8s8' with operands up to |{operand_max}|, which this CPU's u8 x s8 kernel saturates "
            f"(int16 pair sums: 2 * 255 * {operand_max} > {INT16_MAX}, vpmaddubsw without VNNI); use weights of at "
            f"most 7 bits, kernel='u8u8' or kernel=None, or run on a VNNI/AMX/ARM machine")
    return requested


# ---------------------------------------------------------------------------------------------
# Linear: x (u8, zero point 128) @ w.T (int8, constant)
# ---------------------------------------------------------------------------------------------


class OrtLinear:
    """Exact ``y[..., n] = sum_k (x[..., k] - 128) * w[n, k]`` as int32, with the weight baked into ORT.

    Args:
        weight: int8 tensor [N, K] (``nn.Linear`` layout) with every value in
            [-(2^(b-1) - 1), 2^(b-1) - 1] for b = ``weight_bits``.
        weight_bits: 2..8, the declared width of the weight (checked against its values).
        num_threads: ORT intra-op threads; None takes ``torch.get_num_threads()`` at construction.
        kernel: None (automatic, see the module docstring), ``"u8s8"`` or ``"u8u8"``. ``"u8s8"`` with
            max|w| > 64 is refused on a CPU whose u8s8 kernel saturates.

    Calling it with ``x`` uint8 [..., K] (int8 activations q stored as q + 128) returns int32 [..., N].
    The twin is ``intops.int_matmul(x.long() - 128, w.long().T)``. |y| <= K * 128 * 127 < 2^31 for
    K <= MAX_K. The chosen kernel is in ``self.kernel``.
    """

    def __init__(self, weight: torch.Tensor, weight_bits: int, num_threads: int | None = None,
                 kernel: str | None = None):
        if not isinstance(weight, torch.Tensor) or weight.dtype != torch.int8 or weight.dim() != 2:
            is_tensor = isinstance(weight, torch.Tensor)
            got = f"{weight.dtype} of shape {tuple(weight.shape)}" if is_tensor else type(weight).__name__
            raise TypeError(f"weight must be an int8 tensor [out_features, in_features], got {got}")
        if not isinstance(weight_bits, int) or isinstance(weight_bits, bool) or not 2 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be an int in [2, 8], got {weight_bits!r}")
        self.out_features, self.in_features = weight.shape
        self.weight_bits = weight_bits
        _check_k(self.in_features, "OrtLinear")
        limit = 2 ** (weight_bits - 1) - 1
        # int16 first: torch's int8 abs(-128) wraps to -128.
        w_max = int(weight.to(torch.int16).abs().max()) if weight.numel() else 0
        if w_max > limit:
            raise OverflowRiskError(f"OrtLinear: weight holds |w| = {w_max}, outside the {weight_bits}-bit range "
                                    f"[-{limit}, {limit}]; requantize the weight or raise weight_bits")
        self.kernel = choose_kernel(kernel, w_max, "OrtLinear")
        self.num_threads = _resolve_threads(num_threads)

        # MatMulInteger computes A[M, K] @ B[K, N]: B is the transposed weight. For u8u8 it is stored as
        # w + 128 (in [1, 255] since |w| <= 127) with zero point 128, so B - 128 = w exactly.
        w_t = weight.detach().cpu().t().contiguous()
        if self.kernel == "u8s8":
            b, b_zero_point = w_t.numpy(), 0
        else:
            b, b_zero_point = (w_t.to(torch.int16) + 128).to(torch.uint8).numpy(), 128
        self._session = _matmul_integer_session(b, self.kernel == "u8s8", ACTIVATION_ZERO_POINT, b_zero_point,
                                                self.num_threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # One combined test on the hot path (a call costs ~7 us in ORT; each check adds ~0.1-0.5 us).
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.is_cpu and x.dim() > 0
                and x.shape[-1] == self.in_features):
            _check_u8(x, "OrtLinear input")
            raise ValueError(f"OrtLinear input has shape {tuple(x.shape)}; its last dimension must be "
                             f"in_features = {self.in_features}")
        # Zero-copy both ways: .numpy() views a contiguous CPU tensor, and ORT's output array (which views
        # ORT's own buffer) becomes the torch tensor through from_numpy. IOBinding into a torch buffer was
        # measured no faster for large outputs and ~7 us slower per call for small ones.
        return torch.from_numpy(self._session.run(_OUTPUTS, {"A": x.contiguous().numpy()})[0])

    def __repr__(self) -> str:
        return (f"OrtLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_bits={self.weight_bits}, kernel={self.kernel!r}, num_threads={self.num_threads})")


# ---------------------------------------------------------------------------------------------
# Batched matmul of two activations (attention): a (u8, zp_a) @ b (u8, zp_b)
# ---------------------------------------------------------------------------------------------


class OrtBatchedMatMul:
    """Exact ``(a - a_zero_point) @ (b - b_zero_point)`` as int32 for uint8 operands [..., M, K] x [..., K, N].

    For attention: scores = q @ k^T with q and k^T int8 activations stored as +128 (both zero points
    128), and context = probs @ v with probs uint8 in [0, 255] (zero point 0) and v stored as +128.
    Both operands are runtime inputs with full 8-bit range, so the product is exact only through u8u8,
    or through u8s8 where :func:`u8s8_is_exact_for_8bit` holds; there ``b`` is turned into int8 by
    ``b ^ 0x80`` (= b - 128, exact) with zero point ``b_zero_point - 128``. Leading dimensions of a and b
    must be equal (no broadcasting). Sessions are cached per zero-point pair; rank and sizes are dynamic.

    Args:
        num_threads: ORT intra-op threads; None takes ``torch.get_num_threads()`` at construction.
        kernel: None (u8s8 where exact for full int8 on this CPU, else u8u8), ``"u8s8"`` or ``"u8u8"``.
    """

    def __init__(self, num_threads: int | None = None, kernel: str | None = None):
        self.num_threads = _resolve_threads(num_threads)
        self.kernel = choose_kernel(kernel, INT8_ABS_MAX, "OrtBatchedMatMul")
        self._sessions: dict[tuple[int, int], Any] = {}

    def _session(self, a_zero_point: int, b_zero_point: int):
        # Zero points are constants of the graph; rank and sizes are not (inputs are declared shapeless).
        key = (a_zero_point, b_zero_point)
        if key not in self._sessions:
            self._sessions[key] = _matmul_integer_session(None, self.kernel == "u8s8", a_zero_point, b_zero_point,
                                                          self.num_threads)
        return self._sessions[key]

    def __call__(self, a: torch.Tensor, a_zero_point: int, b: torch.Tensor, b_zero_point: int) -> torch.Tensor:
        _check_u8(a, "OrtBatchedMatMul a")
        _check_u8(b, "OrtBatchedMatMul b")
        a_zero_point = _check_zero_point(a_zero_point, "a_zero_point")
        b_zero_point = _check_zero_point(b_zero_point, "b_zero_point")
        if a.dim() < 2 or a.dim() != b.dim() or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"OrtBatchedMatMul needs a [..., M, K] and b [..., K, N] with equal leading "
                             f"dimensions, got {tuple(a.shape)} and {tuple(b.shape)}")
        _check_k(a.shape[-1], "OrtBatchedMatMul")
        if a.numel() == 0 or b.numel() == 0:
            return torch.zeros(*a.shape[:-1], b.shape[-1], dtype=torch.int32)
        if self.kernel == "u8s8":
            # b - zp = (b - 128) - (zp - 128): flipping the top bit of a u8 gives the int8 b - 128; the
            # xor also writes the contiguous copy ORT needs.
            b = torch.bitwise_xor(b, 0x80).view(torch.int8)
            b_zero_point -= 128
        session = self._session(a_zero_point, b_zero_point)
        return torch.from_numpy(session.run(_OUTPUTS, {"A": a.contiguous().numpy(), "B": b.contiguous().numpy()})[0])

    def __repr__(self) -> str:
        return f"OrtBatchedMatMul(kernel={self.kernel!r}, num_threads={self.num_threads})"
