"""I-BERT: RoBERTa with integer-only arithmetic (Kim et al. 2021, arXiv 2101.01321).

The module tree, attribute names (= state-dict keys) and forward contracts follow
transformers' I-BERT port so its checkpoints load. Every quantized module returns
``(value, scaling_factor)``; in quant mode value = integers * scale with exact integers (see
quant_modules). Differences from the transformers port (see docs/ibert.md):
(a) each layer receives the scale of the previous layer's output (tf#26738);
(b) the position add uses ``embeddings_act2`` (the port reuses ``embeddings_act1``);
(c) ``inputs_embeds`` keeps the token-type embeddings in quant mode;
boolean attention masks (masked positions get probability 0) instead of a -3.4e38 additive mask.

Shape comments: B batch, L sequence, H hidden, nh heads, d head size, I intermediate.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import gelu
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import TransformersKwargs, can_return_tuple
from typing_extensions import Unpack

from ..common import (
    check_attention_heads,
    choice_loss,
    flatten_choices,
    masked_lm_loss,
    num_choices,
    sequence_classification_loss,
    span_loss,
    token_classification_loss,
)
from .configuration_ibert import IBertConfig
from .quant_modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantEmbedding,
    QuantLinear,
    attach_ints,
    int_bits_of,
    ints_of,
    straight_through,
)
from ...quantization import intops

# Bit widths of the reference model (quant_modules docstrings give the integer bounds).
WEIGHT_BITS = 8  # the embedding tables; the encoder's linears use config.weight_bit (default 8)
BIAS_BITS = 32
ACT_BITS = 8  # every activation that feeds a GEMM
EMBEDDING_ACT_BITS = 16  # the embedding sums
LN_INPUT_BITS = intops.LN_INPUT_BITS  # 22: residual adds before LayerNorm
LN_OUTPUT_BITS = 32  # the reference's (unused) LayerNorm output activation
SOFTMAX_OUTPUT_BITS = 8


def create_position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int, past_key_values_length: int = 0):
    """RoBERTa positions: padding_idx + 1, +2, ... over non-pad tokens; pad tokens keep padding_idx."""
    mask = input_ids.ne(padding_idx).int()
    incremental = (torch.cumsum(mask, dim=1).type_as(mask) + past_key_values_length) * mask
    return incremental.long() + padding_idx


def _quant_linear(config: IBertConfig, in_features: int, out_features: int) -> QuantLinear:
    """Every encoder linear: config.weight_bit (default 8) per-output-channel weights, 32-bit bias."""
    return QuantLinear(in_features, out_features, bias=True, weight_bit=config.weight_bit, bias_bit=BIAS_BITS,
                       per_channel=True, quant_mode=config.quant_mode)


def _dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    # Skipped outside training so the exact integers attached to x survive (dropout is the identity there).
    return module(x) if module.training and module.p > 0 else x


class IBertEmbeddings(nn.Module):
    """word + token type (16-bit sum) + position (16-bit sum) -> LayerNorm -> 8-bit."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.quant_mode = config.quant_mode
        self.embedding_bit = WEIGHT_BITS
        self.embedding_act_bit = EMBEDDING_ACT_BITS
        self.act_bit = ACT_BITS
        self.ln_input_bit = LN_INPUT_BITS
        self.ln_output_bit = LN_OUTPUT_BITS

        self.word_embeddings = QuantEmbedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id,
            weight_bit=self.embedding_bit, quant_mode=self.quant_mode,
        )
        self.token_type_embeddings = QuantEmbedding(
            config.type_vocab_size, config.hidden_size, weight_bit=self.embedding_bit, quant_mode=self.quant_mode
        )
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )
        self.position_embedding_type = config.position_embedding_type
        self.padding_idx = config.pad_token_id
        self.position_embeddings = QuantEmbedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx,
            weight_bit=self.embedding_bit, quant_mode=self.quant_mode,
        )
        self.embeddings_act1 = QuantAct(self.embedding_act_bit, quant_mode=self.quant_mode)
        self.embeddings_act2 = QuantAct(self.embedding_act_bit, quant_mode=self.quant_mode)
        # "LayerNorm" (not snake_case) keeps the checkpoint key names.
        self.LayerNorm = IntLayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, output_bit=self.ln_output_bit,
            quant_mode=self.quant_mode, force_dequant=config.force_dequant,
        )
        self.output_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_key_values_length=0):
        if position_ids is None:
            if input_ids is not None:
                position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx, past_key_values_length)
            else:
                position_ids = self.create_position_ids_from_inputs_embeds(inputs_embeds)
        input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if token_type_ids is None:
            token_type_ids = torch.zeros(input_shape, dtype=torch.long, device=position_ids.device)

        if inputs_embeds is None:
            inputs_embeds, s_words = self.word_embeddings(input_ids)  # (B, L, H) int8 @ S_w
        else:
            s_words = None  # float embeddings: QuantAct quantizes them from float
        token_types, s_types = self.token_type_embeddings(token_type_ids)
        h, s = self.embeddings_act1(inputs_embeds, s_words, identity=token_types, identity_scaling_factor=s_types)
        if self.position_embedding_type == "absolute":
            positions, s_pos = self.position_embeddings(position_ids)
            h, s = self.embeddings_act2(h, s, identity=positions, identity_scaling_factor=s_pos)  # int16 @ S_a2
        h, s = self.LayerNorm(h, s)  # int32 @ S_ln[c]
        h = _dropout(self.dropout, h)
        return self.output_activation(h, s)  # int8 @ S_e

    def create_position_ids_from_inputs_embeds(self, inputs_embeds):
        """Sequential positions padding_idx+1 ... (no padding can be detected from embeddings)."""
        B, L = inputs_embeds.shape[:2]
        ids = torch.arange(self.padding_idx + 1, L + self.padding_idx + 1, dtype=torch.long, device=inputs_embeds.device)
        return ids.unsqueeze(0).expand(B, L)


