"""I-BERT: integer-only RoBERTa (config, quant modules, models, calibration)."""

from .calibration import calibrate_ibert
from .configuration_ibert import IBertConfig
from .modeling_ibert import (
    IBertForMaskedLM,
    IBertForMultipleChoice,
    IBertForQuestionAnswering,
    IBertForSequenceClassification,
    IBertForTokenClassification,
    IBertModel,
    IBertPreTrainedModel,
)
from .quant_modules import IntGELU, IntLayerNorm, IntSoftmax, QuantAct, QuantEmbedding, QuantLinear

__all__ = [
    "IBertConfig",
    "IBertForMaskedLM",
    "IBertForMultipleChoice",
    "IBertForQuestionAnswering",
    "IBertForSequenceClassification",
    "IBertForTokenClassification",
    "IBertModel",
    "IBertPreTrainedModel",
    "IntGELU",
    "IntLayerNorm",
    "IntSoftmax",
    "QuantAct",
    "QuantEmbedding",
    "QuantLinear",
    "calibrate_ibert",
]
