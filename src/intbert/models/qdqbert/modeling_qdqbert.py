"""QDQBERT: BERT with fake quantization (QuantizeLinear/DequantizeLinear) at the places of Wu et al. 2020.

Read top to bottom: embeddings, self-attention, self-output, intermediate, output, layer, encoder, pooler, heads.
Module paths and state-dict keys are those of transformers' QDQBERT (removed in transformers 5.0), so BERT and old
QDQBERT checkpoints load unchanged. Quantized (all else, including embeddings, LayerNorm, GELU, softmax, the pooler
and every head, stays float):

* ``query``/``key``/``value``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``: ``QuantLinear``
  (``_input_quantizer`` and ``_weight_quantizer``);
* both attention matmuls: ``matmul_{q,k}_input_quantizer`` on ``Q @ K^T`` and ``matmul_{a,v}_input_quantizer`` on
  ``probs @ V``;
* both residual adds: ``add_local_input_quantizer`` (the block's branch) and ``add_residual_input_quantizer`` (the skip).

Differences from the transformers port, on purpose:

* the quantization descriptors come from the config (``QDQBertConfig.quant_desc_*``), not from global state;
* ``prune_heads`` keeps the quantizers (the port's ``prune_linear_layer`` returned a plain ``nn.Linear``);
* calibrated ``_amax`` buffers load with ``from_pretrained`` on any device (the port forced ``.cuda()``), see
  ``checkpoint.py``;
* eager attention only: the quantizers sit on the matmul inputs, which SDPA/flash kernels do not expose.

Quantizers run in dynamic mode until calibrated (each forward uses the tensor's own abs-max), so an uncalibrated
model is not FP32-equivalent, and incremental decoding only matches a full forward once the amax values are fixed.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from typing import NamedTuple

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import TransformersKwargs, can_return_tuple
from typing_extensions import Unpack

from intbert.models.common import (
    causal_lm_loss,
    check_attention_heads,
    choice_loss,
    flatten_choices,
    masked_lm_loss,
    num_choices,
    sequence_classification_loss,
    span_loss,
    token_classification_loss,
)
from intbert.models.qdqbert.checkpoint import register_checkpoint_amax
from intbert.models.qdqbert.configuration_qdqbert import QDQBertConfig
from intbert.quantization import QuantDescriptor, TensorQuantizer
from intbert.quantization.nn import QuantLinear


def quant_descriptors(config: QDQBertConfig) -> tuple[QuantDescriptor, QuantDescriptor]:
    """The (input, weight) descriptors of this model: the config's, else QuantLinear's class defaults.

    The defaults that were used are written back into the config, so ``save_pretrained`` records them and a reload
    does not depend on whatever ``QuantLinear.set_default_quant_desc_*`` says at that time.
    """
    if config.quant_desc_input is None:
        config.quant_desc_input = QuantLinear.default_quant_desc_input.to_dict()
    if config.quant_desc_weight is None:
        config.quant_desc_weight = QuantLinear.default_quant_desc_weight.to_dict()
    return QuantDescriptor.from_dict(config.quant_desc_input), QuantDescriptor.from_dict(config.quant_desc_weight)


def quant_linear(config: QDQBertConfig, in_features: int, out_features: int) -> QuantLinear:
    desc_input, desc_weight = quant_descriptors(config)
    return QuantLinear(in_features, out_features, quant_desc_input=desc_input, quant_desc_weight=desc_weight)


def activation_quantizer(config: QDQBertConfig) -> TensorQuantizer:
    return TensorQuantizer(quant_descriptors(config)[0])


def _smooth_scale(config: QDQBertConfig, channels: int) -> torch.Tensor | None:
    """The per-channel factor buffer of a smoothed model (ones until ``intbert.smooth`` or a checkpoint fills it);
    ``None`` otherwise, so an unsmoothed model has exactly BERT's state-dict keys."""
    return None if config.smoothing is None else torch.ones(channels)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings (float)


class QDQBertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout. Float: the first quantizer is in layer 0."""

    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # Not snake_case: the name is the state-dict key of every BERT checkpoint (from the TF variable name).
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_embedding_type = config.position_embedding_type
        # Non-persistent: BERT checkpoints saved by transformers 4.x may carry position_ids; they are ignored.
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )
        self.register_buffer("token_type_ids", torch.zeros_like(self.position_ids), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values_length: int = 0,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, seq_length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = self.position_ids[:, past_key_values_length : past_key_values_length + seq_length]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq_length].expand(batch_size, seq_length)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embedding_type == "absolute":
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


# ----------------------------------------------------------------------------------------------------------------------
# Attention


class QDQBertSelfAttention(nn.Module):
    """Multi-head attention with Q/DQ on the q/k/v projections and on both matmuls' inputs.

    ``scores = Qq(q) @ Qk(k^T) / sqrt(d) + mask``, ``context = Qa(softmax(scores)) @ Qv(v)``. Softmax, the scaling, the
    mask and the relative-position terms stay float, as in the reference.
    """

    def __init__(self, config: QDQBertConfig, is_cross_attention: bool = False, layer_idx: int | None = None):
        super().__init__()
        check_attention_heads(config)
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.is_cross_attention = is_cross_attention
        self.is_decoder = config.is_decoder
        self.layer_idx = layer_idx

        self.query = quant_linear(config, config.hidden_size, self.all_head_size)
        self.key = quant_linear(config, config.hidden_size, self.all_head_size)
        self.value = quant_linear(config, config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

        self.position_embedding_type = config.position_embedding_type
        if self.position_embedding_type in ("relative_key", "relative_key_query"):
            self.max_position_embeddings = config.max_position_embeddings
            # One vector per distance l - r in [-(P-1), P-1], indexed by distance + P - 1.
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.attention_head_size)

        self.matmul_q_input_quantizer = activation_quantizer(config)
        self.matmul_k_input_quantizer = activation_quantizer(config)
        self.matmul_v_input_quantizer = activation_quantizer(config)
        self.matmul_a_input_quantizer = activation_quantizer(config)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_length = x.shape[:2]
        # (B, S, H*d) -> (B, H, S, d)
        return x.view(batch_size, seq_length, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def _keys_values(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        past_key_values: Cache | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values, read from or appended to the cache when one is given."""
        if self.is_cross_attention:
            # Cross-attention keys depend only on the encoder output: computed at the first step, reused afterwards.
            if isinstance(past_key_values, EncoderDecoderCache) and past_key_values.is_updated.get(self.layer_idx):
                layer = past_key_values.cross_attention_cache.layers[self.layer_idx]
                return layer.keys, layer.values
            keys = self._split_heads(self.key(encoder_hidden_states))
            values = self._split_heads(self.value(encoder_hidden_states))
            if isinstance(past_key_values, EncoderDecoderCache):
                keys, values = past_key_values.cross_attention_cache.update(keys, values, self.layer_idx)
                past_key_values.is_updated[self.layer_idx] = True
            return keys, values
        keys = self._split_heads(self.key(hidden_states))
        values = self._split_heads(self.value(hidden_states))
        if past_key_values is not None:
            cache = (
                past_key_values.self_attention_cache
                if isinstance(past_key_values, EncoderDecoderCache)
                else past_key_values
            )
            keys, values = cache.update(keys, values, self.layer_idx)
        return keys, values

    def _relative_scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Shaw et al. 2018 / Huang et al. 2020 relative-position terms, (B, H, Q, K); queries are the last Q keys."""
        query_length, key_length = query.shape[2], keys.shape[2]
        positions_l = torch.arange(key_length - query_length, key_length, device=query.device).view(-1, 1)
        positions_r = torch.arange(key_length, device=query.device).view(1, -1)
        distance = positions_l - positions_r + self.max_position_embeddings - 1  # (Q, K) in [0, 2P-2]
        embedding = self.distance_embedding(distance).to(query.dtype)  # (Q, K, d)
        scores = torch.einsum("bhld,lrd->bhlr", query, embedding)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", keys, embedding)
        return scores

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the context (B, S, H*d) and the attention probabilities (B, H, Q, K)."""
        query = self._split_heads(self.query(hidden_states))  # (B, H, Q, d)
        keys, values = self._keys_values(hidden_states, encoder_hidden_states, past_key_values)  # (B, H, K, d)

        scores = torch.matmul(
            self.matmul_q_input_quantizer(query), self.matmul_k_input_quantizer(keys.transpose(-1, -2))
        )  # (B, H, Q, K)
        if self.position_embedding_type != "absolute" and not self.is_cross_attention:
            scores = scores + self._relative_scores(query, keys)
        scores = scores / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            scores = scores + attention_mask  # additive: 0 where visible, dtype-min where masked
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        if head_mask is not None:
            probs = probs * head_mask

        context = torch.matmul(self.matmul_a_input_quantizer(probs), self.matmul_v_input_quantizer(values))
        batch_size, _, query_length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch_size, query_length, self.all_head_size)  # (B, Q, H*d)
        return context, probs


