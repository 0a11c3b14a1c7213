"""BERT and RoBERTa models with a head -> the I-BERT model with the same head and weights.

``intbert.bert_to_ibert`` converts the encoder (positions shifted to RoBERTa's numbering); the heads map
one to one, since I-BERT's heads are RoBERTa's:

* sequence classification: BERT's pooler (dense + tanh on [CLS]) and classifier are exactly I-BERT's
  ``classifier.dense`` and ``classifier.out_proj`` (dropout sits in other places, which only matters in training);
* masked LM: BERT's ``cls.predictions.transform`` (dense, GELU, LayerNorm) and decoder are I-BERT's ``lm_head``;
* token classification: the same ``classifier``.

RoBERTa shares I-BERT's key names below the ``roberta.`` / ``ibert.`` prefix. Every weight is checked for its
key and shape; a float I-BERT made here gives the source model's outputs (tested within float noise).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

import intbert
from intbert.models.ibert import configuration_ibert, modeling_ibert
from intbert.models.ibert.convert import copy_weights, ibert_config_from_bert

from .errors import UsageError

#: Buffers of transformers' BERT/RoBERTa embeddings with no I-BERT counterpart.
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids")
#: Config fields a head carries (labels), kept through the conversion.
_HEAD_FIELDS = ("id2label", "label2id", "problem_type", "finetuning_task")


def _head_fields(config) -> dict:
    return {k: getattr(config, k) for k in _HEAD_FIELDS if getattr(config, k, None) is not None}


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def bert_to_ibert_head(bert: PreTrainedModel, quant_mode: bool) -> PreTrainedModel:
    """An I-BERT model with ``bert``'s head: BertModel, BertForSequenceClassification, BertForMaskedLM or
    BertForTokenClassification."""
    kind = type(bert).__name__
    if kind == "BertModel":
        return intbert.bert_to_ibert(bert, quant_mode=quant_mode)
    heads = {
        "BertForSequenceClassification": modeling_ibert.IBertForSequenceClassification,
        "BertForMaskedLM": modeling_ibert.IBertForMaskedLM,
        "BertForTokenClassification": modeling_ibert.IBertForTokenClassification,
    }
    if kind not in heads:
        raise UsageError(f"{kind} has no I-BERT conversion; convertible heads: BertModel, {', '.join(heads)}")
    fields = _head_fields(bert.config)
    tied = kind == "BertForMaskedLM" and torch.equal(
        bert.cls.predictions.decoder.weight, bert.bert.embeddings.word_embeddings.weight)
    # An MLM head whose decoder is not the word embeddings (tie_word_embeddings=False) keeps its own decoder.
    tie = tied or kind != "BertForMaskedLM"
    config = ibert_config_from_bert(bert.config, quant_mode=quant_mode, tie_word_embeddings=tie, **fields)
    model = heads[kind](config)
    encoder = intbert.bert_to_ibert(bert.bert, quant_mode=quant_mode)
    source = {k: v for k, v in encoder.state_dict().items() if v.is_floating_point() and k.endswith(("weight", "bias"))
              and ".activation." not in k}
    source = _prefixed("ibert.", source)
    if kind == "BertForSequenceClassification":
        source = {k: v for k, v in source.items() if not k.startswith("ibert.pooler.")}
        source.update(_prefixed("classifier.dense.", bert.bert.pooler.dense.state_dict()))
        source.update(_prefixed("classifier.out_proj.", bert.classifier.state_dict()))
    elif kind == "BertForTokenClassification":
        source.update(_prefixed("classifier.", bert.classifier.state_dict()))
    else:  # masked LM
        predictions = bert.cls.predictions
        source.update(_prefixed("lm_head.dense.", predictions.transform.dense.state_dict()))
        source.update(_prefixed("lm_head.layer_norm.", predictions.transform.LayerNorm.state_dict()))
        source["lm_head.bias"] = predictions.bias
        source["lm_head.decoder.bias"] = predictions.bias
        source["lm_head.decoder.weight"] = predictions.decoder.weight
    copy_weights(model, source, kind)
    return model.eval()


def roberta_to_ibert(roberta: PreTrainedModel, quant_mode: bool) -> PreTrainedModel:
    """An I-BERT model with a RoBERTa model's weights and head (RobertaModel, RobertaForSequenceClassification,
    RobertaForMaskedLM, RobertaForTokenClassification): the same keys under ``ibert.`` instead of ``roberta.``."""
    kind = type(roberta).__name__
    target = "IBert" + kind[len("Roberta"):]
    if not kind.startswith("Roberta") or target not in ("IBertModel", "IBertForSequenceClassification",
                                                          "IBertForMaskedLM", "IBertForTokenClassification"):
        raise UsageError(f"{kind} has no I-BERT conversion; convertible: RobertaModel and its sequence-classification, "
                         "masked-LM and token-classification heads")
    rc = roberta.config
    if rc.hidden_act != "gelu":
        raise UsageError(f"only GELU models convert to I-BERT (i-GELU); this one uses {rc.hidden_act!r}")
    fields = {f: getattr(rc, f) for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
                                          "max_position_embeddings", "type_vocab_size", "initializer_range",
                                          "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")}
    config = configuration_ibert.IBertConfig(quant_mode=quant_mode, tie_word_embeddings=rc.tie_word_embeddings,
                                             **fields, **_head_fields(rc))
    if kind == "RobertaModel":
        model = modeling_ibert.IBertModel(config, add_pooling_layer=roberta.pooler is not None)
        prefix = ""
    else:
        model = getattr(modeling_ibert, target)(config)
        prefix = "roberta."
    source = {}
    for key, value in roberta.state_dict().items():
        body = key[len(prefix):] if prefix and key.startswith(prefix) else None
        if body is not None and body.startswith(_IGNORED) or (not prefix and key.startswith(_IGNORED)):
            continue
        source[("ibert." + body) if body is not None else key] = value
    copy_weights(model, source, kind)
    return model.eval()
