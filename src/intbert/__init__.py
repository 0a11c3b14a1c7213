"""intbert: BERT-family encoders in real integer arithmetic.

Two families: I-BERT (integer-only RoBERTa, ``IBert*``) and QDQBERT (BERT with Quantize/Dequantize
nodes, ``QDQBert*``), one smoothing verb (``smooth``: outliers migrated into the weights before calibration)
and one calibration verb for both (``calibrate``), and the quantization toolkit
in ``intbert.quantization``. ``freeze`` turns a calibrated I-BERT into the integer-only engine
(``FrozenIBert``).

Every public name is imported on first use (PEP 562 ``__getattr__``): ``import intbert`` costs nothing, so the
``intbert`` command answers ``--help`` and usage errors at once instead of after seconds of torch and
transformers. Add a public name to ``_EXPORTS`` (and ``__all__``), not as an import here: an eager import would
make every command wait again (tests/test_cli_startup.py fails if one does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> the module that defines it (relative to this package).
_EXPORTS = {
    "IBertConfig": ".models.ibert",
    "IBertForMaskedLM": ".models.ibert",
    "IBertForMultipleChoice": ".models.ibert",
    "IBertForQuestionAnswering": ".models.ibert",
    "IBertForSequenceClassification": ".models.ibert",
    "IBertForTokenClassification": ".models.ibert",
    "IBertModel": ".models.ibert",
    "IBertPreTrainedModel": ".models.ibert",
    "CheckpointIntegrityError": ".errors",
    "LoadReport": ".models.loading",
    "MissingWeightsError": ".errors",
    "OverflowRiskError": ".errors",
    "QDQBertConfig": ".models.qdqbert",
    "QDQBertForMaskedLM": ".models.qdqbert",
    "QDQBertForMultipleChoice": ".models.qdqbert",
    "QDQBertForNextSentencePrediction": ".models.qdqbert",
    "QDQBertForQuestionAnswering": ".models.qdqbert",
    "QDQBertForSequenceClassification": ".models.qdqbert",
    "QDQBertForTokenClassification": ".models.qdqbert",
    "QDQBertLMHeadModel": ".models.qdqbert",
    "QDQBertModel": ".models.qdqbert",
    "QDQBertPreTrainedModel": ".models.qdqbert",
    "DEFAULT_RECIPES": ".recipes",
    "RECIPES": ".recipes",
    "Recipe": ".recipes",
    "SmoothingReport": ".models.smoothing",
    "UncalibratedError": ".errors",
    "FrozenIBert": ".engine",
    "apply_recipe": ".recipes",
    "bert_to_ibert": ".models.ibert.convert",
    "calibrate": ".calibration",
    "distill": ".distillation",
    "export_onnx": ".export",
    "fingerprint": ".checksum",
    "freeze": ".engine",
    "load_float_checkpoint": ".models.loading",
    "smooth": ".models.smoothing",
    "smoothing_record": ".models.smoothing",
    "verify_onnx": ".export",
}

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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # type checkers and IDEs see the names as if imported here
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
