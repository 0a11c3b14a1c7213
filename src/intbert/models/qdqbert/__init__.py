"""QDQBERT: BERT with Q/DQ fake quantization (Wu et al. 2020), the transformers port brought back without globals."""

from intbert.models.qdqbert.checkpoint import load_qdq_state_dict, register_checkpoint_amax
from intbert.models.qdqbert.configuration_qdqbert import QDQBertConfig
from intbert.models.qdqbert.helpers import calibrate_qdq, clip_gelu, fuse_qkv, recompute_amax
from intbert.models.qdqbert.modeling_qdqbert import (
    QDQBertForMaskedLM,
    QDQBertForMultipleChoice,
    QDQBertForNextSentencePrediction,
    QDQBertForQuestionAnswering,
    QDQBertForSequenceClassification,
    QDQBertForTokenClassification,
    QDQBertLayer,
    QDQBertLMHeadModel,
    QDQBertModel,
    QDQBertPreTrainedModel,
)



def _register_auto_classes() -> None:
    """Make ``AutoConfig``/``AutoModel*`` resolve model_type "qdqbert" (transformers 5 dropped its own mapping)."""
    import transformers

    transformers.AutoConfig.register("qdqbert", QDQBertConfig, exist_ok=True)
    for auto, model in (
        ("AutoModel", QDQBertModel),
        ("AutoModelForCausalLM", QDQBertLMHeadModel),
        ("AutoModelForMaskedLM", QDQBertForMaskedLM),
        ("AutoModelForNextSentencePrediction", QDQBertForNextSentencePrediction),
        ("AutoModelForSequenceClassification", QDQBertForSequenceClassification),
        ("AutoModelForMultipleChoice", QDQBertForMultipleChoice),
        ("AutoModelForTokenClassification", QDQBertForTokenClassification),
        ("AutoModelForQuestionAnswering", QDQBertForQuestionAnswering),
    ):
        getattr(transformers, auto).register(QDQBertConfig, model, exist_ok=True)


_register_auto_classes()

__all__ = [
    "QDQBertConfig",
    "QDQBertPreTrainedModel",
    "QDQBertModel",
    "QDQBertLayer",
    "QDQBertLMHeadModel",
    "QDQBertForMaskedLM",
    "QDQBertForNextSentencePrediction",
    "QDQBertForSequenceClassification",
    "QDQBertForMultipleChoice",
    "QDQBertForTokenClassification",
    "QDQBertForQuestionAnswering",
    "calibrate_qdq",
    "clip_gelu",
    "fuse_qkv",
    "recompute_amax",
    "load_qdq_state_dict",
    "register_checkpoint_amax",
]
