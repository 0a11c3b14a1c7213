"""The CUDA backend: int8 tensor-core GEMMs (``torch._int_mm``) + compiled integer elementwise kernels.

``torch.compile`` turns each ``fused_ops`` chain into one Triton kernel on CUDA. GEMM operands are
padded where ``_int_mm`` needs it (reference.int8_matmul). Results equal the reference backend's
bit for bit (tests marked gpu; they skip without a CUDA device).
"""

from __future__ import annotations

import torch

from .compiled import CompiledElementwise
from .reference import ReferenceBackend, int8_matmul


class CUDABackend(CompiledElementwise, ReferenceBackend):
    name = "cuda"

    def supports(self, device):
        return device.type == "cuda" and torch.cuda.is_available()

    def gemm(self, x, lin):
        """x @ W^T (no bias) on the int8 tensor cores."""
        return int8_matmul(x.reshape(-1, x.shape[-1]), lin.weight.t()).reshape(*x.shape[:-1], -1)

    def linear(self, x, lin):
        return self.gemm(x, lin) + lin.bias
