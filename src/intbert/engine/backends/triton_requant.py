"""Triton requantization of a tensor to int8: the one elementwise step of a layer that no GEMM epilogue takes.

(The attention block's int8 output is requantized again to the FFN input grid, ``pre_intermediate``;
``engine.model`` calls ``Backend.requantize`` for it.) Twin: ``ReferenceBackend.requantize``
(``intops.requantize``). A Triton kernel rather than the compiled ``fused_ops`` chain, so that a
CUDA-graph capture of the encoder launches only Triton kernels and no ``torch.compile`` code.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_intops as ti

INTERPRET = bool(triton.knobs.runtime.interpret)


@triton.jit
def _requant_kernel(q_ptr, m_ptr, e_ptr, out_ptr, numel, C, M_STRIDE: tl.constexpr, BITS: tl.constexpr,
                    INPUT_BITS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int64)
    ch = (offs % C) * M_STRIDE  # per-channel constants follow the last dim (offs >= 0: % is the remainder)
    m = tl.load(m_ptr + ch, mask=mask, other=0)
    e = tl.load(e_ptr + ch, mask=mask, other=0)
    tl.store(out_ptr + offs, ti.requantize(q, m, e, BITS, INPUT_BITS).to(tl.int8), mask=mask)


def requantize(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor, bits: int, input_bits: int) -> torch.Tensor:
    """Integer q (any shape, |q| < 2^input_bits, at most 2^31 elements) -> int8 requantized to ``bits`` <= 8."""
    q = q.contiguous()
    out = torch.empty(q.shape, dtype=torch.int8, device=q.device)
    numel = q.numel()
    if numel == 0:
        return out
    block = 256 if INTERPRET else 1024
    _requant_kernel[(triton.cdiv(numel, block),)](q, m, e, out, numel, q.shape[-1], M_STRIDE=0 if m.numel() == 1 else 1,
                                                  BITS=bits, INPUT_BITS=input_bits, BLOCK=block)
    return out
