"""intbert.distill: the quantized student moves toward the float teacher; ranges stay as calibrated."""

from __future__ import annotations

import copy

import pytest
import torch

import intbert
from intbert.models.ibert.quant_modules import QuantAct
from intbert.quantization import TensorQuantizer

from test_smoothing import IBERT_CALIB, QDQ_CALIB, ibert_batch, ibert_model, qdq_batch, qdq_model


class _FloatTeacher(torch.nn.Module):
    """The same weights computing in float (what the student should reproduce)."""

    def __init__(self, model, family):
        super().__init__()
        self.model, self.family = model, family

    def forward(self, **kwargs):
        with intbert.models.smoothing._float_forward(self.model, self.family):
            return self.model(**kwargs)


def _error(model, teacher, batches):
    with torch.no_grad():
        return sum(float(((model(**x).last_hidden_state - teacher(**x).last_hidden_state)[x["attention_mask"].bool()]
                          ** 2).mean()) for x in batches)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qdqbert", "ibert"])
def test_distillation_brings_the_student_closer_to_the_teacher(family):
    if family == "qdqbert":
        student, calib, make = qdq_model(plant=True), QDQ_CALIB, qdq_batch
    else:
        student, calib, make = ibert_model(plant=True), IBERT_CALIB, ibert_batch
    teacher = _FloatTeacher(copy.deepcopy(student), family)
    intbert.calibrate(student, calib)
    ranges = {n: (m.x_min.clone(), m.x_max.clone()) for n, m in student.named_modules() if isinstance(m, QuantAct)}
    amax = {n: m.amax.clone() for n, m in student.named_modules()
            if isinstance(m, TensorQuantizer) and not n.endswith("_weight_quantizer")}
    # Eight batches of a random tiny model: it learns them, it does not generalise from them (on held-out batches the
    # error moves either way); what a held-out set gains on real weights is measured by benchmarks/distillation.py.
    train = [make(s) for s in range(20, 28)]
    before = _error(student, teacher, train)
    stats = intbert.distill(student, teacher, train, epochs=3, lr=1e-3)
    after = _error(student, teacher, train)
    assert stats["steps"] == 24 and stats["loss_last"] < 0.5 * stats["loss_first"], stats
    assert after < 0.8 * before, (before, after)
    assert not student.training
    # Activation ranges are the calibrated ones; QDQBERT's weight amax follows the trained weights.
    for n, m in student.named_modules():
        if isinstance(m, QuantAct):
            assert torch.equal(m.x_min, ranges[n][0]) and torch.equal(m.x_max, ranges[n][1]), n
        elif isinstance(m, TensorQuantizer) and n in amax:
            assert torch.equal(m.amax, amax[n]), n
        elif isinstance(m, TensorQuantizer):
            weight = student.get_submodule(n.rsplit(".", 1)[0]).weight
            assert torch.equal(m.amax, weight.detach().abs().amax(1, keepdim=True)), n


def test_distill_refuses_empty_batches_and_bad_settings():
    model = qdq_model()
    with pytest.raises(ValueError, match="no batches"):
        intbert.distill(model, model, [])
    with pytest.raises(ValueError, match="> 0"):
        intbert.distill(model, model, QDQ_CALIB, lr=0)
    with pytest.raises(ValueError, match="warmup"):
        intbert.distill(model, model, QDQ_CALIB, warmup=1.5)
