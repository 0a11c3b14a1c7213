"""QDQBertConfig: BERT's configuration plus the quantization descriptors, stored in config.json.

The transformers port kept the descriptors only in process-wide class attributes
(``QuantLinear.set_default_quant_desc_input``), so a checkpoint did not say how it was quantized and
``from_pretrained`` depended on calls made beforehand. Here the descriptors are config fields (plain dicts from
``QuantDescriptor.to_dict``), so ``config.json`` is self-describing. When a config has none, the model falls back to
the class-level defaults in force when it is built, which keeps the old global API working, and writes the
descriptors it used back into the config, so that ``save_pretrained`` records them.

Defaults are BERT-base's. One deliberate difference from the transformers port: ``pad_token_id`` defaults to 0 like
``BertConfig`` (the port used RoBERTa's 1, which put ``padding_idx=1`` on a from-scratch BERT's word embeddings).
"""

from __future__ import annotations

import re
from typing import Any

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")

_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
_PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


class QDQBertConfig(PreTrainedConfig):
    """Configuration of QDQBERT models; every BERT field with BERT-base defaults, plus two quantization fields.

    Args (the quantization ones; the rest are ``BertConfig``'s):
        quant_desc_input: ``QuantDescriptor.to_dict()`` of the descriptor used by every activation quantizer (the
            ``QuantLinear`` inputs and the ``matmul_*``/``add_*`` quantizers). A ``QuantDescriptor`` is accepted and
            stored as its dict. ``None``: use ``QuantLinear``'s class default when the model is built.
        quant_desc_weight: the same for the ``QuantLinear`` weight quantizers (the default is per output row, axis 0).
        smoothing: ``None``, or the record ``intbert.smooth`` wrote (the alpha chosen per site): the model then has
            its per-channel ``smooth_scale`` buffers, so a smoothed checkpoint loads them.
        disabled_quantizers: regular expressions (``re.search`` on module names); the quantizers they match are built
            disabled. A placement is part of how a model was quantized: a checkpoint calibrated without its
            residual-add quantizers holds no amax for them, and would run them in dynamic mode if they came back on.
    """

    model_type = "qdqbert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: float | int | None = None
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    pruned_heads: dict | None = None
    quant_desc_input: dict | Any | None = None
    quant_desc_weight: dict | Any | None = None
    smoothing: dict | None = None
    disabled_quantizers: list | None = None

    def __post_init__(self, **kwargs):
        # A BERT config.json says model_type "bert"; kept as an instance attribute it would be saved again and make
        # AutoModel load the checkpoint as plain BERT. The class attribute decides.
        kwargs.pop("model_type", None)
        self._check_fields()
        # {layer: [heads]}; JSON turns the int keys into strings.
        self.pruned_heads = {int(layer): list(heads) for layer, heads in (self.pruned_heads or {}).items()}
        self.quant_desc_input = _descriptor_dict("quant_desc_input", self.quant_desc_input)
        self.quant_desc_weight = _descriptor_dict("quant_desc_weight", self.quant_desc_weight)
        if self.disabled_quantizers is not None:
            patterns = self.disabled_quantizers
            if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
                raise ValueError(f"QDQBertConfig.disabled_quantizers must be a list of regular expressions, "
                                 f"got {patterns!r}")
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"QDQBertConfig.disabled_quantizers: {pattern!r} is not a regular expression "
                                     f"({err})") from err
            self.disabled_quantizers = list(patterns)
        if self.smoothing is not None and not isinstance(self.smoothing, dict):
            raise ValueError(f"QDQBertConfig.smoothing must be None or a dict (intbert.smooth's record), "
                             f"got {type(self.smoothing).__name__}")
        super().__post_init__(**kwargs)

    def _check_fields(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"QDQBertConfig.{name} must be a positive int, got {value!r}")
        for name in _PROBABILITY_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"QDQBertConfig.{name} must be a probability in [0, 1), got {value!r}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(
                f"QDQBertConfig.classifier_dropout must be None or in [0, 1), got {self.classifier_dropout!r}"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"QDQBertConfig.position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(
                f"QDQBertConfig.hidden_act must name an activation of transformers.activations.ACT2FN "
                f"(e.g. 'gelu'), got {self.hidden_act!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"QDQBertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"QDQBertConfig.pad_token_id must be None or in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_token_id!r}"
            )


def _descriptor_dict(field: str, value: Any) -> dict | None:
    """Normalise a descriptor given as a QuantDescriptor or a dict to the lossless dict form, validating it."""
    if value is None:
        return None
    from intbert.quantization import QuantDescriptor  # models import the toolkit, never the reverse

    if isinstance(value, QuantDescriptor):
        d = value.to_dict()
    elif not isinstance(value, dict):
        raise ValueError(
            f"QDQBertConfig.{field} must be a QuantDescriptor, a dict from QuantDescriptor.to_dict() or None, "
            f"got {type(value).__name__}"
        )
    else:
        try:
            d = QuantDescriptor.from_dict(value).to_dict()
        except (TypeError, ValueError) as err:
            raise ValueError(f"QDQBertConfig.{field} is not a valid QuantDescriptor dict: {err}") from err
    if not d["fake_quant"]:  # a real quantizer outputs integers, which the float layers after it would misread
        raise ValueError(f"QDQBertConfig.{field}: QDQBERT runs fake quantization; drop fake_quant=False")
    return d


__all__ = ["QDQBertConfig", "POSITION_EMBEDDING_TYPES"]
