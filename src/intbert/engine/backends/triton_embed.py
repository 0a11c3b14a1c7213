"""The embeddings in one Triton kernel: int8 table rows -> two residual adds -> integer LayerNorm -> int8.

Twin: ``Backend.embed`` of the reference backend: h = residual(word[ids], token_type[tt]) (16 bits), then
residual(h, position[pos]) (16 bits), then ``int_layernorm`` and the requantization to int8. One program owns
BLOCK_M tokens and walks their H tiles: pass 1 gathers the three rows, adds them on their grids and writes the
sums to an int32 scratch with the row sums; passes 2 and 3 are the LayerNorm of ``triton_intops``. Besides
saving the int64 round trips of five elementwise steps, it keeps ``torch.compile`` (the ``fused_ops`` chains)
out of the CUDA-graph capture of the encoder.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_intops as ti
from .triton_gemm import check_offsets

INTERPRET = bool(triton.knobs.runtime.interpret)


@triton.jit
def _add(a, b, ma_ptr, ea_ptr, mb_ptr, eb_ptr, cols, cmask, MA_STRIDE: tl.constexpr, MB_STRIDE: tl.constexpr,
         INA: tl.constexpr, INB: tl.constexpr, BITS: tl.constexpr):
    """clamp(rescale(a) + rescale(b)) to BITS (``ReferenceBackend.residual``), int64 in and out."""
    ma = tl.load(ma_ptr + cols * MA_STRIDE, mask=cmask, other=0)[None, :]
    ea = tl.load(ea_ptr + cols * MA_STRIDE, mask=cmask, other=0)[None, :]
    mb = tl.load(mb_ptr + cols * MB_STRIDE, mask=cmask, other=0)[None, :]
    eb = tl.load(eb_ptr + cols * MB_STRIDE, mask=cmask, other=0)[None, :]
    h = ti.rescale(a, ma, ea, INA) + ti.rescale(b, mb, eb, INB)
    return tl.minimum(tl.maximum(h, -(1 << (BITS - 1))), (1 << (BITS - 1)) - 1)


@triton.jit
def _embed_kernel(ids_ptr, tt_ptr, pos_ptr, word_ptr, type_ptr, posemb_ptr,
                  ma1_ptr, ea1_ptr, mb1_ptr, eb1_ptr, ma2_ptr, ea2_ptr, mb2_ptr, eb2_ptr,
                  shift_ptr, sign_ptr, lnb_ptr, m_ptr, e_ptr, h_ptr, out_ptr, T, H,
                  SA1: tl.constexpr, SB1: tl.constexpr, SA2: tl.constexpr, SB2: tl.constexpr, M_STRIDE: tl.constexpr,
                  INA1: tl.constexpr, INB1: tl.constexpr, BITS1: tl.constexpr,
                  INA2: tl.constexpr, INB2: tl.constexpr, BITS2: tl.constexpr,
                  BITS: tl.constexpr, INPUT_BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < T
    # Table rows (ids were checked against the table sizes by the model's input checks); masked tokens read row 0.
    wid = tl.load(ids_ptr + rows, mask=rmask, other=0)
    tid = tl.load(tt_ptr + rows, mask=rmask, other=0)
    pid = tl.load(pos_ptr + rows, mask=rmask, other=0)
    cs = tl.arange(0, BLOCK_N)
    total = tl.zeros((BLOCK_M,), dtype=tl.int64)
    for n0 in range(0, H, BLOCK_N):
        cols = n0 + cs
        cmask = cols < H
        both = rmask[:, None] & cmask[None, :]
        w = tl.load(word_ptr + wid[:, None] * H + cols[None, :], mask=both, other=0).to(tl.int64)
        t = tl.load(type_ptr + tid[:, None] * H + cols[None, :], mask=both, other=0).to(tl.int64)
        p = tl.load(posemb_ptr + pid[:, None] * H + cols[None, :], mask=both, other=0).to(tl.int64)
        h = _add(w, t, ma1_ptr, ea1_ptr, mb1_ptr, eb1_ptr, cols, cmask, SA1, SB1, INA1, INB1, BITS1)
        h = _add(h, p, ma2_ptr, ea2_ptr, mb2_ptr, eb2_ptr, cols, cmask, SA2, SB2, INA2, INB2, BITS2)
        h = tl.where(both, h, 0)  # 16-bit sums: |h| < 2^15, row sums < 2^15 H
        total += tl.sum(h, axis=1)
        tl.store(h_ptr + rows[:, None] * H + cols[None, :], h.to(tl.int32), mask=both)
    ti.layernorm_requant_rows(h_ptr, out_ptr, rows, rmask, total, H, H, H, shift_ptr, sign_ptr, lnb_ptr, m_ptr, e_ptr,
                              M_STRIDE, BITS, INPUT_BITS, BLOCK_N)


def _stride(t: torch.Tensor) -> int:
    return 0 if t.numel() == 1 else 1


def embed(emb, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """int64 ids of any shape (S...) -> int8 (S..., H); ``emb``: an ``IntEmbeddings`` whose ``out`` has <= 8 bits and
    whose two adds have <= 32 bits (the scratch is int32)."""
    H = emb.word.shape[1]
    ids, tts, pos = (t.reshape(-1).contiguous() for t in (input_ids, token_type_ids, position_ids))
    T = ids.numel()
    out = torch.empty((T, H), dtype=torch.int8, device=ids.device)
    if T == 0:
        return out.view(*input_ids.shape, H)
    h = torch.empty((T, H), dtype=torch.int32, device=ids.device)
    check_offsets(h, emb.word)
    a1, b1, a2, b2, ln, rq = emb.add_token_type.a, emb.add_token_type.b, emb.add_position.a, emb.add_position.b, \
        emb.ln, emb.out
    block_m, block_n = (16, 32) if INTERPRET else (8, 256)
    _embed_kernel[(triton.cdiv(T, block_m),)](
        ids, tts, pos, emb.word, emb.token_type, emb.position, a1.m, a1.e, b1.m, b1.e, a2.m, a2.e, b2.m, b2.e,
        ln.shift, ln.sign, ln.bias, rq.m, rq.e, h, out, T, H,
        SA1=_stride(a1.m), SB1=_stride(b1.m), SA2=_stride(a2.m), SB2=_stride(b2.m), M_STRIDE=_stride(rq.m),
        INA1=a1.input_bits, INB1=b1.input_bits, BITS1=emb.add_token_type.bits,
        INA2=a2.input_bits, INB2=b2.input_bits, BITS2=emb.add_position.bits,
        BITS=rq.bits, INPUT_BITS=rq.input_bits, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)
    return out.view(*input_ids.shape, H)
