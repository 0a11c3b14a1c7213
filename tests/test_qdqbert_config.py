"""QDQBertConfig: BERT's fields and defaults, descriptors stored in config.json, clear errors for bad values."""

from __future__ import annotations

import json

import pytest
import transformers
from transformers import BertConfig

from intbert.models.qdqbert import QDQBertConfig, QDQBertForMaskedLM, QDQBertModel
from intbert.quantization import QuantDescriptor, TensorQuantizer
from intbert.quantization.nn import QuantLinear

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)


def test_defaults_are_bert_base():
    ours, bert = QDQBertConfig(), BertConfig()
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                  "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "use_cache",
                  "classifier_dropout", "is_decoder", "add_cross_attention", "tie_word_embeddings"):
        assert getattr(ours, field) == getattr(bert, field), field
    assert (ours.vocab_size, ours.hidden_size, ours.num_hidden_layers, ours.intermediate_size) == (30522, 768, 12, 3072)
    assert ours.pad_token_id == 0  # the transformers port said 1 (RoBERTa's); BERT's is 0
    assert ours.position_embedding_type == "absolute"
    assert ours.model_type == "qdqbert"


def test_descriptors_are_stored_in_config_json(tmp_path):
    desc_in = QuantDescriptor(num_bits=6, calib_method="histogram", narrow_range=True)
    desc_w = QuantDescriptor(num_bits=4, axis=(0,))
    QDQBertConfig(**TINY, quant_desc_input=desc_in, quant_desc_weight=desc_w.to_dict()).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["quant_desc_input"]["num_bits"] == 6 and saved["quant_desc_input"]["calib_method"] == "histogram"
    loaded = QDQBertConfig.from_pretrained(tmp_path)
    assert QuantDescriptor.from_dict(loaded.quant_desc_input) == desc_in
    assert QuantDescriptor.from_dict(loaded.quant_desc_weight) == desc_w


def test_model_uses_the_config_descriptors_not_the_globals():
    config = QDQBertConfig(**TINY, quant_desc_input={"num_bits": 5}, quant_desc_weight={"num_bits": 3, "axis": [0]})
    model = QDQBertModel(config)
    query = model.encoder.layer[0].attention.self.query
    assert query._input_quantizer.num_bits == 5 and query._weight_quantizer.num_bits == 3
    assert model.encoder.layer[0].output.add_residual_input_quantizer.num_bits == 5
    assert model.encoder.layer[0].attention.self.matmul_a_input_quantizer.num_bits == 5


def test_without_descriptors_the_quantlinear_defaults_apply_and_are_recorded():
    saved_in, saved_w = QuantLinear.default_quant_desc_input, QuantLinear.default_quant_desc_weight
    try:
        QuantLinear.set_default_quant_desc_input(QuantDescriptor(num_bits=7))
        QuantLinear.set_default_quant_desc_weight(QuantDescriptor(num_bits=6))
        config = QDQBertConfig(**TINY)
        assert config.quant_desc_input is None
        model = QDQBertModel(config)
    finally:
        QuantLinear.default_quant_desc_input, QuantLinear.default_quant_desc_weight = saved_in, saved_w
    bits = {q.num_bits for n, q in model.named_modules() if isinstance(q, TensorQuantizer) and "weight" not in n}
    assert bits == {7}
    assert model.encoder.layer[0].intermediate.dense._weight_quantizer.num_bits == 6
    # Recorded, so a reload does not depend on the globals any more.
    assert config.quant_desc_input["num_bits"] == 7 and config.quant_desc_weight["num_bits"] == 6
    assert QDQBertModel(config).encoder.layer[0].attention.self.query._input_quantizer.num_bits == 7


def test_auto_classes_resolve_qdqbert(tmp_path):
    QDQBertForMaskedLM(QDQBertConfig(**TINY)).save_pretrained(tmp_path)
    assert type(transformers.AutoConfig.from_pretrained(tmp_path)) is QDQBertConfig
    assert type(transformers.AutoModelForMaskedLM.from_pretrained(tmp_path)) is QDQBertForMaskedLM
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is QDQBertModel


def test_json_pruned_heads_keys_become_ints():
    assert QDQBertConfig(**TINY, pruned_heads={"0": [1]}).pruned_heads == {0: [1]}


@pytest.mark.parametrize("field,value", [
    ("vocab_size", 0),
    ("hidden_size", -8),
    ("num_hidden_layers", 1.5),
    ("num_attention_heads", True),
    ("intermediate_size", "3072"),
    ("max_position_embeddings", 0),
    ("type_vocab_size", 0),
    ("hidden_dropout_prob", 1.0),
    ("attention_probs_dropout_prob", -0.1),
    ("classifier_dropout", 2.0),
    ("position_embedding_type", "rotary"),
    ("hidden_act", "swishy"),
    ("layer_norm_eps", 0.0),
    ("pad_token_id", 50),
    ("quant_desc_input", {"num_bits": 8, "axes": 0}),
    ("quant_desc_weight", {"num_bits": 99}),
    ("quant_desc_input", "8bit"),
    ("quant_desc_input", {"num_bits": 8, "fake_quant": False}),
])
def test_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QDQBertConfig(**{**TINY, field: value})


def test_heads_that_do_not_divide_the_hidden_size_are_refused_by_the_model_not_the_config():
    """As transformers: a config holds any sizes (hidden 32 with the default 12 heads); building the model refuses."""
    config = QDQBertConfig(**{**TINY, "hidden_size": 32, "num_attention_heads": 12})
    assert transformers.BertConfig(hidden_size=32, num_attention_heads=12).num_attention_heads == 12
    with pytest.raises(ValueError, match=r"hidden size \(32\) is not a multiple of the number of attention heads \(12\)"):
        QDQBertModel(config)
