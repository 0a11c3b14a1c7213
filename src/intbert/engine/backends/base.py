"""The backend interface of the frozen engine: the few integer operations an encoder layer needs.

A backend gets integer tensors and the constant modules of ``engine.modules`` and returns integer
tensors. The definitions are the exact integer functions of ``quantization.intops`` (``int_matmul`` for
the GEMMs, ``requantize``, ``int_softmax``, ``int_gelu``, ``int_layernorm``). Every backend must give
the same integers as :class:`~.reference.ReferenceBackend`, the plain-torch oracle that calls them
(tests/test_engine_backends.py compares every backend with it using ``torch.equal``; its GEMM, an int32
``matmul`` because the engine runs no float op, is compared with ``int_matmul`` directly in
tests/test_int_gemm_twins.py). The composite methods at the bottom exist so a fast backend can fuse a
chain into one kernel; their default bodies are the definition of each chain.

Tensor conventions: activations int8, probabilities uint8, GEMM accumulators int32, LayerNorm
inputs and outputs int32, i-GELU outputs int64; masks are bool (True = attend). Token-wise methods
take any leading shape (..., C); ``embed`` and ``attention_requant`` see the batch's
:class:`~intbert.engine.tokens.TokenLayout` (padded (B, L, H), or packed (T, H) real tokens for a
backend with ``packs_tokens``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ...models.ibert.modeling_ibert import create_position_ids_from_input_ids
from ..modules import GELUConstants, IntLinear, LayerNormConstants, Requant, ResidualRequant, SoftmaxConstants
from ..tokens import TokenLayout


class Backend(ABC):
    name = "abstract"
    #: True: ``encode`` hands this backend the real tokens only (TokenLayout.packed).
    packs_tokens = False

    @abstractmethod
    def supports(self, device: torch.device) -> bool:
        """Whether this backend runs on ``device``."""

    # -- primitives -------------------------------------------------------------------------------
    @abstractmethod
    def linear(self, x: torch.Tensor, lin: IntLinear) -> torch.Tensor:
        """int8 [..., K] -> int32 [..., N] = ``intops.int_matmul(x, W^T)`` + b (the freeze bound keeps it in int32)."""

    @abstractmethod
    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched ``intops.int_matmul(a, b)`` of int8/uint8 operands -> int32 (attention scores and context)."""

    @abstractmethod
    def requantize(self, q: torch.Tensor, rq: Requant) -> torch.Tensor:
        """clamp(round_half_up(q m / 2^e)) to rq.bits (``intops.requantize``), in rq.dtype."""

    @abstractmethod
    def residual(self, a: torch.Tensor, b: torch.Tensor, add: ResidualRequant) -> torch.Tensor:
        """clamp(rescale(a) + rescale(b)) to add.bits: a residual add onto one grid."""

    @abstractmethod
    def softmax(self, scores: torch.Tensor, keep: torch.Tensor | None, sm: SoftmaxConstants) -> torch.Tensor:
        """i-exp softmax of int32 scores (``intops.int_softmax``) -> uint8; masked keys get 0."""

    @abstractmethod
    def gelu(self, q: torch.Tensor, g: GELUConstants) -> torch.Tensor:
        """i-GELU of int32 accumulators (``intops.int_gelu``) -> int64 (|.| < 2^47)."""

    @abstractmethod
    def layernorm(self, q: torch.Tensor, ln: LayerNormConstants) -> torch.Tensor:
        """Integer LayerNorm of 22-bit rows (``intops.int_layernorm``) -> int32."""

    # -- inputs: what ``encode`` asks before the first layer (a graph backend answers with graph nodes) ---------
    def position_ids(self, input_ids, pad_token_id: int):
        """RoBERTa positions of int64 ids (B, L): pad + 1, pad + 2, ... over non-pad tokens; pad tokens keep pad."""
        return create_position_ids_from_input_ids(input_ids, pad_token_id)

    def token_layout(self, input_ids, attention_mask, pack: bool) -> TokenLayout:
        """The batch's layout: packed real tokens when ``pack`` (only asked of a backend that ``packs_tokens``)."""
        return (TokenLayout.packed if pack else TokenLayout.padded)(input_ids, attention_mask)

    # -- composites (fusable) -----------------------------------------------------------------------
    def linear_requant(self, x: torch.Tensor, lin: IntLinear, rq: Requant) -> torch.Tensor:
        return self.requantize(self.linear(x, lin), rq)

    def linear_requant_many(self, x: torch.Tensor, pairs) -> list[torch.Tensor]:
        """Several (linear, requant) pairs on one input (query, key, value): a fast backend runs one GEMM."""
        return [self.linear_requant(x, lin, rq) for lin, rq in pairs]

    def linear_gelu_requant(self, x, lin: IntLinear, g: GELUConstants, rq1: Requant, rq2: Requant) -> torch.Tensor:
        """FFN up: linear -> i-GELU -> 8-bit (output_activation) -> 8-bit (the layer's pre_output_act)."""
        return self.requantize(self.requantize(self.gelu(self.linear(x, lin), g), rq1), rq2)

    def linear_residual_layernorm(self, x, lin: IntLinear, residual, add: ResidualRequant, ln: LayerNormConstants,
                                  rq: Requant) -> torch.Tensor:
        """dense -> + residual (22-bit) -> LayerNorm -> 8-bit."""
        return self.requantize(self.layernorm(self.residual(self.linear(x, lin), residual, add), ln), rq)

    def embed(self, emb, input_ids, token_type_ids, position_ids) -> torch.Tensor:
        """int8 tables (``IntEmbeddings``) -> word + type (16-bit) + position (16-bit) -> LayerNorm -> 8-bit."""
        h = self.residual(emb.word[input_ids], emb.token_type[token_type_ids], emb.add_token_type)
        h = self.residual(h, emb.position[position_ids], emb.add_position)
        return self.requantize(self.layernorm(h, emb.ln), emb.out)

    def attention_requant(self, q, k, v, tokens, heads: int, sm: SoftmaxConstants, rq: Requant) -> torch.Tensor:
        """int8 q, k, v (B, L, H) -> attention per head -> context requantized to int8 (B, L, H)."""
        if tokens.is_packed:
            raise NotImplementedError(f"backend {self.name!r} does not take packed tokens")
        context, _ = self.attention(*(tokens.split_heads(t, heads) for t in (q, k, v)), tokens.keep, sm)
        return self.requantize(tokens.merge_heads(context), rq)

    def attention(self, q, k, v, keep, sm: SoftmaxConstants):
        """(B, nh, L, d) int8 q, k, v -> (context int32 (B, nh, L, d), probabilities uint8 (B, nh, L, L))."""
        probs = self.softmax(self.matmul(q, k.transpose(-1, -2)), keep, sm)
        return self.matmul(probs, v), probs