class IBertSelfAttention(nn.Module):
    """Q, K, V (8-bit) -> integer scores -> i-softmax (8-bit) -> integer P.V -> 8-bit context."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        check_attention_heads(config)
        self.quant_mode = config.quant_mode
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.weight_bit, self.bias_bit, self.act_bit = config.weight_bit, BIAS_BITS, ACT_BITS

        self.query, self.key, self.value = (_quant_linear(config, config.hidden_size, self.all_head_size)
                                            for _ in range(3))
        self.query_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.key_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.value_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.output_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.softmax = IntSoftmax(SOFTMAX_OUTPUT_BITS, quant_mode=self.quant_mode, force_dequant=config.force_dequant)

    def heads(self, x):  # (B, L, H) -> (B, nh, L, d)
        B, L = x.shape[:2]
        return x.view(B, L, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states, hidden_states_scaling_factor, attention_mask=None, head_mask=None, output_attentions=False):
        s_in = hidden_states_scaling_factor
        q, s_q = self.query_activation(*self.query(hidden_states, s_in))
        k, s_k = self.key_activation(*self.key(hidden_states, s_in))
        v, s_v = self.value_activation(*self.value(hidden_states, s_in))
        q, k, v = self.heads(q), self.heads(k), self.heads(v)  # (B, nh, L, d) int8

        # The 1/sqrt(d) goes into the score scale, never into the integers.
        sqrt_d = math.sqrt(self.attention_head_size)
        if self.quant_mode:
            s_scores = s_q * s_k / sqrt_d
            scores, _ = int_matmul_value(q, k.transpose(-1, -2), s_q, s_k, s_scores)  # |.| <= d*128*128
        else:
            scores, s_scores = torch.matmul(q, k.transpose(-1, -2)) / sqrt_d, None
        probs, s_probs = self.softmax(scores, s_scores, mask=attention_mask)  # (B, nh, L, L) uint8 @ 2^-8
        probs = _dropout(self.dropout, probs)
        if head_mask is not None:
            probs = probs * head_mask

        B, nh, L, d = v.shape
        if s_probs is not None:  # integer P.V, |.| <= L*255*128
            s_context = s_probs * s_v
            context, q_context = int_matmul_value(probs, v, s_probs, s_v, s_context, a_bound=256)
            context = context.transpose(1, 2).reshape(B, L, nh * d)
            attach_ints(context, q_context.transpose(1, 2).reshape(B, L, nh * d))
        else:  # force_dequant softmax: float probabilities, requantized from float by output_activation
            context, s_context = torch.matmul(probs, v).transpose(1, 2).reshape(B, L, nh * d), None
        context, s_context = self.output_activation(context, s_context)  # (B, L, H) int8
        return context, s_context, (probs if output_attentions else None)


def int_matmul_value(a, b, s_a, s_b, s_out, a_bound=128, b_bound=128):
    """a @ b on the exact integers of two simulated tensors -> (value = ints * s_out, ints).

    The value's gradient is that of the float matmul (straight-through); its integers are attached.
    """
    with torch.no_grad():
        q = intops.int_matmul(ints_of(a, s_a), ints_of(b, s_b), a_bound, b_bound)
    value = q.to(a.dtype) * s_out
    reference = None
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        reference = torch.matmul(a, b) * (s_out / (s_a * s_b))
    return attach_ints(straight_through(value, reference), q), q


def _smooth_scale(config: IBertConfig, channels: int) -> torch.Tensor | None:
    """The per-channel factor buffer of a smoothed model (ones until ``intbert.smooth`` or a checkpoint fills it);
    ``None`` otherwise, so an unsmoothed model keeps the port's state-dict keys."""
    return None if config.smoothing is None else torch.ones(channels)


