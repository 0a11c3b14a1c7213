"""The ONNX graph backend: the engine's integer ops written as ONNX nodes; its values are graph tensor names.

``IntegerIBertModel.encode(..., backend=OnnxGraphBackend(builder, ...))`` runs the engine's own data path
(engine/model.py: embeddings, then per layer Q/K/V, attention, dense + residual + LayerNorm, the FFN) with every
op appending nodes to a :class:`~.onnx_intops.GraphBuilder` instead of computing: the integer part of the exported
graph is the encoder itself, not a second spelling of it. The ops are the :mod:`.onnx_intops` subgraphs, each the
twin of its ``intops`` definition, plus ``MatMulInteger`` for the GEMMs (twin: ``intops.int_matmul``).

Value convention: every integer activation is an int64 tensor (int8 states, int32 accumulators, 22-bit sums and
47-bit i-GELU outputs alike; each bound is far inside int64, and one type keeps the subgraphs' arithmetic exact
without a cast between ops); masks are bool. Operands are cast only where a GEMM reads them:

* left operand: an int8 q as uint8 q + 128 at zero point 128 (one ``Add`` + ``Cast`` per tensor, however many
  GEMMs read it); probabilities (``softmax``'s output, in [0, 2^8 - 1]) as uint8 at zero point 0;
* right operand of a linear (the weight, a constant): int8 at zero point 0 (``weight_kernel="u8s8"``) or uint8
  w + 128 at zero point 128 (``"u8u8"``); of the attention GEMMs (k^T, v): the same choice, ``attention_kernel``.
  Which kernels are exact where is ``ort_gemm.choose_kernel``'s answer; the exporter asks it.

The head split and merge of attention are here (``attention_requant``): ``Reshape`` (B, L, H) -> (B, L, nh, d) and
``Transpose`` to (B, nh, L, d), and back. Padded positions are computed like real ones (no token packing), which
is what ``IntegerIBertModel.padded()`` makes every other backend do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from ..modules import GELUConstants, IntLinear, LayerNormConstants, Requant, ResidualRequant, SoftmaxConstants
from ..tokens import TokenLayout
from . import onnx_intops as oi
from .base import Backend
from .ort_gemm import ACTIVATION_ZERO_POINT, KERNELS

#: Zero point of probabilities as a GEMM's left operand: they are already non-negative uint8.
PROBABILITY_ZERO_POINT = 0


def _np(t: torch.Tensor, dtype=None) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a.astype(dtype) if dtype is not None else a


def _rq(rq: Requant) -> dict:
    """A Requant's constants as ``onnx_intops.rescale`` takes them."""
    return {"m": _np(rq.m, np.int64), "e": _np(rq.e, np.int64), "input_bits": rq.input_bits}


