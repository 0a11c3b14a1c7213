"""intbert: BERT-family encoders in real integer arithmetic.

Two families: I-BERT (integer-only RoBERTa, ``IBert*``) and QDQBERT (BERT with Quantize/Dequantize
nodes, ``QDQBert*``), one calibration verb for both (``calibrate``), and the quantization toolkit
in ``intbert.quantization``.
"""

from .calibration import calibrate
from .errors import OverflowRiskError, UncalibratedError
from .models.ibert import (
    IBertConfig,
    IBertForMaskedLM,
    IBertForMultipleChoice,
    IBertForQuestionAnswering,
    IBertForSequenceClassification,
    IBertForTokenClassification,
    IBertModel,
    IBertPreTrainedModel,
)
from .models.ibert.convert import bert_to_ibert
from .models.qdqbert import (
    QDQBertConfig,
    QDQBertForMaskedLM,
    QDQBertForMultipleChoice,
    QDQBertForNextSentencePrediction,
    QDQBertForQuestionAnswering,
    QDQBertForSequenceClassification,
    QDQBertForTokenClassification,
    QDQBertLMHeadModel,
    QDQBertModel,
    QDQBertPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "IBertConfig",
    "IBertForMaskedLM",
    "IBertForMultipleChoice",
    "IBertForQuestionAnswering",
    "IBertForSequenceClassification",
    "IBertForTokenClassification",
    "IBertModel",
    "IBertPreTrainedModel",
    "OverflowRiskError",
    "QDQBertConfig",
    "QDQBertForMaskedLM",
    "QDQBertForMultipleChoice",
    "QDQBertForNextSentencePrediction",
    "QDQBertForQuestionAnswering",
    "QDQBertForSequenceClassification",
    "QDQBertForTokenClassification",
    "QDQBertLMHeadModel",
    "QDQBertModel",
    "QDQBertPreTrainedModel",
    "UncalibratedError",
    "bert_to_ibert",
    "calibrate",
]