def _unsmooth(x, scale, smooth_scale):
    """The skip input of a smoothed model back on its true values: value x * s_c on the same integers, scale S * s_c.

    The integers are untouched (the residual add's per-channel dyadic requantization absorbs s), so the integer
    engine gets per-channel multipliers and no new operation.
    """
    if smooth_scale is None:
        return x, scale
    if scale is None:  # float mode
        return x * smooth_scale, None
    return attach_ints(x * smooth_scale, ints_of(x, scale), int_bits_of(x)), scale * smooth_scale


class _DenseResidualLayerNorm(nn.Module):
    """dense (in_features -> H) -> + residual (22-bit) -> integer LayerNorm -> 8-bit; IBertSelfOutput and IBertOutput.

    ``smooth_scale`` (smoothed models only, see ``intbert.smooth``): the residual input arrives divided per channel
    by it (folded into the LayerNorm that made it, so its 8-bit grid is finer); the add reads it at scale S * s.
    """

    def __init__(self, config: IBertConfig, in_features: int):
        super().__init__()
        self.quant_mode = config.quant_mode
        self.act_bit, self.weight_bit, self.bias_bit = ACT_BITS, config.weight_bit, BIAS_BITS
        self.ln_input_bit, self.ln_output_bit = LN_INPUT_BITS, LN_OUTPUT_BITS
        self.dense = _quant_linear(config, in_features, config.hidden_size)
        self.ln_input_act = QuantAct(self.ln_input_bit, quant_mode=self.quant_mode)
        self.LayerNorm = IntLayerNorm(config.hidden_size, eps=config.layer_norm_eps, output_bit=self.ln_output_bit,
                                      quant_mode=self.quant_mode, force_dequant=config.force_dequant)
        self.output_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("smooth_scale", _smooth_scale(config, config.hidden_size))

    def forward(self, hidden_states, hidden_states_scaling_factor, input_tensor, input_tensor_scaling_factor):
        h, s = self.dense(hidden_states, hidden_states_scaling_factor)  # int32 @ S_x*S_w[c]
        h = _dropout(self.dropout, h)
        identity, s_id = _unsmooth(input_tensor, input_tensor_scaling_factor, self.smooth_scale)  # int8 @ S_in[*s_c]
        h, s = self.ln_input_act(h, s, identity=identity, identity_scaling_factor=s_id)
        h, s = self.LayerNorm(h, s)  # int32 @ S_ln[c]
        return self.output_activation(h, s)  # int8


