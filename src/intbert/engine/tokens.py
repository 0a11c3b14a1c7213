"""Where a batch's tokens sit while the integer encoder runs: padded, or packed to the real tokens.

Token-wise steps (GEMMs, requantization, i-GELU, LayerNorm) do not care where a token sits, only
attention does. A backend that ``packs_tokens`` gets the real tokens of the whole batch as one
(T, H) matrix and each sequence's rows (``starts``), so a batch of sentences costs what its tokens
cost, not B x the longest; every other backend gets (B, L, H) and the boolean key mask.

Packing changes no number on a real position: a masked key contributes nothing to the integer
softmax (excluded from the max, its exponential set to 0 before the sum) nor to the context (its
probability is 0), so attending over a sequence's real keys alone gives the same integers. Padded
positions are not computed at all; ``unpack`` fills them with 0 (their dequantized states are 0.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenLayout:
    batch: int
    length: int
    #: bool (B, 1, 1, L), True = attend; None = every key attended (padded layout).
    keep: torch.Tensor | None = None
    #: int64 (T,) flat positions b * L + i of the real tokens (packed layout; None = padded).
    index: torch.Tensor | None = None
    #: int64 (B + 1,) first packed row of each sequence, then T (packed layout).
    starts: torch.Tensor | None = None

    @classmethod
    def padded(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> "TokenLayout":
        B, L = input_ids.shape
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        return cls(B, L, keep=keep)

    @classmethod
    def packed(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> "TokenLayout":
        B, L = input_ids.shape
        if attention_mask is None:
            lengths = torch.full((B,), L, dtype=torch.int64)
            index = torch.arange(B * L, dtype=torch.int64)
        else:
            real = attention_mask.bool().reshape(-1).cpu()
            index = real.nonzero().reshape(-1)
            lengths = real.view(B, L).sum(dim=1)
        starts = torch.zeros(B + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=starts[1:])
        return cls(B, L, index=index.to(input_ids.device), starts=starts)

    @property
    def is_packed(self) -> bool:
        return self.index is not None

    @property
    def num_tokens(self) -> int:
        return int(self.index.numel()) if self.is_packed else self.batch * self.length

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (T, ...) real tokens in order (packed), or ``t`` itself (padded)."""
        if not self.is_packed:
            return t
        return t.reshape(self.batch * self.length, *t.shape[2:]).index_select(0, self.index)

    def unpack(self, h: torch.Tensor) -> torch.Tensor:
        """(T, H) -> (B, L, H) with 0 at padded positions (packed), or ``h`` itself (padded)."""
        if not self.is_packed:
            return h
        if self.index.numel() == self.batch * self.length:
            return h.view(self.batch, self.length, *h.shape[1:])
        out = h.new_zeros(self.batch * self.length, *h.shape[1:])
        out.index_copy_(0, self.index, h)
        return out.view(self.batch, self.length, *h.shape[1:])

    # -- padded layout: heads (what a backend's per-head attention sees) ---------------------------
    def split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, L, H) -> (B, nh, L, d)."""
        B, L, H = x.shape
        return x.view(B, L, heads, H // heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, nh, L, d) -> (B, L, nh * d)."""
        B, nh, L, d = x.shape
        return x.transpose(1, 2).reshape(B, L, nh * d)
