"""intbert: BERT-family encoders in real integer arithmetic.

Two families: I-BERT (integer-only RoBERTa, ``IBert*``) and QDQBERT (BERT with Quantize/Dequantize
nodes, ``QDQBert*``), one smoothing verb (``smooth``: outliers migrated into the weights before calibration)
and one calibration verb for both (``calibrate``), and the quantization toolkit
in ``intbert.quantization``. ``freeze`` turns a calibrated I-BERT into the integer-only engine
(``FrozenIBert``).
"""

from .calibration import calibrate
from .checksum import fingerprint
from .engine import FrozenIBert, freeze
from .errors import CheckpointIntegrityError, MissingWeightsError, OverflowRiskError, UncalibratedError
from .export import export_onnx, verify_onnx
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
from .models.loading import LoadReport, load_float_checkpoint
from .models.smoothing import SmoothingReport, smooth, smoothing_record
from .recipes import DEFAULT_RECIPES, RECIPES, Recipe, apply_recipe
from .distillation import distill
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
    "CheckpointIntegrityError",
    "LoadReport",
    "MissingWeightsError",
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
    "DEFAULT_RECIPES",
    "RECIPES",
    "Recipe",
    "SmoothingReport",
    "UncalibratedError",
    "FrozenIBert",
    "apply_recipe",
    "bert_to_ibert",
    "calibrate",
    "distill",
    "export_onnx",
    "fingerprint",
    "freeze",
    "load_float_checkpoint",
    "smooth",
    "smoothing_record",
    "verify_onnx",
]