class IBertSelfOutput(_DenseResidualLayerNorm):
    def __init__(self, config: IBertConfig):
        super().__init__(config, config.hidden_size)


class IBertAttention(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.quant_mode = config.quant_mode
        self.self = IBertSelfAttention(config)
        self.output = IBertSelfOutput(config)

    def forward(self, hidden_states, hidden_states_scaling_factor, attention_mask=None, head_mask=None, output_attentions=False):
        context, s_context, probs = self.self(
            hidden_states, hidden_states_scaling_factor, attention_mask, head_mask, output_attentions
        )
        out, s_out = self.output(context, s_context, hidden_states, hidden_states_scaling_factor)
        return out, s_out, probs


class IBertIntermediate(nn.Module):
    """dense (H -> I) -> i-GELU -> 8-bit.

    ``smooth_scale`` (smoothed models only): the i-GELU output is divided by it per channel before its 8-bit
    quantization (the next GEMM's weight columns carry the factor). On integers this is only another per-channel
    scale, S_gelu[c] / s_c, which the 8-bit requantization's per-channel dyadic multiplier absorbs.
    """

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.quant_mode = config.quant_mode
        self.act_bit, self.weight_bit, self.bias_bit = ACT_BITS, config.weight_bit, BIAS_BITS
        self.dense = _quant_linear(config, config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = IntGELU(quant_mode=self.quant_mode, force_dequant=config.force_dequant)
        self.output_activation = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.register_buffer("smooth_scale", _smooth_scale(config, config.intermediate_size))

    def forward(self, hidden_states, hidden_states_scaling_factor):
        h, s = self.dense(hidden_states, hidden_states_scaling_factor)  # (B, L, I) int32
        h, s = self.intermediate_act_fn(h, s)  # int64 (up to ~2^44) @ S_gelu[c]
        if self.smooth_scale is not None:
            h, s = _unsmooth(h, s, 1.0 / self.smooth_scale)  # same integers @ S_gelu[c] / s_c
        return self.output_activation(h, s)  # int8


class IBertOutput(_DenseResidualLayerNorm):
    def __init__(self, config: IBertConfig):
        super().__init__(config, config.intermediate_size)


class IBertLayer(nn.Module):
    """attention -> 8-bit requant (FFN residual) -> intermediate -> 8-bit requant -> output."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.quant_mode = config.quant_mode
        self.act_bit = ACT_BITS
        self.seq_len_dim = 1
        self.attention = IBertAttention(config)
        self.intermediate = IBertIntermediate(config)
        self.output = IBertOutput(config)
        self.pre_intermediate_act = QuantAct(self.act_bit, quant_mode=self.quant_mode)
        self.pre_output_act = QuantAct(self.act_bit, quant_mode=self.quant_mode)

    def forward(self, hidden_states, hidden_states_scaling_factor, attention_mask=None, head_mask=None, output_attentions=False):
        a, s_a, probs = self.attention(hidden_states, hidden_states_scaling_factor, attention_mask, head_mask, output_attentions)
        a, s_a = self.pre_intermediate_act(a, s_a)
        i, s_i = self.pre_output_act(*self.intermediate(a, s_a))
        out, s_out = self.output(i, s_i, a, s_a)
        return out, s_out, probs


class IBertEncoder(nn.Module):
    def __init__(self, config: IBertConfig):
        super().__init__()
        self.config = config
        self.quant_mode = config.quant_mode
        self.layer = nn.ModuleList([IBertLayer(config) for _ in range(config.num_hidden_layers)])

    def _reported(self, hidden_states, s, i: int):
        """The hidden states entering layer ``i`` on their true values: a smoothed model carries them divided by
        that layer's ``attention.output.smooth_scale`` (intbert.smooth); integers * (S * s_c), as the engine does."""
        factor = self.layer[i].attention.output.smooth_scale if i < len(self.layer) else None
        if factor is None:
            return hidden_states
        if s is None:
            return hidden_states * factor
        return ints_of(hidden_states, s).to(hidden_states.dtype) * (s * factor)

    def forward(self, hidden_states, hidden_states_scaling_factor, attention_mask=None, head_mask=None,
                output_attentions=False, output_hidden_states=False):
        s = hidden_states_scaling_factor
        all_hidden = (self._reported(hidden_states, s, 0),) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for i, layer in enumerate(self.layer):
            # Each layer gets the scale of the previous layer's output (fix (a), tf#26738: the port
            # passes the embeddings' scale to every layer).
            hidden_states, s, probs = layer(
                hidden_states, s, attention_mask, None if head_mask is None else head_mask[i], output_attentions
            )
            if output_hidden_states:
                all_hidden = all_hidden + (self._reported(hidden_states, s, i + 1),)
            if output_attentions:
                all_attn = all_attn + (probs,)
        return hidden_states, s, all_hidden, all_attn


class IBertPooler(nn.Module):
    """Float: tanh(W h_<s> + b), as the reference."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.quant_mode = config.quant_mode
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


def check_encoder_inputs(config: IBertConfig, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids):
    """Refuse bad input with a message that names the fix (one host sync, before any compute); returns (B, L).

    Shared by the simulation and the frozen integer engine."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, sequence), got shape {tuple(input_ids.shape)}")
        # uint8 / bool ids would index the tables as masks; int16 is not a torch index type either.
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"input_ids must be int64 (or int32) token ids, got {input_ids.dtype}: "
                             "convert with input_ids.long()")
        shape = tuple(input_ids.shape)
        if shape[1] == 0:
            raise ValueError("input_ids has sequences of length 0: every sequence needs at least one token")
        vocab = config.vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise ValueError(
                f"input_ids must lie in [0, {vocab}) (config.vocab_size), got values "
                f"{int(input_ids.min())}..{int(input_ids.max())}; check the tokenizer matches the model"
            )
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be (batch, sequence, {config.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        shape = tuple(inputs_embeds.shape[:2])
    longest = config.max_position_embeddings - (config.pad_token_id or 0) - 1
    if position_ids is None and shape[1] > longest:
        raise ValueError(
            f"sequence length {shape[1]} exceeds the position table ({config.max_position_embeddings} "
            f"positions, the first {(config.pad_token_id or 0) + 1} reserved): truncate to {longest} tokens"
        )
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} like the input, got {tuple(t.shape)}")
    # Both bounds: a negative id would index from the end in the engine's tables (-1 = the last row), silently.
    for name, t, size, field in (("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size"),
                                 ("position_ids", position_ids, config.max_position_embeddings,
                                  "max_position_embeddings")):
        if t is not None and t.numel():
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= size:
                raise ValueError(f"{name} must lie in [0, {size}) (config.{field}), got values {lo}..{hi}")
    return shape



class IBertPreTrainedModel(PreTrainedModel):
    config_class = IBertConfig
    base_model_prefix = "ibert"
    supports_gradient_checkpointing = False
    # 2021-era checkpoints stored position_ids as a persistent buffer.
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]
    # The heads' losses are per-batch means (models/common.py says why Trainer must know).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        # transformers' ``init`` functions skip tensors a checkpoint already filled, so a module with one missing
        # tensor keeps its loaded others (a raw ``normal_`` re-randomised a loaded decoder weight). The integer
        # caches are zeroed too (the port's fix): they are recomputed at the first forward, but a save before it
        # wrote whatever memory they were allocated in (seen: -2.25e12).
        std = self.config.initializer_range
        if isinstance(module, (QuantLinear, nn.Linear)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
            if isinstance(module, QuantLinear):
                init.zeros_(module.weight_integer)
                init.zeros_(module.fc_scaling_factor)
                if module.bias_integer is not None:
                    init.zeros_(module.bias_integer)
        elif isinstance(module, (QuantEmbedding, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
            if isinstance(module, QuantEmbedding):
                init.zeros_(module.weight_scaling_factor)
                init.zeros_(module.weight_integer)
        elif isinstance(module, (IntLayerNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, IntLayerNorm):
                init.zeros_(module.shift)
        elif isinstance(module, QuantAct):
            init.constant_(module.x_min, -1e-5)  # quant_modules.RANGE_SENTINEL: "never calibrated"
            init.constant_(module.x_max, 1e-5)
            init.zeros_(module.act_scaling_factor)
            module._calibrated = None
        elif isinstance(module, IBertLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, IBertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        if getattr(module, "smooth_scale", None) is not None:
            module.smooth_scale.fill_(1.0)

    def resize_token_embeddings(self, *args, **kwargs):
        raise NotImplementedError("I-BERT's QuantEmbedding does not support resizing the vocabulary")


class IBertModel(IBertPreTrainedModel):
    """The bare I-BERT encoder: embeddings -> layers -> (float) pooler."""

    def __init__(self, config: IBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.config = config
        self.quant_mode = config.quant_mode
        self.embeddings = IBertEmbeddings(config)
        self.encoder = IBertEncoder(config)
        self.pooler = IBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    @can_return_tuple  # return_dict=False: (last_hidden_state, pooler_output, hidden_states, attentions), None dropped
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,  # the port's signature; an encoder only, so these four are ignored
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        B, L = check_encoder_inputs(self.config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids)
        device = input_ids.device if input_ids is not None else inputs_embeds.device

        # Boolean (B, 1, 1, L) mask, True = attend: masked keys get probability exactly 0.
        keep = None if attention_mask is None else attention_mask.to(device).bool()[:, None, None, :]
        head_mask = self._head_mask(head_mask)

        h, s = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                               inputs_embeds=inputs_embeds)
        h, s, all_hidden, all_attn = self.encoder(h, s, keep, head_mask, output_attentions, output_hidden_states)
        pooled = self.pooler(h) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=h, pooler_output=pooled, hidden_states=all_hidden, attentions=all_attn
        )

    def _head_mask(self, head_mask):
        """(nh,) or (layers, nh) of 0/1 -> per layer (1, nh, 1, 1), or None."""
        if head_mask is None:
            return None
        if head_mask.dim() == 1:
            head_mask = head_mask.expand(self.config.num_hidden_layers, -1)
        return head_mask[:, None, :, None, None].to(self.dtype)


class IBertLMHead(nn.Module):
    """Float: dense -> gelu -> LayerNorm -> decoder (+ its bias).

    With ``tie_word_embeddings`` (the default) transformers ties the decoder to the word embeddings and
    ``decoder.bias`` to ``bias`` (``_tied_weights_keys``); without it the decoder keeps its own weight and bias,
    as in transformers' RoBERTa and I-BERT. The old hard tie ``decoder.bias = bias`` saved one bias under one name
    only, so an untied model reloaded with a missing ``decoder.bias`` and a re-randomised decoder.
    """

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, features):
        return self.decoder(self.layer_norm(gelu(self.dense(features))))


class IBertClassificationHead(nn.Module):
    """Float: <s> token -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, config: IBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features):
        x = self.dropout(features[:, 0, :])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


# Every head below: the tensors a user passes are named arguments (in the port's order); ``**kwargs`` carries
# transformers' options (``output_attentions``, ``output_hidden_states``) on to the encoder (IBertModel, or the
# frozen engine's IntegerIBertModel: hence keywords, not positions); ``@can_return_tuple`` turns
# ``return_dict=False`` (or ``config.return_dict=False``) into the port's tuple, the ModelOutput's fields in order
# with the absent (None) ones dropped: ``(loss, logits, hidden_states, attentions)``. The losses are shared with
# QDQBERT (models/common.py).


class IBertForMaskedLM(IBertPreTrainedModel):
    _tied_weights_keys = {
        "lm_head.decoder.weight": "ibert.embeddings.word_embeddings.weight$",  # $: not weight_integer / weight_scaling_factor
        "lm_head.decoder.bias": "lm_head.bias",
    }

    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.lm_head = IBertLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, **kwargs: Unpack[TransformersKwargs]) -> MaskedLMOutput:
        """``labels``: token ids where the loss applies, -100 elsewhere."""
        out = self.ibert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                         return_dict=True, **kwargs)
        logits = self.lm_head(out.last_hidden_state)  # (B, L, V)
        return MaskedLMOutput(loss=masked_lm_loss(logits, labels), logits=logits, hidden_states=out.hidden_states,
                              attentions=out.attentions)


class IBertForSequenceClassification(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.classifier = IBertClassificationHead(config)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, **kwargs: Unpack[TransformersKwargs]) -> SequenceClassifierOutput:
        out = self.ibert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                         return_dict=True, **kwargs)
        logits = self.classifier(out.last_hidden_state)  # (B, num_labels)
        return SequenceClassifierOutput(loss=sequence_classification_loss(logits, labels, self.config), logits=logits,
                                        hidden_states=out.hidden_states, attentions=out.attentions)


class IBertForMultipleChoice(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.ibert = IBertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None, position_ids=None,
                head_mask=None, inputs_embeds=None, **kwargs: Unpack[TransformersKwargs]) -> MultipleChoiceModelOutput:
        """Inputs (B, C, L); ``labels``: (B,) index of the right choice."""
        choices = num_choices(input_ids, inputs_embeds)
        flat = flatten_choices
        out = self.ibert(flat(input_ids), attention_mask=flat(attention_mask), token_type_ids=flat(token_type_ids),
                         position_ids=flat(position_ids), head_mask=head_mask, inputs_embeds=flat(inputs_embeds),
                         return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, choices)  # (B, C)
        return MultipleChoiceModelOutput(loss=choice_loss(logits, labels), logits=logits,
                                         hidden_states=out.hidden_states, attentions=out.attentions)


class IBertForTokenClassification(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, **kwargs: Unpack[TransformersKwargs]) -> TokenClassifierOutput:
        """``labels``: (B, L) label ids, -100 where no loss applies."""
        out = self.ibert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                         return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, L, num_labels)
        return TokenClassifierOutput(loss=token_classification_loss(logits, labels), logits=logits,
                                     hidden_states=out.hidden_states, attentions=out.attentions)


class IBertForQuestionAnswering(IBertPreTrainedModel):
    def __init__(self, config: IBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ibert = IBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None,
                **kwargs: Unpack[TransformersKwargs]) -> QuestionAnsweringModelOutput:
        """Positions outside the sequence are clamped to its length and ignored by the loss, as in BERT."""
        out = self.ibert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                         return_dict=True, **kwargs)
        start_logits, end_logits = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)  # (B, L, 1) each
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        return QuestionAnsweringModelOutput(loss=span_loss(start_logits, end_logits, start_positions, end_positions),
                                            start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=out.hidden_states, attentions=out.attentions)


__all__ = [
    "IBertForMaskedLM",
    "IBertForMultipleChoice",
    "IBertForQuestionAnswering",
    "IBertForSequenceClassification",
    "IBertForTokenClassification",
    "IBertModel",
    "IBertPreTrainedModel",
]