class QDQBertSelfOutput(nn.Module):
    """dense -> dropout -> Q(local) + Q(residual) [-> * smooth_scale] -> LayerNorm. Dropout precedes the add quantizer:
    calibrate in eval.

    ``smooth_scale`` (only in a smoothed model, ``config.smoothing``; see ``intbert.smooth``): both addends arrive
    divided per channel by it (it is folded into the LayerNorm that made the skip input and into this block's
    ``dense`` rows), so both add quantizers see the smoothed values; the sum is multiplied back before LayerNorm.
    """

    def __init__(self, config: QDQBertConfig, in_features: int | None = None):
        super().__init__()
        self.dense = quant_linear(config, in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.add_local_input_quantizer = activation_quantizer(config)
        self.add_residual_input_quantizer = activation_quantizer(config)
        self.register_buffer("smooth_scale", _smooth_scale(config, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        local = self.dropout(self.dense(hidden_states))
        total = self.add_local_input_quantizer(local) + self.add_residual_input_quantizer(input_tensor)
        if self.smooth_scale is not None:
            total = total * self.smooth_scale  # (B, S, H) * (H,): the residual stream's true values again
        return self.LayerNorm(total)


def prune_quant_linear(layer: QuantLinear, index: torch.Tensor, dim: int) -> QuantLinear:
    """A QuantLinear keeping only ``index`` along ``dim`` of the weight (0: outputs, 1: inputs), quantizers included.

    A per-row weight amax (shape ``[out, 1]``) is indexed with the rows when outputs are pruned. A per-tensor amax,
    or any amax when inputs are pruned, stays valid (it can only over-estimate the remaining range), so it is kept.
    """
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    out_features, in_features = weight.shape
    pruned = QuantLinear(in_features, out_features, bias=layer.bias is not None)
    pruned.to(device=layer.weight.device, dtype=layer.weight.dtype)
    pruned.weight.data.copy_(weight)
    if layer.bias is not None:
        bias = layer.bias if dim == 1 else layer.bias.index_select(0, index)
        pruned.bias.data.copy_(bias.detach())
    pruned._input_quantizer = copy.deepcopy(layer._input_quantizer)
    pruned._weight_quantizer = copy.deepcopy(layer._weight_quantizer)
    amax = getattr(pruned._weight_quantizer, "_amax", None)
    if dim == 0 and amax is not None and amax.dim() > 0 and amax.shape[0] == layer.out_features:
        pruned._weight_quantizer._amax = amax.index_select(0, index).clone()
    return pruned


class QDQBertAttention(nn.Module):
    def __init__(self, config: QDQBertConfig, is_cross_attention: bool = False, layer_idx: int | None = None):
        super().__init__()
        # Attribute names ("self", "output") are the checkpoint's keys.
        self.self = QDQBertSelfAttention(config, is_cross_attention=is_cross_attention, layer_idx=layer_idx)
        self.output = QDQBertSelfOutput(config)
        self.pruned_heads: set[int] = set()

    def prune_heads(self, heads: set[int] | list[int]) -> None:
        """Remove whole heads from q/k/v (output rows) and output.dense (input columns); quantizers are kept."""
        heads = set(heads) - self.pruned_heads
        if not heads:
            return
        attention = self.self
        head_size = attention.attention_head_size
        # Heads already pruned shift the position of the remaining ones. Plain Python: under from_pretrained's
        # meta-device init a data-dependent op (nonzero) cannot run.
        drop = {head - sum(1 for pruned in self.pruned_heads if pruned < head) for head in heads}
        rows = [h * head_size + i for h in range(attention.num_attention_heads) if h not in drop for i in range(head_size)]
        index = torch.tensor(rows, dtype=torch.long, device=attention.query.weight.device)
        attention.query = prune_quant_linear(attention.query, index, dim=0)
        attention.key = prune_quant_linear(attention.key, index, dim=0)
        attention.value = prune_quant_linear(attention.value, index, dim=0)
        self.output.dense = prune_quant_linear(self.output.dense, index, dim=1)
        attention.num_attention_heads -= len(heads)
        attention.all_head_size = attention.num_attention_heads * head_size
        self.pruned_heads |= heads

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        context, probs = self.self(hidden_states, attention_mask, head_mask, encoder_hidden_states, past_key_values)
        return self.output(context, hidden_states), probs


# ----------------------------------------------------------------------------------------------------------------------
# Feed-forward


class QDQBertIntermediate(nn.Module):
    """QuantLinear(h -> intermediate) then the activation, in float (its output is what ``clip_gelu`` clamps).

    ``smooth_scale`` (smoothed models only): the activation's output is divided by it per channel before the next
    GEMM's input quantizer, whose weight columns carry the factor (a GELU cannot absorb it, so it is an explicit op,
    a multiplication by the reciprocal).
    """

    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.dense = quant_linear(config, config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.register_buffer("smooth_scale", _smooth_scale(config, config.intermediate_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.intermediate_act_fn(self.dense(hidden_states))
        if self.smooth_scale is not None:
            # (B, S, I) * (I,): a Mul by the reciprocal (a constant in the exported graph), cheaper than a Div there
            hidden_states = hidden_states * self.smooth_scale.reciprocal()
        return hidden_states


class QDQBertOutput(QDQBertSelfOutput):
    """The feed-forward block's output: the same Q/DQ pattern as QDQBertSelfOutput, from intermediate_size."""

    def __init__(self, config: QDQBertConfig):
        super().__init__(config, in_features=config.intermediate_size)


# ----------------------------------------------------------------------------------------------------------------------
# Layer and encoder


class LayerOutput(NamedTuple):
    """One layer's outputs. A tuple, not a dataclass: reentrant gradient checkpointing (``use_reentrant=True``) is an
    autograd Function, which connects only tensors returned directly or in a tuple; tensors inside a dataclass came
    back detached, and the encoder's gradients were silently None. The checkpoint turns the tuple into a plain one,
    so callers unpack it by position."""

    hidden_states: torch.Tensor
    self_attention: torch.Tensor
    cross_attention: torch.Tensor | None


class QDQBertLayer(GradientCheckpointingLayer):
    def __init__(self, config: QDQBertConfig, layer_idx: int | None = None):
        super().__init__()
        self.attention = QDQBertAttention(config, layer_idx=layer_idx)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            if not self.is_decoder:
                raise ValueError("add_cross_attention=True needs is_decoder=True in the config: set both")
            self.crossattention = QDQBertAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.intermediate = QDQBertIntermediate(config)
        self.output = QDQBertOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> LayerOutput:
        hidden_states, self_probs = self.attention(
            hidden_states, attention_mask, head_mask, past_key_values=past_key_values
        )
        cross_probs = None
        if self.is_decoder and encoder_hidden_states is not None:
            if not self.add_cross_attention:
                raise ValueError(
                    "encoder_hidden_states were passed, but this model has no cross-attention layers: "
                    "build it with config.add_cross_attention=True"
                )
            hidden_states, cross_probs = self.crossattention(
                hidden_states, encoder_attention_mask, head_mask, encoder_hidden_states, past_key_values
            )
        hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return LayerOutput(hidden_states, self_probs, cross_probs)


class QDQBertEncoder(nn.Module):
    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([QDQBertLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def _reported(self, hidden_states: torch.Tensor, i: int) -> torch.Tensor:
        """The hidden states entering layer ``i`` on their true values: a smoothed model carries them divided by that
        layer's ``attention.output.smooth_scale`` (intbert.smooth folds it into the LayerNorm that made them)."""
        factor = self.layer[i].attention.output.smooth_scale if i < len(self.layer) else None
        return hidden_states if factor is None else hidden_states * factor

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        all_hidden_states = (self._reported(hidden_states, 0),) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_cross = () if output_attentions and self.config.add_cross_attention else None
        for i, layer in enumerate(self.layer):
            hidden_states, self_probs, cross_probs = layer(
                hidden_states,
                attention_mask,
                head_mask[i] if head_mask is not None else None,
                encoder_hidden_states,
                encoder_attention_mask,
                past_key_values,
            )
            if output_hidden_states:
                all_hidden_states += (self._reported(hidden_states, i + 1),)
            if output_attentions:
                all_attentions += (self_probs,)
                if all_cross is not None:
                    all_cross += (cross_probs,)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            cross_attentions=all_cross,
        )


class QDQBertPooler(nn.Module):
    """tanh(Linear(first token)); float, as in the reference."""

    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


# ----------------------------------------------------------------------------------------------------------------------
# Pre-trained model plumbing and the base model


class QDQBertPreTrainedModel(PreTrainedModel):
    config_class = QDQBertConfig
    config: QDQBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    # Eager only: the quantizers sit on the matmul inputs, which fused attention kernels do not expose.
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["QDQBertEmbeddings", "QDQBertLayer"]
    # The heads' losses are per-batch means (models/common.py says why Trainer must know).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear / Embedding (padding row zero) / LayerNorm, as BERT
        if getattr(module, "smooth_scale", None) is not None:
            init.ones_(module.smooth_scale)
        if isinstance(module, QDQBertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, QDQBertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        # transformers 5 loads only keys that the model's state_dict() already has, so the `_amax` buffers of a
        # calibrated checkpoint (which an uncalibrated model lacks) would be dropped as "unexpected". Register them
        # first, with the checkpoint's shapes; the loader then fills them on the target device. Private hook of
        # transformers 5.x (modeling_utils.PreTrainedModel._load_pretrained_model); tests/test_qdqbert_checkpoints.py
        # fails if it changes.
        register_checkpoint_amax(model, state_dict=state_dict, checkpoint_files=checkpoint_files)
        result = PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs)
        # Workaround: a TensorQuantizer records the device a future amax goes to (`_device`) in `.to()`, and
        # QuantLinear moves its quantizers to the weight's device at construction, which from_pretrained does under
        # the meta device; the loader then assigns weights without `.to()`, so the record stays "meta" and the first
        # calibration would create amax buffers with no data. Point it at the loaded weights' device. Remove once
        # intbert.quantization places a new amax by the data it was computed from.
        parameter = next(model.parameters(), None)
        if parameter is not None and parameter.device.type != "meta":
            for module in model.modules():
                if isinstance(module, TensorQuantizer):
                    module._device = parameter.device
        return result

    def post_init(self) -> None:
        super().post_init()
        # The placement the config records (config.disabled_quantizers): a checkpoint calibrated without some
        # quantizers has no amax for them and must load with them off.
        patterns = [re.compile(p) for p in self.config.disabled_quantizers or ()]
        if patterns:
            for name, module in self.named_modules():
                if isinstance(module, TensorQuantizer) and any(p.search(name) for p in patterns):
                    module.disable()

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Prune heads per layer, ``{layer: [heads]}``, keeping every quantizer; recorded in ``config.pruned_heads``."""
        base = getattr(self, self.base_model_prefix, self)
        for layer, heads in heads_to_prune.items():
            if not 0 <= int(layer) < len(base.encoder.layer):
                raise ValueError(f"layer {layer} does not exist; the model has {len(base.encoder.layer)} layers")
            bad = [h for h in heads if not 0 <= h < self.config.num_attention_heads]
            if bad:
                raise ValueError(f"heads {bad} of layer {layer} are outside [0, {self.config.num_attention_heads})")
            merged = set(self.config.pruned_heads.get(int(layer), [])) | set(heads)
            if len(merged) >= self.config.num_attention_heads:
                raise ValueError(f"pruning {sorted(merged)} would remove every head of layer {layer}; keep one")
            self.config.pruned_heads[int(layer)] = sorted(merged)
            base.encoder.layer[int(layer)].attention.prune_heads(merged)


def _extended_mask(mask: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A 1/0 mask (B, K) or (B, Q, K) as an additive mask broadcastable to (B, H, Q, K): 0 keeps, dtype-min drops."""
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    else:
        raise ValueError(f"{name} must have shape (batch, key_length) or (batch, query_length, key_length), "
                         f"got {tuple(mask.shape)}")
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


def _causal_mask(batch_size: int, query_length: int, past_length: int, device, dtype) -> torch.Tensor:
    """(B, 1, Q, K) 1/0 mask where query i (absolute position past + i) sees keys 0 .. past + i."""
    key_positions = torch.arange(past_length + query_length, device=device)
    query_positions = torch.arange(past_length, past_length + query_length, device=device)
    causal = (key_positions[None, :] <= query_positions[:, None]).to(dtype)
    return causal[None, :, :].expand(batch_size, -1, -1)


def _as_cache(past_key_values) -> Cache | None:
    """Accept the legacy tuple format (per layer (k, v) or (k, v, cross_k, cross_v)) by wrapping it in a Cache."""
    if past_key_values is None or isinstance(past_key_values, Cache):
        return past_key_values
    if isinstance(past_key_values, (tuple, list)) and past_key_values:
        sizes = {len(layer) for layer in past_key_values}
        if sizes == {2}:
            return DynamicCache(past_key_values)
        if sizes == {4}:
            return EncoderDecoderCache(past_key_values)
    raise TypeError(
        "past_key_values must be a transformers Cache (DynamicCache / EncoderDecoderCache) or a tuple with one "
        f"(key, value) or (key, value, cross_key, cross_value) tuple per layer, got {type(past_key_values).__name__}"
    )


class QDQBertModel(QDQBertPreTrainedModel):
    """The bare encoder (or decoder, with ``config.is_decoder``); outputs BaseModelOutputWithPoolingAndCrossAttentions."""

    def __init__(self, config: QDQBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = QDQBertEmbeddings(config)
        self.encoder = QDQBertEncoder(config)
        self.pooler = QDQBertPooler(config) if add_pooling_layer else None
        for layer, heads in config.pruned_heads.items():  # a pruned checkpoint needs the pruned shapes to load
            self.encoder.layer[int(layer)].attention.prune_heads(heads)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, inputs_embeds, past_length: int) -> tuple[int, int]:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_length), got {tuple(input_ids.shape)}")
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
                raise ValueError(
                    f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got values in "
                    f"[{int(input_ids.min())}, {int(input_ids.max())}]; check the tokenizer matches the model"
                )
            batch_size, seq_length = input_ids.shape
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_length, {self.config.hidden_size}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            batch_size, seq_length = inputs_embeds.shape[:2]
        if past_length + seq_length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {past_length + seq_length} (past {past_length} + new {seq_length}) exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}; truncate the input"
            )
        return batch_size, seq_length

    def _head_mask(self, head_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """(H,) or (L, H) of 1 (keep) / 0 (drop) -> (L, 1, H, 1, 1), broadcast onto each layer's probabilities."""
        if head_mask is None:
            return None
        layers = self.config.num_hidden_layers
        if head_mask.dim() == 1:
            head_mask = head_mask[None].expand(layers, -1)
        if head_mask.dim() != 2 or head_mask.shape[0] != layers:
            raise ValueError(
                f"head_mask must have shape (num_heads,) or ({layers}, num_heads), got {tuple(head_mask.shape)}"
            )
        return head_mask[:, None, :, None, None].to(dtype)

    @can_return_tuple  # return_dict=False: the fields below in order, None ones dropped
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        cache_position: torch.Tensor | None = None,  # accepted for GenerationMixin; positions follow the cache length
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = (config.use_cache if use_cache is None else use_cache) and config.is_decoder

        past_key_values = _as_cache(past_key_values)
        if use_cache and past_key_values is None:
            past_key_values = (
                EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
                if encoder_hidden_states is not None
                else DynamicCache(config=config)
            )
        if not use_cache:
            past_key_values = None
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        batch_size, seq_length = self._check_inputs(input_ids, inputs_embeds, past_length)

        embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length)
        dtype, device = embedding_output.dtype, embedding_output.device

        key_length = past_length + seq_length
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, key_length, device=device)
        if attention_mask.shape[0] != batch_size or attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask must cover the past and the new tokens, (batch={batch_size}, {key_length}), "
                f"got {tuple(attention_mask.shape)}"
            )
        if config.is_decoder and attention_mask.dim() == 2:
            attention_mask = attention_mask[:, None, :].to(dtype) * _causal_mask(
                batch_size, seq_length, past_length, device, dtype
            )
        extended_mask = _extended_mask(attention_mask, dtype, "attention_mask")
        extended_encoder_mask = None
        if encoder_hidden_states is not None:
            if encoder_attention_mask is None:
                encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=device)
            extended_encoder_mask = _extended_mask(encoder_attention_mask, dtype, "encoder_attention_mask")

        encoder_outputs = self.encoder(
            embedding_output,
            attention_mask=extended_mask,
            head_mask=self._head_mask(head_mask, dtype),
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=extended_encoder_mask,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        sequence_output = encoder_outputs.last_hidden_state
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            past_key_values=past_key_values,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            cross_attentions=encoder_outputs.cross_attentions,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Heads (float, as in the reference)


class QDQBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class QDQBertLMPredictionHead(nn.Module):
    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.transform = QDQBertPredictionHeadTransform(config)
        # The decoder weight is tied to the word embeddings; the output-only bias lives here (key "predictions.bias")
        # and is tied to decoder.bias, so both checkpoint spellings load.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class QDQBertOnlyMLMHead(nn.Module):
    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.predictions = QDQBertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class QDQBertOnlyNSPHead(nn.Module):
    def __init__(self, config: QDQBertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled_output)


_MLM_TIED_WEIGHTS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}

# Every head below: the tensors a user passes are named arguments; ``**kwargs`` carries transformers' options
# (``output_attentions``, ``output_hidden_states``) on to QDQBertModel, which refuses any name it does not know;
# ``@can_return_tuple`` turns ``return_dict=False`` (or ``config.return_dict=False``) into BERT's tuple, the
# ModelOutput's fields in order with the absent (None) ones dropped: ``(loss, logits, hidden_states, attentions)``.
# The losses are shared with I-BERT (models/common.py).


def _encoder_options(kwargs: dict) -> dict:
    """The options QDQBertModel takes from what GenerationMixin hands the decoder's forward (it adds model kwargs
    of its own, which the decoder ignores, as transformers' does)."""
    return {k: kwargs[k] for k in ("output_attentions", "output_hidden_states") if k in kwargs}


class QDQBertLMHeadModel(QDQBertPreTrainedModel, GenerationMixin):
    """Causal LM (decoder): next-token logits; ``labels`` are shifted inside, as BertLMHeadModel does."""

    _tied_weights_keys = dict(_MLM_TIED_WEIGHTS)

    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        if not config.is_decoder:  # transformers' QDQBERT warned and built it (attending both ways): so do we
            warnings.warn("QDQBertLMHeadModel is meant as a causal decoder: build it with config.is_decoder=True "
                          "(without it, every token also attends to the tokens after it)", stacklevel=2)
        self.bert = QDQBertModel(config, add_pooling_layer=False)
        self.cls = QDQBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Cache | tuple | None = None,
        use_cache: bool | None = None,
        cache_position: torch.Tensor | None = None,  # GenerationMixin's; positions follow the cache length
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithCrossAttentions:
        """``labels``: the input ids (shifted inside), -100 where no loss applies."""
        outputs = self.bert(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values, use_cache=False if labels is not None else use_cache,
            return_dict=True, **_encoder_options(kwargs),
        )  # fmt: skip
        logits = self.cls(outputs.last_hidden_state)
        return CausalLMOutputWithCrossAttentions(
            loss=causal_lm_loss(logits, labels),
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )


class QDQBertForMaskedLM(QDQBertPreTrainedModel):
    _tied_weights_keys = dict(_MLM_TIED_WEIGHTS)

    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        if config.is_decoder:  # warned, not refused, as transformers' QDQBERT
            warnings.warn("QDQBertForMaskedLM is meant to attend both ways: build it with config.is_decoder=False "
                          "(with it, each token sees only the tokens before it)", stacklevel=2)
        self.bert = QDQBertModel(config, add_pooling_layer=False)
        self.cls = QDQBertOnlyMLMHead(config)
        self.post_init()

    get_output_embeddings = QDQBertLMHeadModel.get_output_embeddings
    set_output_embeddings = QDQBertLMHeadModel.set_output_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        """``labels``: token ids where the loss applies, -100 elsewhere."""
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            return_dict=True, **kwargs)
        logits = self.cls(outputs.last_hidden_state)
        return MaskedLMOutput(loss=masked_lm_loss(logits, labels), logits=logits,
                              hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class QDQBertForNextSentencePrediction(QDQBertPreTrainedModel):
    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        self.bert = QDQBertModel(config)
        self.cls = QDQBertOnlyNSPHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> NextSentencePredictorOutput:
        """``labels``: 0 if sentence B follows sentence A, 1 if B is random."""
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            return_dict=True, **kwargs)
        logits = self.cls(outputs.pooler_output)  # (B, 2)
        return NextSentencePredictorOutput(loss=choice_loss(logits, labels), logits=logits,
                                           hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class QDQBertForSequenceClassification(QDQBertPreTrainedModel):
    """Pooled output -> dropout -> Linear(num_labels); regression, single- or multi-label by ``problem_type``."""

    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = QDQBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)
        return SequenceClassifierOutput(loss=sequence_classification_loss(logits, labels, self.config), logits=logits,
                                        hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class QDQBertForMultipleChoice(QDQBertPreTrainedModel):
    """Inputs (batch, num_choices, seq); each choice is encoded separately and scored by Linear(h, 1)."""

    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        self.bert = QDQBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultipleChoiceModelOutput:
        """``labels``: (batch,) index of the right choice."""
        choices = num_choices(input_ids, inputs_embeds)
        flat = flatten_choices
        outputs = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids), head_mask,
                            flat(inputs_embeds), return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, choices)  # (B, C)
        return MultipleChoiceModelOutput(loss=choice_loss(logits, labels), logits=logits,
                                         hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class QDQBertForTokenClassification(QDQBertPreTrainedModel):
    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = QDQBertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        """``labels``: (batch, seq) label ids, -100 where no loss applies."""
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, L, num_labels)
        return TokenClassifierOutput(loss=token_classification_loss(logits, labels), logits=logits,
                                     hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class QDQBertForQuestionAnswering(QDQBertPreTrainedModel):
    """Span extraction: ``qa_outputs`` gives start and end logits per token."""

    def __init__(self, config: QDQBertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"question answering needs config.num_labels=2 (start, end), got {config.num_labels}")
        self.bert = QDQBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> QuestionAnsweringModelOutput:
        """Positions outside the sequence are clamped to ``seq_length`` and ignored by the loss, as in BERT."""
        outputs = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                            return_dict=True, **kwargs)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        return QuestionAnsweringModelOutput(
            loss=span_loss(start_logits, end_logits, start_positions, end_positions),
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "QDQBertPreTrainedModel",
    "QDQBertModel",
    "QDQBertLayer",
    "QDQBertLMHeadModel",
    "QDQBertForMaskedLM",
    "QDQBertForNextSentencePrediction",
    "QDQBertForSequenceClassification",
    "QDQBertForMultipleChoice",
    "QDQBertForTokenClassification",
    "QDQBertForQuestionAnswering",
    "quant_descriptors",
    "prune_quant_linear",
]
