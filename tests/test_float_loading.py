"""Loading float checkpoints refuses missing encoder weights (never random stand-ins), reports new heads, and
fingerprints the float weights a quantized model is made from."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

import intbert
from intbert import MissingWeightsError, fingerprint, load_float_checkpoint

BERT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A bare BERT encoder (with pooler) saved as a transformers checkpoint folder."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert") / "ok"
    BertModel(BertConfig(**BERT)).save_pretrained(path)
    return path


def _edited(src, dst, edit):
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    save_file(edit(load_file(str(weights))), str(weights), metadata={"format": "pt"})
    return dst


def _prefixed(tensors):
    return {"foo." + k: v for k, v in tensors.items()}


def _without_layer_1(tensors):
    return {k: v for k, v in tensors.items() if ".layer.1." not in k}


def _without_pooler(tensors):
    return {k: v for k, v in tensors.items() if not k.startswith("pooler.")}


@pytest.mark.parametrize("edit, named", [(_prefixed, "embeddings."), (_without_layer_1, "encoder.layer.1.")])
def test_bert_to_ibert_refuses_a_checkpoint_lacking_encoder_weights(bert_dir, tmp_path, edit, named):
    bad = _edited(bert_dir, tmp_path / "bad", edit)
    with pytest.raises(MissingWeightsError, match=named) as err:
        intbert.bert_to_ibert(bad, quant_mode=True)
    assert str(bad) in str(err.value) and "random" in str(err.value)
    if edit is _prefixed:  # the unused keys are named too: they show the renaming
        assert "foo.embeddings" in str(err.value)


def test_bert_to_ibert_converts_a_checkpoint_without_pooler_without_one(bert_dir, tmp_path):
    bare = _edited(bert_dir, tmp_path / "bare", _without_pooler)
    with pytest.warns(UserWarning, match="pooler.dense.weight"):
        model = intbert.bert_to_ibert(bare)
    assert model.pooler is None
    assert intbert.bert_to_ibert(bert_dir).pooler is not None


@pytest.mark.parametrize("cls", [intbert.QDQBertModel, intbert.QDQBertForSequenceClassification,
                                 intbert.IBertForSequenceClassification])
def test_load_float_checkpoint_refuses_prefixed_keys_and_a_missing_layer(bert_dir, tmp_path, cls):
    if cls is intbert.IBertForSequenceClassification:  # an I-BERT checkpoint, then damaged the same ways
        intbert.bert_to_ibert(bert_dir).save_pretrained(tmp_path / "ibert")
        bert_dir = tmp_path / "ibert"
    for edit in (_prefixed, _without_layer_1):
        bad = _edited(bert_dir, tmp_path / edit.__name__, edit)
        with pytest.raises(MissingWeightsError, match="encoder weights"):
            load_float_checkpoint(cls, bad)


def test_a_new_head_on_a_bare_encoder_is_reported_not_refused(bert_dir):
    model, report = load_float_checkpoint(intbert.QDQBertForSequenceClassification, bert_dir)
    assert report.ok and report.missing == ()
    assert report.new_head == ("classifier.bias", "classifier.weight")
    assert "classifier.weight" in report.new_head_message() and "newly initialised" in report.new_head_message()
    model, report = load_float_checkpoint(intbert.QDQBertModel, bert_dir)
    assert report.new_head == () and report.new_head_message() is None


def test_fingerprint_names_the_float_weights_and_nothing_else(bert_dir, tmp_path):
    model = BertModel.from_pretrained(bert_dir)
    fp = fingerprint(bert_dir)
    assert fp.startswith("sha256:") and fp == fingerprint(model) == fingerprint(model.state_dict())
    assert fingerprint(bert_dir / "model.safetensors") == fp
    # Integer buffers do not count (position_ids comes and goes between transformers versions).
    state = dict(model.state_dict(), extra_ids=torch.arange(3))
    assert fingerprint(state) == fp
    tweaked = {k: v.clone() for k, v in model.state_dict().items()}
    tweaked["encoder.layer.1.output.dense.bias"][3] += 1e-6
    assert fingerprint(tweaked) != fp
    renamed = {("x." + k if k.startswith("pooler") else k): v for k, v in model.state_dict().items()}
    assert fingerprint(renamed) != fp
    halved = {k: (v.half() if k.startswith("pooler") else v) for k, v in model.state_dict().items()}
    assert fingerprint(halved) != fp
    torch.manual_seed(1)
    assert fingerprint(BertModel(BertConfig(**BERT))) != fp
    with pytest.raises(FileNotFoundError):
        fingerprint(tmp_path / "nothing")
