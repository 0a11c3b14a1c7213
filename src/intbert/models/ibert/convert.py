"""Convert a BERT checkpoint (e.g. all-MiniLM-L6-v2) to I-BERT.

BERT and I-BERT share every weight name; they differ in positions. BERT numbers tokens 0, 1, 2, ...
while I-BERT (RoBERTa) numbers them padding_idx + 1, + 2, ... and gives pad tokens padding_idx. With
padding_idx = 0 (BERT's pad id), BERT position p becomes I-BERT row p + 1: the table is shifted down
one row, a zero row 0 is added for padding, and max_position_embeddings grows by one. Non-pad tokens
then see exactly BERT's embeddings; pad tokens (masked out of attention) see the zero row.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from ..loading import load_float_checkpoint
from .configuration_ibert import IBertConfig
from .modeling_ibert import IBertModel

# Transformers' BERT keys with no I-BERT counterpart (buffers, not weights).
_IGNORED_BERT_KEYS = ("embeddings.position_ids",)


def ibert_config_from_bert(config: BertConfig, **overrides) -> IBertConfig:
    if config.hidden_act != "gelu":
        raise ValueError(f"only GELU BERTs convert to I-BERT (i-GELU), this one uses {config.hidden_act!r}")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings convert to I-BERT")
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings + 1,
        type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    fields.update(overrides)
    return IBertConfig(**fields)


def bert_to_ibert(bert: BertModel | str | Path, **config_overrides) -> IBertModel:
    """An ``IBertModel`` with the weights of a BERT model (or a local BERT checkpoint folder).

    ``config_overrides`` go to IBertConfig, e.g. ``quant_mode=True``. Every tensor is checked for its
    key and shape, as nanoGPT's from_pretrained does. A folder whose checkpoint lacks encoder weights
    (renamed or prefixed keys, a missing layer) raises :class:`~intbert.errors.MissingWeightsError`
    rather than converting transformers' random stand-ins; one without pooler weights converts without
    a pooler (with a warning), since a random pooler would give random ``pooler_output``.
    """
    if not isinstance(bert, BertModel):
        path = Path(bert)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a BERT checkpoint folder (no config.json)")
        bert, report = load_float_checkpoint(BertModel, path, add_pooling_layer=True)
        if report.new_head:  # only the pooler can be new in a BertModel
            warnings.warn(f"{report.new_head_message()}; converting without a pooler", stacklevel=2)
            bert.pooler = None
    config = ibert_config_from_bert(bert.config, **config_overrides)
    model = IBertModel(config, add_pooling_layer=bert.pooler is not None)
    source = {k: v for k, v in bert.state_dict().items() if k not in _IGNORED_BERT_KEYS}
    positions = source.get("embeddings.position_embeddings.weight")
    if positions is not None:  # (a missing one is reported by copy_weights with the others)
        # BERT position p -> I-BERT row p + 1; row 0 is the padding position.
        source["embeddings.position_embeddings.weight"] = torch.cat([torch.zeros_like(positions[:1]), positions])
    copy_weights(model, source, "BERT")
    return model.eval()


def copy_weights(target: nn.Module, source: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy ``source`` into ``target``'s state in place, every tensor checked (as nanoGPT's from_pretrained does).

    Each key must exist in ``target`` (else KeyError) with the same shape (else ValueError), and every float
    ``weight``/``bias`` of ``target`` must be covered (else KeyError listing the first five), so nothing is left
    at its random initialisation; integer buffers and activation ranges are the quantizer's own and are not
    asked for. ``where`` names the source in the messages. The converters of BERT, RoBERTa and their heads
    (``bert_to_ibert``, the CLI's) all load through here.
    """
    state = target.state_dict()
    with torch.no_grad():
        for key, value in source.items():
            if key not in state:
                raise KeyError(f"{where}: weight {key!r} has no I-BERT counterpart")
            if state[key].shape != value.shape:
                raise ValueError(f"{where}: {key} has shape {tuple(value.shape)}, "
                                 f"I-BERT expects {tuple(state[key].shape)}")
            state[key].copy_(value)
    floats = {k for k, v in state.items() if v.is_floating_point() and k.endswith(("weight", "bias"))}
    missing = sorted(k for k in floats - set(source) if ".activation." not in k)
    if missing:
        raise KeyError(f"{where}: I-BERT weights with no source: {missing[:5]}")
