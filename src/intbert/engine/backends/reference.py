"""The portable reference backend: the ``intops`` definitions in plain torch integer ops, CPU or CUDA.

Slow by design (int32 matmuls have no BLAS on CPU; eager int64 elementwise chains), it is the
oracle every fast backend is tested against. Its elementwise ops call the ``intops`` functions. Its
GEMM (:func:`int8_matmul`) is the twin of the GEMM's definition, ``intops.int_matmul``, in integer
dtypes: int_matmul computes through an exact float32 (CPU) or float64 (CUDA) GEMM, and the engine
runs no float op between the ids and the last hidden state (tests/test_engine_freeze.py). The two
are compared directly in tests/test_int_gemm_twins.py.
"""

from __future__ import annotations

import torch

from ...quantization import intops
from .base import Backend


def _int_mm_cuda(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] @ int8 [K, N] -> int32 on CUDA via ``torch._int_mm`` (tensor cores).

    ``_int_mm`` needs M > 16 and K, N multiples of 8; zero padding leaves the products unchanged.
    """
    M, K = a.shape
    N = b.shape[1]
    Mp, Kp, Np = max(32, -(-M // 8) * 8), -(-K // 8) * 8, -(-N // 8) * 8
    if (Mp, Kp) != (M, K):
        a = torch.nn.functional.pad(a, (0, Kp - K, 0, Mp - M))
    if (Kp, Np) != (K, N):
        b = torch.nn.functional.pad(b, (0, Np - N, 0, Kp - K))
    return torch._int_mm(a.contiguous(), b.contiguous())[:M, :N]


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b (batched, broadcast leading dims) of int8 / uint8 operands, int32 result: twin of
    ``intops.int_matmul(a, b)`` (the definition), in integer dtypes only.

    CPU: int32 ``torch.matmul`` (exact: every bound K * 255 * 128 < 2^31 is checked at freeze).
    CUDA: ``torch._int_mm`` per matrix. A uint8 operand p in [0, 255] does not fit int8, so
    p @ b = (p - 128) @ b + 128 * sum_k b[k, :] (exact in int32).
    """
    if not a.is_cuda:
        return torch.matmul(a.to(torch.int32), b.to(torch.int32))
    if a.dtype == torch.uint8:
        centred = (a.to(torch.int16) - 128).to(torch.int8)
        return int8_matmul(centred, b) + 128 * b.to(torch.int32).sum(dim=-2, keepdim=True)
    if a.dim() == 2 and b.dim() == 2:
        return _int_mm_cuda(a, b)
    shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a2 = a.expand(*shape, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b2 = b.expand(*shape, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out = torch.stack([_int_mm_cuda(x, y) for x, y in zip(a2, b2)])
    return out.reshape(*shape, a.shape[-2], b.shape[-1])


class ReferenceBackend(Backend):
    name = "reference"

    def supports(self, device: torch.device) -> bool:
        return device.type in ("cpu", "cuda")

    def linear(self, x, lin):
        return int8_matmul(x, lin.weight.t()) + lin.bias

    def matmul(self, a, b):
        return int8_matmul(a, b)

    def requantize(self, q, rq):
        return intops.requantize(q.long(), rq.m, rq.e, rq.bits, rq.input_bits).to(rq.dtype)

    def residual(self, a, b, add):
        total = intops.rescale(a.long(), add.a.m, add.a.e, add.a.input_bits) + intops.rescale(
            b.long(), add.b.m, add.b.e, add.b.input_bits
        )
        return total.clamp_(*intops.quant_bounds(add.bits)).to(add.a.dtype)

    def softmax(self, scores, keep, sm):
        return intops.int_softmax(scores, keep, sm.as_dict(), sm.output_bit).to(torch.uint8)

    def gelu(self, q, g):
        return intops.int_gelu(q.long(), g.b, g.c, g.one)

    def layernorm(self, q, ln):
        return intops.int_layernorm(q.long(), ln.shift, ln.sign, ln.bias).to(torch.int32)