class OnnxGraphBackend(Backend):
    """Backend whose tensors are names in ``graph``: each op appends the nodes that compute it.

    Args:
        graph: the builder the nodes go into (inputs are reserved by the caller).
        weight_kernel / attention_kernel: "u8s8" or "u8u8", how the right operand of the linear / attention GEMMs
            is stored (module docstring).
        module_names: qualified names of the engine's constant modules (``encoder.named_modules()``); a node
            computing with a named module gets that name as its prefix (``layer.0.query.MatMulInteger.``), so the
            graph reads like the model. Unnamed modules get the op's name.

    ``unsigned``: names whose values are probabilities (uint8 in the other backends): a GEMM reads them at zero
    point 0. ``softmax`` adds its outputs; a caller feeding probabilities as a graph input adds the input's name.
    """

    name = "onnx"

    def __init__(self, graph: oi.GraphBuilder, weight_kernel: str = "u8u8", attention_kernel: str = "u8u8",
                 module_names: dict[int, str] | None = None):
        for what, kernel in (("weight_kernel", weight_kernel), ("attention_kernel", attention_kernel)):
            if kernel not in KERNELS:
                raise ValueError(f"{what} must be one of {KERNELS}, got {kernel!r}")
        self.g = graph
        self.weight_kernel, self.attention_kernel = weight_kernel, attention_kernel
        self._names = dict(module_names or {})
        self.unsigned: set[str] = set()
        self._as_u8: dict[str, str] = {}

    def supports(self, device: torch.device) -> bool:
        """False everywhere: it computes nothing on a device; ``encode(..., backend=...)`` takes it directly."""
        return False

    @contextlib.contextmanager
    def _at(self, module, fallback: str) -> Iterator[None]:
        """Name the nodes made inside after ``module`` (absolute: a composite's parts are named by their own)."""
        with self.g.scope(self._names.get(id(module), fallback) + ".", absolute=True):
            yield

    # -- GEMM operands ------------------------------------------------------------------------------
    def _left(self, x: str) -> tuple[str, str]:
        """(uint8 operand, zero point) of a left GEMM operand: an int8 q as q + 128, probabilities as they are."""
        g = self.g
        if x in self.unsigned:  # in [0, 255]: the Cast keeps the value
            return g.op("Cast", [x], "probs_u8", to=oi.UINT8), g.const(PROBABILITY_ZERO_POINT, np.uint8, "zp0_u8")
        if x not in self._as_u8:  # q in [-128, 127] -> q + 128 in [0, 255]
            plus = g.op("Add", [x, g.i64(ACTIVATION_ZERO_POINT, "zp128")], "plus128")
            self._as_u8[x] = g.op("Cast", [plus], "u8", to=oi.UINT8)
        return self._as_u8[x], g.const(ACTIVATION_ZERO_POINT, np.uint8, "zp_u8")

    def _right(self, x: str) -> tuple[str, str]:
        """(operand, zero point) for an activation as the right operand of an attention GEMM (attention_kernel)."""
        g = self.g
        if self.attention_kernel == "u8s8":  # q in [-128, 127] is an int8 as it is
            return g.op("Cast", [x], "s8", to=oi.INT8), g.const(0, np.int8, "zp_s8")
        return self._left(x)

    def _gemm(self, a: tuple[str, str], b: tuple[str, str], hint: str) -> str:
        """MatMulInteger -> int32, widened to int64. Exact: every freeze bound keeps |sum| < 2^31 (see callers)."""
        acc = self.g.op("MatMulInteger", [a[0], b[0], a[1], b[1]], hint)
        return self.g.op("Cast", [acc], f"{hint}64", to=oi.INT64)

    # -- primitives ---------------------------------------------------------------------------------
    def linear(self, x: str, lin: IntLinear) -> str:
        """x @ W^T + b: |acc| + |bias| < 2^31 (``IntLinear.validate``), so the int32 MatMulInteger and Add are exact."""
        g = self.g
        with self._at(lin, "linear"):
            w_t = _np(lin.weight).T.astype(np.int16)  # [K, N]
            if self.weight_kernel == "u8s8":
                w = (g.const(w_t.astype(np.int8), np.int8, "weight"), g.const(0, np.int8, "zp_s8"))
            else:  # w + 128 in [1, 255] (|w| <= 127) at zero point 128: B - 128 = w exactly
                w = (g.const((w_t + 128).astype(np.uint8), np.uint8, "weight_u8"),
                     g.const(ACTIVATION_ZERO_POINT, np.uint8, "zp_u8"))
            x_u8, x_zp = self._left(x)
            acc = g.op("MatMulInteger", [x_u8, w[0], x_zp, w[1]], "acc")
            acc = g.op("Add", [acc, g.const(_np(lin.bias, np.int32), np.int32, "bias")], "acc_bias")
            return g.op("Cast", [acc], "acc64", to=oi.INT64)

    def matmul(self, a: str, b: str) -> str:
        """Batched a @ b (numpy broadcasting) of int8 activations or probabilities (a): |sum| <= K 255 128 < 2^31."""
        with self.g.scope("matmul.", absolute=True):
            return self._gemm(self._left(a), self._right(b), "product")

    def requantize(self, q: str, rq: Requant) -> str:
        with self._at(rq, "requantize"):
            return oi.requantize(self.g, q, **_rq(rq), bits=rq.bits)

    def residual(self, a: str, b: str, add: ResidualRequant) -> str:
        with self._at(add, "residual"):
            return oi.residual(self.g, a, b, _rq(add.a), _rq(add.b), add.bits)

    def softmax(self, scores: str, keep: str | None, sm: SoftmaxConstants) -> str:
        with self._at(sm, "softmax"):
            consts = {name: int(getattr(sm, name)) for name in sm.BUFFERS}
            probs = oi.int_softmax(self.g, scores, keep, consts, sm.output_bit)
        self.unsigned.add(probs)
        return probs

    def gelu(self, q: str, g: GELUConstants) -> str:
        with self._at(g, "gelu"):
            return oi.int_gelu(self.g, q, _np(g.b), _np(g.c), _np(g.one))

    def layernorm(self, q: str, ln: LayerNormConstants) -> str:
        with self._at(ln, "layernorm"):
            return oi.int_layernorm(self.g, q, int(ln.sign.numel()), int(ln.shift), _np(ln.sign), _np(ln.bias))

    # -- inputs (what encode asks of a backend before the first layer) ------------------------------
    def position_ids(self, input_ids: str, pad_token_id: int) -> str:
        """RoBERTa positions in the graph: pad + cumsum(ids != pad) on non-pad tokens, pad on pad tokens."""
        g = self.g
        with g.scope("embeddings.positions.", absolute=True):
            is_pad = g.op("Equal", [input_ids, g.i64(pad_token_id, "pad")], "is_pad")
            not_pad = g.op("Cast", [g.op("Not", [is_pad], "not_pad")], "not_pad_i64", to=oi.INT64)
            count = g.op("CumSum", [not_pad, g.i64(1, "axis1")], "count")
            return g.op("Add", [g.op("Mul", [count, not_pad], "count_masked"), g.i64(pad_token_id, "pad")], "positions")

    def token_layout(self, input_ids: str, attention_mask: str | None, pack: bool) -> TokenLayout:
        """Padded always (a graph has no data-dependent packing); ``keep`` = attention_mask != 0 as (B, 1, 1, L)."""
        if pack:
            raise NotImplementedError("the ONNX graph backend computes padded positions too; it does not pack tokens")
        keep = None
        if attention_mask is not None:
            g = self.g
            with g.scope("attention_mask.", absolute=True):
                keep = g.op("Unsqueeze", [g.op("Cast", [attention_mask], "keep", to=oi.BOOL),
                                          g.i64([1, 2], "axes12")], "keep_4d")
        return TokenLayout(batch=None, length=None, keep=keep)  # sizes are the graph's dynamic axes

    # -- composites -----------------------------------------------------------------------------------
    def embed(self, emb, input_ids: str, token_type_ids: str, position_ids: str) -> str:
        """int8 table Gathers -> word + type (16-bit) + position (16-bit) -> LayerNorm -> int8."""
        g = self.g

        def lookup(table: torch.Tensor, index: str, name: str) -> str:
            rows = g.op("Gather", [g.const(_np(table), np.int8, name), index], f"{name}_rows", axis=0)
            return g.op("Cast", [rows], f"{name}_i64", to=oi.INT64)

        with self._at(emb, "embeddings"):
            word = lookup(emb.word, input_ids, "word")
            token_type = lookup(emb.token_type, token_type_ids, "token_type")
            position = lookup(emb.position, position_ids, "position")
        h = self.residual(self.residual(word, token_type, emb.add_token_type), position, emb.add_position)
        return self.requantize(self.layernorm(h, emb.ln), emb.out)

    def attention(self, q: str, k: str, v: str, keep: str | None, sm: SoftmaxConstants) -> tuple[str, str]:
        """(B, nh, L, d) q, k, v -> (context (B, nh, L, d), probabilities (B, nh, L, L)), both int64 tensors."""
        g = self.g
        with self._at(sm, "attention"):
            k_op, k_zp = self._right(k)
            k_t = g.op("Transpose", [k_op], "k_t", perm=[0, 1, 3, 2])  # (B, nh, d, L)
            # |q.k| <= d * 128 * 128 < 2^31 (checked at freeze): int32 scores.
            scores = self._gemm(self._left(q), (k_t, k_zp), "scores")
        probs = self.softmax(scores, keep, sm)
        with self._at(sm, "attention"):
            # |p.v| <= L * 255 * 128 < 2^31 for L <= max_position_embeddings (checked at freeze).
            context = self._gemm(self._left(probs), self._right(v), "context")
        return context, probs

    def attention_requant(self, q: str, k: str, v: str, tokens: TokenLayout, heads: int, sm: SoftmaxConstants,
                          rq: Requant) -> str:
        """int8 q, k, v (B, L, H) -> heads -> attention -> merged (B, L, H) context requantized to int8."""
        if tokens.is_packed:
            raise NotImplementedError("the ONNX graph backend takes padded tokens only")
        g = self.g
        with self._at(sm, "attention"):
            split = g.i64([0, 0, heads, -1], "heads_shape")  # (B, L, H) -> (B, L, nh, d); 0 copies the input's dim
            q, k, v = (g.op("Transpose", [g.op("Reshape", [t, split], f"{n}_heads")], f"{n}_bhld", perm=[0, 2, 1, 3])
                       for t, n in ((q, "q"), (k, "k"), (v, "v")))  # (B, nh, L, d)
        context, _ = self.attention(q, k, v, tokens.keep, sm)
        with self._at(sm, "attention"):
            merged = g.op("Reshape", [g.op("Transpose", [context], "context_blhd", perm=[0, 2, 1, 3]),
                                      g.i64([0, 0, -1], "merged_shape")], "context_merged")  # (B, L, nh * d)
        return self.requantize(merged, rq)
