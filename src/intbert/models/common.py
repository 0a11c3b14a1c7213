"""Pieces both model families share (the heads' losses, the attention-size check), written once."""

from __future__ import annotations

import torch
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PretrainedConfig


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """MSE, cross-entropy or BCE-with-logits by ``config.problem_type``, inferred (and stored) as BERT does."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.view(-1), labels.view(-1).to(logits.dtype))
        return MSELoss()(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    if config.problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi-label labels must have the logits' shape {tuple(logits.shape)} (one 0/1 per label), "
                f"got {tuple(labels.shape)}"
            )
        return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))
    raise ValueError(f"unknown config.problem_type {config.problem_type!r}")


def check_attention_heads(config: PretrainedConfig) -> None:
    """hidden_size must split into num_attention_heads equal heads.

    Checked when an attention layer is built, where transformers' BERT checks it, not in the config: a config may
    hold any sizes (transformers accepts hidden 32 with the default 12 heads, and code that edits a config field by
    field passes through such states).
    """
    hidden, heads = config.hidden_size, config.num_attention_heads
    if heads <= 0 or hidden % heads:
        raise ValueError(f"The hidden size ({hidden}) is not a multiple of the number of attention heads ({heads}): "
                         "set num_attention_heads (or hidden_size) so that it divides")
