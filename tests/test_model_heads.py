"""The heads of both families, as transformers' tools see them: the shared losses (models/common.py), the
``return_dict=False`` tuples, ``config.return_dict``, pipelines and Trainer.

Every head's tuple is checked against the field order written out here (BERT's and RoBERTa's), not against
``ModelOutput.to_tuple()``, which is what produces it.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import test_ibert_modeling as ib
import test_qdqbert_modeling as qdq
from intbert.models import common
from intbert.models.ibert import IBertConfig, IBertForSequenceClassification
from intbert.models.qdqbert import (
    QDQBertForMaskedLM,
    QDQBertForMultipleChoice,
    QDQBertForNextSentencePrediction,
    QDQBertForQuestionAnswering,
    QDQBertForSequenceClassification,
    QDQBertForTokenClassification,
    QDQBertLMHeadModel,
    QDQBertModel,
)

# ----------------------------------------------------------------------------------------------------------------------
# The shared losses, against torch.nn.functional written out independently (same kernels: torch.equal)


def test_masked_lm_and_token_losses_skip_minus_100():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :3] = -100
    want = F.cross_entropy(logits.reshape(10, 11), labels.reshape(10), ignore_index=-100)
    assert torch.equal(common.masked_lm_loss(logits, labels), want)
    assert torch.equal(common.token_classification_loss(logits, labels), want)
    everything = F.cross_entropy(logits.reshape(10, 11), labels.clamp(min=0).reshape(10))
    assert not torch.equal(want, everything)  # the -100 positions really were left out


def test_causal_lm_loss_predicts_the_next_token():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    want = F.cross_entropy(logits[:, :4].reshape(8, 11), labels[:, 1:].reshape(8))
    assert torch.equal(common.causal_lm_loss(logits, labels), want)


def test_choice_loss_is_cross_entropy_over_the_choices():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(3, 4, generator=g), torch.tensor([0, 3, 1])
    assert torch.equal(common.choice_loss(logits, labels), F.cross_entropy(logits, labels))


def test_span_loss_ignores_positions_outside_the_sequence():
    g = torch.Generator().manual_seed(3)
    start, end = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    starts, ends = torch.tensor([1, 99, 2]), torch.tensor([4, 5, -7])  # 99 truncated away; -7 clamps to 0
    want = (F.cross_entropy(start[[0, 2]], torch.tensor([1, 2]))
            + F.cross_entropy(end, torch.tensor([4, 5, 0]))) / 2
    assert torch.equal(common.span_loss(start, end, starts, ends), want)
    assert common.span_loss(start, end, starts, None) is None


@pytest.mark.parametrize("problem_type,num_labels,labels,want", [
    ("regression", 1, torch.tensor([0.5, -1.0, 2.0]), lambda z, y: F.mse_loss(z.view(-1), y)),
    ("single_label_classification", 3, torch.tensor([2, 0, 1]), F.cross_entropy),
    ("multi_label_classification", 3, torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1]]),
     F.binary_cross_entropy_with_logits),
])
def test_sequence_classification_loss_infers_and_stores_the_problem_type(problem_type, num_labels, labels, want):
    config = IBertConfig(num_labels=num_labels)
    logits = torch.randn(3, num_labels, generator=torch.Generator().manual_seed(4))
    assert torch.equal(common.sequence_classification_loss(logits, labels, config), want(logits, labels))
    assert config.problem_type == problem_type


def test_every_loss_is_none_without_labels():
    z = torch.zeros(2, 3, 4)
    assert common.masked_lm_loss(z, None) is None and common.causal_lm_loss(z, None) is None
    assert common.token_classification_loss(z, None) is None and common.choice_loss(z[:, 0], None) is None
    assert common.sequence_classification_loss(z[:, 0], None, IBertConfig()) is None


def test_multiple_choice_inputs_need_a_choice_dimension():
    with pytest.raises(ValueError, match=r"num_choices.*got \(2, 3\)"):
        common.num_choices(torch.zeros(2, 3, dtype=torch.long), None)
    assert common.num_choices(None, torch.zeros(2, 5, 3, 8)) == 5
    assert common.flatten_choices(torch.zeros(2, 5, 3, 8)).shape == (10, 3, 8)


# ----------------------------------------------------------------------------------------------------------------------
# return_dict=False: every head of both families, in its field order


def _qdq_cases():
    """name -> (class, config overrides, inputs, labels, output fields in tuple order)."""
    x = qdq.inputs()
    mc = {k: torch.stack([v, v.flip(0)], dim=1) for k, v in x.items()}  # (B, 2, L)
    return {
        "model": (QDQBertModel, {}, x, {}, ("last_hidden_state", "pooler_output")),
        "masked_lm": (QDQBertForMaskedLM, {}, x, {"labels": torch.full((qdq.BATCH, qdq.SEQ), 5)}, ("logits",)),
        "causal_lm": (QDQBertLMHeadModel, {"is_decoder": True}, x, {"labels": torch.full((qdq.BATCH, qdq.SEQ), 5)},
                      ("logits",)),
        "next_sentence": (QDQBertForNextSentencePrediction, {}, x, {"labels": torch.tensor([0, 1, 0])}, ("logits",)),
        "sequence_classification": (QDQBertForSequenceClassification, {}, x, {"labels": torch.tensor([0, 2, 1])},
                                    ("logits",)),
        "multiple_choice": (QDQBertForMultipleChoice, {}, mc, {"labels": torch.tensor([0, 1, 1])}, ("logits",)),
        "token_classification": (QDQBertForTokenClassification, {}, x,
                                 {"labels": torch.ones(qdq.BATCH, qdq.SEQ, dtype=torch.long)}, ("logits",)),
        "question_answering": (QDQBertForQuestionAnswering, {"num_labels": 2}, x,
                               {"start_positions": torch.tensor([1, 2, 100]), "end_positions": torch.tensor([3, 4, 5])},
                               ("start_logits", "end_logits")),
    }


QDQ_CASES = _qdq_cases()
IB_FIELDS = {"model": ("last_hidden_state", "pooler_output"), "model_no_pooler": ("last_hidden_state",),
             "question_answering": ("start_logits", "end_logits")}


def _qdq_head(name):
    cls, config_kw, x, labels, fields = QDQ_CASES[name]
    torch.manual_seed(0)
    model = cls(qdq.tiny_config(**config_kw)).eval()
    qdq.calibrate_qdq(model, [x], method="max", progress=False)  # calibrated: no dynamic-amax warnings
    if cls is QDQBertLMHeadModel:
        x = {**x, "use_cache": False}  # a cache would add past_key_values after the logits
    return model, x, labels, fields


def _ibert_head(name):
    model = ib.head_model(name, quant=True)
    make, make_labels = ib.HEADS[name][3], ib.HEADS[name][4]
    x = make(1)
    return model, x, make_labels(x, torch.Generator().manual_seed(2)), IB_FIELDS.get(name, ("logits",))


HEAD_CASES = [("qdqbert", n) for n in QDQ_CASES] + [("ibert", n) for n in ib.HEADS]


def _head(family, name):
    return (_qdq_head if family == "qdqbert" else _ibert_head)(name)


def _expected(out, fields, labels, extras):
    """BERT's tuple: loss (when labels were given), the head's fields, then hidden states and attentions if asked."""
    return ([out.loss] if labels and "loss" in out else []) + [out[f] for f in fields] + [out[e] for e in extras]


def _assert_same(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("family,name", HEAD_CASES, ids=[f"{f}-{n}" for f, n in HEAD_CASES])
def test_return_dict_false_gives_the_fields_in_order_without_the_absent_ones(family, name):
    model, x, labels, fields = _head(family, name)
    with torch.no_grad():
        for extras in [(), ("hidden_states",), ("attentions",), ("hidden_states", "attentions")]:
            flags = {"output_hidden_states": "hidden_states" in extras, "output_attentions": "attentions" in extras}
            for lab in ({}, labels):
                out = model(**x, **lab, **flags)
                got = model(**x, **lab, **flags, return_dict=False)
                assert type(got) is tuple, (extras, bool(lab))
                want = _expected(out, fields, lab, extras)
                assert len(got) == len(want), (extras, bool(lab), len(got), len(want))
                for g, w in zip(got, want):
                    _assert_same(g, w)
    if "hidden_states" in extras:
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1


@pytest.mark.parametrize("family,name", [("qdqbert", "sequence_classification"), ("qdqbert", "model"),
                                         ("ibert", "seqcls_single_label"), ("ibert", "model")])
def test_config_return_dict_false_gives_tuples_unless_the_call_asks_for_a_dict(family, name):
    model, x, labels, fields = _head(family, name)
    with torch.no_grad():
        out = model(**x, **labels)
        model.config.return_dict = False
        got = model(**x, **labels)
        as_dict = model(**x, **labels, return_dict=True)
    assert type(got) is tuple and len(got) == len(_expected(out, fields, labels, ()))
    assert all(torch.equal(g, w) for g, w in zip(got, _expected(out, fields, labels, ())))
    assert not isinstance(as_dict, tuple) and torch.equal(as_dict[fields[0]], out[fields[0]])


def test_frozen_ibert_heads_keep_the_tuple_contract():
    from intbert import freeze

    model, x, labels, fields = _ibert_head("token_classification")
    frozen = freeze(model)
    out = frozen(**x, **labels, output_hidden_states=True)
    got = frozen(**x, **labels, output_hidden_states=True, return_dict=False)
    want = _expected(out, fields, labels, ("hidden_states",))
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        _assert_same(g, w)


def test_unknown_keyword_arguments_are_refused_by_the_qdqbert_encoder():
    model, x, labels, _ = _qdq_head("sequence_classification")
    with pytest.raises(TypeError, match="output_hidden_state"):
        model(**x, output_hidden_state=True)  # a typo is not silently ignored


# ----------------------------------------------------------------------------------------------------------------------
# Pipelines (QDQBERT; I-BERT's are in test_ibert_modeling.py), with a tokenizer built offline


@pytest.fixture(scope="module")
def bert_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0 = QDQBertConfig.pad_token_id
    vocab = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(qdq.VOCAB - len(special))])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]", model_max_length=32)


def test_qdqbert_fill_mask_pipeline_ranks_the_models_own_top_tokens(bert_tokenizer):
    from transformers import pipeline

    model, _, _, _ = _qdq_head("masked_lm")
    got = pipeline("fill-mask", model=model, tokenizer=bert_tokenizer)("w1 w2 [MASK] w3", top_k=3)
    with torch.no_grad():
        logits = model(**bert_tokenizer("w1 w2 [MASK] w3", return_tensors="pt")).logits[0, 3]
    assert [r["token"] for r in got] == logits.topk(3).indices.tolist()


def test_qdqbert_text_classification_pipeline_labels_a_padded_batch(bert_tokenizer):
    from transformers import pipeline

    model, _, _, _ = _qdq_head("sequence_classification")
    texts = ["w1 w2 w3 w4 w5", "w6"]
    got = pipeline("text-classification", model=model, tokenizer=bert_tokenizer, top_k=None)(texts)
    with torch.no_grad():
        probs = model(**bert_tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    for scores, p in zip(got, probs):
        by_label = {r["label"]: r["score"] for r in scores}
        assert by_label == pytest.approx({f"LABEL_{i}": float(v) for i, v in enumerate(p)}, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Trainer: one SGD step equals the hand-computed step, with and without gradient accumulation


# Trainer sums the same float32 losses in another order (shuffled examples, two half batches): the weights after
# one step differ from the hand-computed step by a few ulps (weights ~0.02-1, gradients x lr ~1e-3). A missed or
# doubled division by the accumulation steps moves them by a whole lr * grad.
STEP_RTOL, STEP_ATOL = 1e-5, 1e-6


def _classifier(family):
    """A sequence classifier without dropout, whose forward does not depend on the batch it is in: QDQBERT
    calibrated (fixed amax), I-BERT in float mode (quant mode's QuantAct ranges move with each training batch)."""
    torch.manual_seed(0)
    if family == "qdqbert":
        model = QDQBertForSequenceClassification(qdq.tiny_config(hidden_dropout_prob=0.0,
                                                                 attention_probs_dropout_prob=0.0))
        return qdq.calibrated(model)
    return IBertForSequenceClassification(ib.tiny_config(quant=False, hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0))


def _examples(family):
    x = qdq.inputs(7, batch=4) if family == "qdqbert" else ib.batch(7, b=4)
    labels = torch.tensor([0, 2, 1, 2])
    return [{**{k: v[i] for k, v in x.items()}, "labels": labels[i]} for i in range(4)]


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("family", ["qdqbert", "ibert"])
def test_one_trainer_step_is_one_sgd_step_on_the_batch_mean_loss(family, accumulation, tmp_path):
    pytest.importorskip("accelerate", reason="Trainer needs accelerate (the demo extra)")
    from transformers import Trainer, TrainingArguments

    lr = 0.5
    model, examples = _classifier(family), _examples(family)
    reference = _classifier(family)
    reference.train()
    batch = {k: torch.stack([e[k] for e in examples]) for k in examples[0]}
    reference(**batch).loss.backward()  # the mean over all 4 examples
    want = {n: p.detach() - lr * p.grad for n, p in reference.named_parameters() if p.grad is not None}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4 // accumulation,
                             gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=lr, optim="sgd",
                             lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=examples)
    assert trainer.model_accepts_loss_kwargs is False  # so Trainer divides the mean loss by the accumulation steps
    trainer.train()
    got = dict(model.named_parameters())
    moved = [n for n in want if not torch.equal(got[n].detach(), reference.get_parameter(n).detach())]
    assert "classifier.weight" in moved or "classifier.out_proj.weight" in moved
    for name, value in want.items():
        torch.testing.assert_close(got[name].detach(), value, rtol=STEP_RTOL, atol=STEP_ATOL, msg=name)
