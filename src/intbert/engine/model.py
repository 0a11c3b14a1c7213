"""The frozen integer I-BERT: an encoder that runs on integer tensors only, plus the float heads.

Data path of one forward (shapes: B batch, L sequence, H hidden, nh heads, d head size, I intermediate):

    token ids (int64) -> int8 table lookups -> 16-bit sums -> integer LayerNorm (int32) -> int8
    per layer:  int8 -> Q/K/V linears (int32) -> int8 -> scores (int32) -> i-softmax (uint8)
                -> P.V (int32) -> int8 -> dense (int32) + residual (22-bit) -> LayerNorm -> int8
                -> dense (int32) -> i-GELU (int64) -> int8 -> dense + residual -> LayerNorm -> int8
    last int8 hidden states * scale -> float heads (as the reference: its heads are float layers)

``IntegerIBertModel.encode`` is the integer part (no float tensor is created inside it; tested with
a dispatch mode); ``forward`` has ``IBertModel``'s signature and outputs so the unchanged head
modules of the source model run on top of it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

from ..models.ibert.configuration_ibert import IBertConfig
from ..models.ibert.modeling_ibert import check_encoder_inputs
from .backends import Backend, resolve_backend
from .modules import (
    GELUConstants,
    IntLinear,
    LayerNormConstants,
    Requant,
    ResidualRequant,
    SoftmaxConstants,
)
from .tokens import TokenLayout


def _set_parts(module: nn.Module, spec: dict, parts: dict) -> None:
    if set(parts) != set(spec):
        raise TypeError(f"{type(module).__name__} needs parts {sorted(spec)}, got {sorted(parts)}")
    for name, part in parts.items():
        if not isinstance(part, spec[name]):
            raise TypeError(f"{type(module).__name__}.{name} must be {spec[name].__name__}, got {type(part).__name__}")
        setattr(module, name, part)


def _parts_from_state(spec: dict, tensors: dict, prefix: str) -> dict:
    return {name: kind.from_state(tensors, f"{prefix}{name}.") for name, kind in spec.items()}


def _check_shapes(config: IBertConfig, embeddings: "IntEmbeddings", layers: list) -> None:
    """The tensors must have the config's sizes (a file saved from another model fails here, by name)."""
    H, I = config.hidden_size, config.intermediate_size
    want = {"embeddings.word": (config.vocab_size, H), "embeddings.token_type": (config.type_vocab_size, H),
            "embeddings.position": (config.max_position_embeddings, H)}
    got = {"embeddings.word": embeddings.word.shape, "embeddings.token_type": embeddings.token_type.shape,
           "embeddings.position": embeddings.position.shape}
    for i, layer in enumerate(layers):
        for name, shape in (("query", (H, H)), ("key", (H, H)), ("value", (H, H)), ("attention_dense", (H, H)),
                            ("intermediate", (I, H)), ("output_dense", (H, I))):
            want[f"layer.{i}.{name}.weight"] = shape
            got[f"layer.{i}.{name}.weight"] = getattr(layer, name).weight.shape
    bad = [f"{k} {tuple(got[k])} (config: {v})" for k, v in want.items() if tuple(got[k]) != v]
    if bad:
        raise ValueError(f"integer tensors do not match the config's sizes (hidden_size {H}, intermediate_size {I}, "
                         f"vocab_size {config.vocab_size}): " + "; ".join(bad[:4]))


class IntEmbeddings(nn.Module):
    """word + token type (16-bit) + position (16-bit) -> integer LayerNorm -> int8."""

    TABLES = ("word", "token_type", "position")
    PARTS = {"add_token_type": ResidualRequant, "add_position": ResidualRequant, "ln": LayerNormConstants,
             "out": Requant}

    def __init__(self, word: torch.Tensor, token_type: torch.Tensor, position: torch.Tensor, **parts: nn.Module):
        super().__init__()
        self.register_buffer("word", word.to(torch.int8).contiguous())
        self.register_buffer("token_type", token_type.to(torch.int8).contiguous())
        self.register_buffer("position", position.to(torch.int8).contiguous())
        _set_parts(self, self.PARTS, parts)

    @classmethod
    def from_state(cls, tensors, prefix):
        return cls(*(tensors[prefix + t] for t in cls.TABLES), **_parts_from_state(cls.PARTS, tensors, prefix))

    def forward(self, be: Backend, input_ids, token_type_ids, position_ids):
        return be.embed(self, input_ids, token_type_ids, position_ids)


