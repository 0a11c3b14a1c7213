"""Loading float checkpoints without silent random weights.

transformers' ``from_pretrained`` initialises every weight a checkpoint lacks and reports it only through its
logger. For a quantization tool that is the worst outcome: the calibrated int8 model of a checkpoint whose keys
are all prefixed (``foo.encoder...``) or that lost a layer looks like any other, and no one can tell from its
outputs. Here the missing keys are sorted into two kinds:

* **encoder weights** (the embeddings and the transformer layers of the base model): missing ones are an error
  (:class:`~intbert.errors.MissingWeightsError`, naming a few);
* **head weights** (the pooler and everything outside the base model: classifier, LM head, QA outputs): a head
  put on a bare encoder is meant to be new, so these are reported in :attr:`LoadReport.new_head`, not refused.

Only parameters count: buffers (``position_ids``, I-BERT's integer caches and activation ranges, QDQBERT's
``_amax``) are derived or calibrated state that a float checkpoint need not carry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from ..errors import MissingWeightsError

#: How many missing keys an error message names.
SHOWN_KEYS = 5
#: Children of the base model that are heads, not encoder (a BERT/RoBERTa pooler is a task head).
HEAD_CHILDREN = ("pooler",)


@dataclass(frozen=True)
class LoadReport:
    """What a checkpoint did not provide for a model.

    ``missing``: encoder parameters absent from the checkpoint (a :func:`check_missing_weights` error);
    ``new_head``: head parameters absent, newly initialised (the head is new); ``unexpected``: checkpoint
    tensors the model has no place for (ignored, as transformers does).
    """

    source: str
    missing: tuple[str, ...] = ()
    new_head: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    def message(self) -> str:
        """One line saying what is missing and what to do (for :class:`MissingWeightsError`)."""
        hint = ""
        if self.unexpected and self.missing:
            hint = (f"; the checkpoint has {len(self.unexpected)} tensors the model does not use, e.g. "
                    f"{_few(self.unexpected)}: are its keys renamed or prefixed?")
        return (f"{self.source} lacks {len(self.missing)} encoder weights the model needs, e.g. "
                f"{_few(self.missing)}{hint}. Loading it would run on random weights; use the checkpoint the "
                "model was saved as, or rename its keys")

    def new_head_message(self) -> str | None:
        """One line naming the newly initialised head weights, or None when the head came from the checkpoint."""
        if not self.new_head:
            return None
        return (f"{self.source} has no weights for {len(self.new_head)} head parameters ({_few(self.new_head)}): "
                "they are newly initialised (a new head on this encoder; train or fine-tune it before use)")


def _few(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def encoder_parameter_names(model: nn.Module) -> set[str]:
    """Names (in ``model.state_dict()``) of the base model's parameters outside its head children (the pooler)."""
    base = getattr(model, "base_model", model)
    prefix = "" if base is model else f"{model.base_model_prefix}."
    return {prefix + name for name, _ in base.named_parameters(remove_duplicate=False)
            if name.split(".", 1)[0] not in HEAD_CHILDREN}


def missing_weights_report(model: nn.Module, missing_keys: Iterable[str], unexpected_keys: Iterable[str] = (),
                           source: str | os.PathLike = "the checkpoint") -> LoadReport:
    """Sort a loader's missing keys into encoder weights (bad) and head weights (new); buffers are ignored."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    encoder = encoder_parameter_names(model)
    missing = [k for k in missing_keys if k in params]
    return LoadReport(
        source=str(source),
        missing=tuple(sorted(k for k in missing if k in encoder)),
        new_head=tuple(sorted(k for k in missing if k not in encoder)),
        unexpected=tuple(sorted(unexpected_keys)),
    )


def check_missing_weights(model: nn.Module, missing_keys: Iterable[str], unexpected_keys: Iterable[str] = (),
                          source: str | os.PathLike = "the checkpoint") -> LoadReport:
    """:func:`missing_weights_report`, raising :class:`MissingWeightsError` when encoder weights are missing."""
    report = missing_weights_report(model, missing_keys, unexpected_keys, source)
    if report.missing:
        raise MissingWeightsError(report.message())
    return report


def load_float_checkpoint(cls: type, path: str | os.PathLike, **kwargs) -> tuple[nn.Module, LoadReport]:
    """``cls.from_pretrained(path, **kwargs)`` that refuses a checkpoint lacking encoder weights.

    ``cls``: any transformers model class (BERT, RoBERTa, I-BERT, QDQBERT, with or without a head).
    Returns ``(model, report)``; ``report.new_head`` lists the head parameters the checkpoint did not have
    (a classifier on a bare encoder), newly initialised as transformers does. Raises
    :class:`~intbert.errors.MissingWeightsError` when encoder weights are missing (renamed or prefixed
    keys, a missing layer), naming a few.
    """
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    report = check_missing_weights(model, info.get("missing_keys", ()), info.get("unexpected_keys", ()), path)
    return model, report
