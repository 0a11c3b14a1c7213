"""The CUDA backend: fused Triton int8 kernels, or ``torch._int_mm`` GEMMs + compiled elementwise chains.

Two kernel sets, chosen per backend instance (``CUDABackend(kernels=...)``, else the environment variable
``INTBERT_CUDA_KERNELS``, else ``triton`` where triton is installed; a CUDA build of torch ships it):

* ``triton``: one kernel per step of a layer, the integer chain fused into the GEMM's epilogue
  (``triton_gemm``: Q/K/V as one GEMM + requantize, dense + residual + LayerNorm + requantize, FFN up +
  i-GELU + two requantizations), a flash-style fused attention (``triton_attention``: scores never leave
  registers), the embeddings + LayerNorm in one kernel (``triton_embed``) and a Triton requantization
  (``triton_requant``). Every launch is capturable by a CUDA graph (``cuda_graphs``): no host synchronisation,
  no ``torch.compile``.
* ``torch``: int8 tensor-core GEMMs by ``torch._int_mm`` (operands padded where it needs it,
  reference.int8_matmul) and the ``fused_ops`` chains compiled by ``torch.compile``; the fallback.

Steps the fused kernels do not take (outputs wider than 8 bits, packed tokens, the probabilities of
``output_attentions``) run the ``torch`` path. Results equal the reference backend's bit for bit: the
Triton kernels under ``TRITON_INTERPRET=1`` on CPU tensors (tests/test_triton_kernels.py), both sets on a
GPU (tests marked gpu; they skip without a CUDA device).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .compiled import CompiledElementwise
from .reference import ReferenceBackend, int8_matmul

#: The kernel sets of :class:`CUDABackend`.
KERNELS = ("triton", "torch")
#: Environment variable that picks the kernel set when the constructor is not told.
KERNELS_ENV = "INTBERT_CUDA_KERNELS"


def triton_available() -> bool:
    """Whether ``triton`` can be imported (CUDA builds of torch ship it; CPU builds do not)."""
    return importlib.util.find_spec("triton") is not None


def _fits_int8(*requants) -> bool:
    return all(rq.bits <= 8 for rq in requants)


class CUDABackend(CompiledElementwise, ReferenceBackend):
    name = "cuda"

    def __init__(self, kernels: str | None = None):
        chosen = kernels or os.environ.get(KERNELS_ENV) or ("triton" if triton_available() else "torch")
        if chosen not in KERNELS:
            raise ValueError(f"unknown CUDA kernel set {chosen!r} (from {'the argument' if kernels else KERNELS_ENV}); "
                             f"choose one of {KERNELS}")
        if chosen == "triton" and not triton_available():
            raise ImportError(f"the 'triton' CUDA kernels need the triton package (pip install triton), "
                              f"or set {KERNELS_ENV}=torch")
        self.kernels = chosen
        #: id of the Q/K/V modules -> (their tensors, the stacked weight, bias, m, e, split sizes).
        self._stacks: dict[tuple, tuple] = {}

    @property
    def fused(self) -> bool:
        return self.kernels == "triton"

    def supports(self, device):
        return device.type == "cuda" and torch.cuda.is_available()

    # -- torch path primitives ------------------------------------------------------------------------
    def gemm(self, x, lin):
        """x @ W^T (no bias) on the int8 tensor cores."""
        return int8_matmul(x.reshape(-1, x.shape[-1]), lin.weight.t()).reshape(*x.shape[:-1], -1)

    def linear(self, x, lin):
        return self.gemm(x, lin) + lin.bias

    # -- fused Triton kernels ---------------------------------------------------------------------------
    def requantize(self, q, rq):
        if self.fused and _fits_int8(rq):
            from . import triton_requant

            return triton_requant.requantize(q, rq.m, rq.e, rq.bits, rq.input_bits)
        return super().requantize(q, rq)

    def linear_requant(self, x, lin, rq):
        if self.fused and _fits_int8(rq):
            from . import triton_gemm

            return triton_gemm.linear_requant(x, lin.weight, lin.bias, rq.m, rq.e, rq.bits, rq.input_bits)
        return super().linear_requant(x, lin, rq)

    def linear_requant_many(self, x, pairs):
        """Q, K and V as one GEMM over the stacked weights; returns column views of its (..., 3H) output."""
        pairs = list(pairs)
        rqs = [rq for _, rq in pairs]
        if not (self.fused and _fits_int8(*rqs) and len({(rq.bits, rq.input_bits) for rq in rqs}) == 1):
            return super().linear_requant_many(x, pairs)
        from . import triton_gemm

        weight, bias, m, e, sizes = self._stacked(pairs)
        out = triton_gemm.linear_requant(x, weight, bias, m, e, rqs[0].bits, rqs[0].input_bits)
        return list(out.split(sizes, dim=-1))

    def _stacked(self, pairs):
        """The stacked tensors of ``pairs``, rebuilt when a buffer was replaced (load, ``.to()``)."""
        from . import triton_gemm

        parts = tuple(t for lin, rq in pairs for t in (lin.weight, lin.bias, rq.m, rq.e))
        key = tuple(id(t) for t in parts)
        entry = self._stacks.get(key)
        if entry is None or any(a is not b for a, b in zip(entry[0], parts)):
            entry = self._stacks[key] = (parts, *triton_gemm.stack_linears(pairs))
        return entry[1:]

    def linear_gelu_requant(self, x, lin, g, rq1, rq2):
        if self.fused and _fits_int8(rq2):
            from . import triton_gemm

            return triton_gemm.linear_gelu_requant(x, lin, g, rq1, rq2)
        return super().linear_gelu_requant(x, lin, g, rq1, rq2)

    def linear_residual_layernorm(self, x, lin, residual, add, ln, rq):
        if self.fused and _fits_int8(rq) and add.bits <= 32:
            from . import triton_gemm

            return triton_gemm.linear_residual_layernorm(x, lin, residual, add, ln, rq)
        return super().linear_residual_layernorm(x, lin, residual, add, ln, rq)

    def embed(self, emb, input_ids, token_type_ids, position_ids):
        if self.fused and _fits_int8(emb.out) and emb.add_token_type.bits <= 32 and emb.add_position.bits <= 32:
            from . import triton_embed

            return triton_embed.embed(emb, input_ids, token_type_ids, position_ids)
        return super().embed(emb, input_ids, token_type_ids, position_ids)

    def attention_requant(self, q, k, v, tokens, heads, sm, rq):
        if self.fused and _fits_int8(rq) and not tokens.is_packed:
            from . import triton_attention

            return triton_attention.attention_requant(q, k, v, tokens.keep, heads, sm, rq)
        return super().attention_requant(q, k, v, tokens, heads, sm, rq)