class IntLayer(nn.Module):
    """One encoder layer on integers; the part names say which simulation module each came from."""

    PARTS = {
        "query": IntLinear, "key": IntLinear, "value": IntLinear,
        "query_act": Requant, "key_act": Requant, "value_act": Requant,
        "softmax": SoftmaxConstants, "context_act": Requant,
        "attention_dense": IntLinear, "attention_add": ResidualRequant, "attention_ln": LayerNormConstants,
        "attention_out": Requant, "pre_intermediate": Requant,
        "intermediate": IntLinear, "gelu": GELUConstants, "gelu_act": Requant, "pre_output": Requant,
        "output_dense": IntLinear, "output_add": ResidualRequant, "output_ln": LayerNormConstants,
        "output_out": Requant,
    }

    def __init__(self, num_heads: int, **parts: nn.Module):
        super().__init__()
        self.num_heads = num_heads
        _set_parts(self, self.PARTS, parts)

    @classmethod
    def from_state(cls, num_heads, tensors, prefix):
        return cls(num_heads, **_parts_from_state(cls.PARTS, tensors, prefix))

    def forward(self, be: Backend, x, tokens: TokenLayout, output_attentions: bool = False):
        """int8 hidden states in the layout of ``tokens`` -> int8 hidden states (+ uint8 probabilities if asked)."""
        q, k, v = be.linear_requant_many(
            x, ((self.query, self.query_act), (self.key, self.key_act), (self.value, self.value_act)))
        probs = None
        if output_attentions:  # padded layout only (encode does not pack when probabilities are wanted)
            heads = [tokens.split_heads(t, self.num_heads) for t in (q, k, v)]
            context, probs = be.attention(*heads, tokens.keep, self.softmax)  # int32 (B, nh, L, d), uint8 (B, nh, L, L)
            context = be.requantize(tokens.merge_heads(context), self.context_act)
        else:
            context = be.attention_requant(q, k, v, tokens, self.num_heads, self.softmax, self.context_act)
        a = be.linear_residual_layernorm(context, self.attention_dense, x, self.attention_add, self.attention_ln,
                                         self.attention_out)
        a = be.requantize(a, self.pre_intermediate)
        i = be.linear_gelu_requant(a, self.intermediate, self.gelu, self.gelu_act, self.pre_output)
        out = be.linear_residual_layernorm(i, self.output_dense, a, self.output_add, self.output_ln, self.output_out)
        return out, probs


