"""The fast CPU backend: onnxruntime's integer GEMMs + compiled integer elementwise kernels.

GEMMs: ``engine.backends.ort_gemm`` (MLAS ``MatMulInteger``), twins of ``intops.int_matmul`` (the
definition; tests/test_int_gemm_twins.py), exact by construction of the kernel choice
(``ort_gemm.choose_kernel``: u8 x s8 for weights of at most 7 bits, or where this CPU's probe finds
u8 x s8 exact for full int8; u8 x u8 otherwise). Activations stay int8
between ops; an int8 q becomes the uint8 q + 128 that MLAS wants by flipping its top bit (x ^ 0x80).
Elementwise chains: ``fused_ops`` (one compiled kernel per chain). Results equal the reference
backend's bit for bit (tests/test_engine_backends.py).
"""

from __future__ import annotations

import torch

from . import ort_gemm
from .compiled import CompiledElementwise
from .reference import ReferenceBackend


def cpu_backend_available() -> bool:
    return ort_gemm.ort_available()


def to_biased_u8(x: torch.Tensor) -> torch.Tensor:
    """int8 q -> uint8 q + 128 (the two's complement bit pattern with the sign bit flipped)."""
    return torch.bitwise_xor(x.view(torch.uint8), 0x80)


class CPUBackend(CompiledElementwise, ReferenceBackend):
    name = "cpu"

    def __init__(self, num_threads: int | None = None):
        if not cpu_backend_available():
            raise ort_gemm.OrtUnavailableError(
                "the 'cpu' engine backend needs onnxruntime: pip install 'intbert[onnx]' (or use backend='reference')")
        self.num_threads = num_threads
        self._linears: dict[int, tuple] = {}
        self._bmm = ort_gemm.OrtBatchedMatMul(num_threads)

    def supports(self, device):
        return device.type == "cpu"

    def gemm(self, x: torch.Tensor, lin) -> torch.Tensor:
        """x @ W^T without the bias (the fused kernels add it)."""
        entry = self._linears.get(id(lin))
        if entry is None or entry[0] is not lin.weight:  # rebuilt if the buffer was replaced (load, .to())
            entry = self._linears[id(lin)] = (lin.weight, ort_gemm.OrtLinear(lin.weight, lin.weight_bit, self.num_threads))
        return entry[1](to_biased_u8(x))

    # -- primitives ---------------------------------------------------------------------------------
    def linear(self, x, lin):
        return self.gemm(x, lin) + lin.bias

    def matmul(self, a, b):
        if a.dtype == torch.uint8:  # probabilities: zero point 0
            return self._bmm(a.contiguous(), 0, to_biased_u8(b.contiguous()), 128)
        return self._bmm(to_biased_u8(a.contiguous()), 128, to_biased_u8(b.contiguous()), 128)
