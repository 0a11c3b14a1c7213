"""Pieces both model families share, written once: the heads' losses, the multiple-choice reshaping, the
attention-size check.

Every loss is a mean over the labelled items of one batch (cross-entropy skips label -100, its default
``ignore_index``), as BERT's and RoBERTa's heads compute it; ``labels=None`` gives ``None`` (no loss), so a head
needs no branch. The heads say ``accepts_loss_kwargs = False`` (in each family's PreTrainedModel), because their
``**kwargs`` would otherwise make transformers' Trainer believe a loss normalised by ``num_items_in_batch``: it
would pass that count in and stop dividing the loss by the gradient-accumulation steps.
"""

from __future__ import annotations

import torch
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PretrainedConfig


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy of (B, L, V) logits against (B, L) token ids, -100 where no loss applies."""
    if labels is None:
        return None
    return CrossEntropyLoss()(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Next-token cross-entropy: labels are the inputs, unshifted; token t predicts token t + 1, so the last
    prediction and the first label are dropped here."""
    if labels is None:
        return None
    return masked_lm_loss(logits[:, :-1].contiguous(), labels[:, 1:].contiguous())


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy of (B, L, num_labels) logits against (B, L) label ids, -100 where no loss applies."""
    return masked_lm_loss(logits, labels)  # the same loss over a label vocabulary


def choice_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-entropy of (B, C) scores against (B,) class indices: multiple choice (C choices) and next-sentence
    prediction (C = 2: 0 if sentence B follows A, 1 if B is random)."""
    if labels is None:
        return None
    return CrossEntropyLoss()(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1))


def span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor | None,
    end_positions: torch.Tensor | None,
) -> torch.Tensor | None:
    """Extractive QA: the mean of the start and end cross-entropies over (B, L) logits; ``None`` unless both
    positions are given.

    A position outside the sequence (an answer truncated away) is clamped to L, an index no logit has, and that
    index is the ignored one: such an example adds nothing to the loss, as in BERT.
    """
    if start_positions is None or end_positions is None:
        return None
    ignored = start_logits.shape[1]
    start = start_positions.to(start_logits.device).view(-1).clamp(0, ignored)
    end = end_positions.to(end_logits.device).view(-1).clamp(0, ignored)
    loss = CrossEntropyLoss(ignore_index=ignored)
    return (loss(start_logits, start) + loss(end_logits, end)) / 2


def sequence_classification_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, config: PretrainedConfig
) -> torch.Tensor | None:
    """MSE, cross-entropy or BCE-with-logits by ``config.problem_type``, inferred (and stored) as BERT does:
    one label is a regression, integer labels a single-label and float labels a multi-label classification."""
    if labels is None:
        return None
    labels = labels.to(logits.device)
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


def num_choices(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> int:
    """C of multiple-choice inputs (B, C, L) ids or (B, C, L, H) embeddings."""
    reference = input_ids if input_ids is not None else inputs_embeds
    if reference is None or reference.dim() < 3:
        shape = None if reference is None else tuple(reference.shape)
        raise ValueError("multiple choice inputs must have shape (batch, num_choices, seq_length[, hidden]), "
                         f"got {shape}")
    return reference.shape[1]


def flatten_choices(x: torch.Tensor | None) -> torch.Tensor | None:
    """(B, C, L, ...) -> (B*C, L, ...): each choice is encoded as its own sequence."""
    return None if x is None else x.reshape(-1, *x.shape[2:])


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