class IntegerIBertModel(nn.Module):
    """The integer encoder (+ the float pooler if the source had one), with IBertModel's forward contract."""

    def __init__(self, config: IBertConfig, embeddings: IntEmbeddings, layers: list[IntLayer],
                 pooler: nn.Module | None = None, backend: str | None = None):
        super().__init__()
        _check_shapes(config, embeddings, layers)
        self.config = config
        self.embeddings = embeddings
        self.layer = nn.ModuleList(layers)
        self.pooler = pooler
        self.backend_name = backend
        self._backends: dict = {}
        #: False: compute padded positions too, on every backend (what the ONNX graph computes; see padded()).
        self.pack_tokens = True

    @classmethod
    def from_state(cls, config: IBertConfig, tensors: dict, prefix: str = "", backend: str | None = None):
        """Rebuild the integer encoder from a saved state dict (shapes come from the tensors); no pooler yet."""
        embeddings = IntEmbeddings.from_state(tensors, prefix + "embeddings.")
        layers = [IntLayer.from_state(config.num_attention_heads, tensors, f"{prefix}layer.{i}.")
                  for i in range(config.num_hidden_layers)]
        return cls(config, embeddings, layers, None, backend)

    @property
    def device(self) -> torch.device:
        return self.embeddings.word.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what the float heads see

    def backend(self) -> Backend:
        """The backend for the current device: the one named at freeze/load, else chosen by device."""
        key = (self.backend_name, str(self.device))
        if key not in self._backends:
            self._backends[key] = resolve_backend(self.backend_name, self.device)
        return self._backends[key]

    @contextlib.contextmanager
    def padded(self):
        """Inside the block every position is computed, padded ones too, as the simulation and the ONNX
        graph do (a backend that packs tokens otherwise leaves them 0): for comparing per-token outputs."""
        before, self.pack_tokens = self.pack_tokens, False
        try:
            yield self
        finally:
            self.pack_tokens = before

    def set_backend(self, name: str | None) -> None:
        resolve_backend(name, self.device)  # fail now, with the reason, rather than at the next forward
        self.backend_name = name

    @torch.no_grad()
    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               output_hidden_states=False, output_attentions=False, backend: Backend | None = None):
        """Integer forward: int64 ids (+ 0/1 or bool mask) -> int8 hidden states (B, L, H).

        Returns (hidden int8, per-boundary int8 states or None, per-layer uint8 probabilities or None).
        A backend that packs tokens leaves padded positions (attention_mask 0) at 0 (``tokens.py``).
        Inputs must already be validated (``forward`` does it). ``backend``: run on this one instead of the
        model's; the ONNX exporter passes its graph backend (``backends.onnx_graph``), whose tensors are graph
        tensor names, so the graph it writes is this data path.
        """
        be = self.backend() if backend is None else backend
        if position_ids is None:
            position_ids = be.position_ids(input_ids, self.config.pad_token_id)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # Packed: only the real tokens are computed (tokens.py says why the integers do not change).
        pack = be.packs_tokens and self.pack_tokens and not output_attentions
        tokens = be.token_layout(input_ids, attention_mask, pack)
        h = self.embeddings(be, *(tokens.pack(t) for t in (input_ids, token_type_ids, position_ids)))
        states = [tokens.unpack(h)] if output_hidden_states else None
        probs_all = [] if output_attentions else None
        for layer in self.layer:
            h, probs = layer(be, h, tokens, output_attentions)
            if output_hidden_states:
                states.append(tokens.unpack(h))
            if output_attentions:
                probs_all.append(probs)
        return tokens.unpack(h), states, probs_all

    def boundary_scales(self) -> list[torch.Tensor]:
        """Scale of the embeddings' output and of each layer's output (to dequantize hidden states)."""
        return [self.embeddings.out.scale] + [layer.output_out.scale for layer in self.layer]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        if inputs_embeds is not None:
            raise ValueError("the frozen integer engine takes input_ids (its embeddings are int8 tables); "
                             "use the simulation model for inputs_embeds")
        if head_mask is not None:
            raise ValueError("head_mask is not supported by the frozen integer engine; prune heads before freezing "
                             "or use the simulation model")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_encoder_inputs(self.config, input_ids, None, attention_mask, token_type_ids, position_ids)
        device = self.device
        if input_ids.device != device:
            raise ValueError(f"input_ids are on {input_ids.device} but the model is on {device}; move them with .to()")
        move = (lambda t: None if t is None else t.to(device))
        q, states, probs = self.encode(input_ids, move(attention_mask), move(token_type_ids), move(position_ids),
                                       output_hidden_states, output_attentions)
        # Float from here on, exactly as the simulation: value = integers * scale (float32).
        h = q.to(torch.float32) * self.layer[-1].output_out.scale if len(self.layer) else (
            q.to(torch.float32) * self.embeddings.out.scale)
        all_hidden = None
        if output_hidden_states:
            all_hidden = tuple(s.to(torch.float32) * sc for s, sc in zip(states, self.boundary_scales()))
        all_attn = None
        if output_attentions:
            unit = 2.0 ** -self.layer[0].softmax.output_bit
            all_attn = tuple(p.to(torch.float32) * unit for p in probs)
        pooled = self.pooler(h) if self.pooler is not None else None
        if not return_dict:
            return tuple(v for v in (h, pooled, all_hidden, all_attn) if v is not None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=h, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn
        )
