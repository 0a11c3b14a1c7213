"""intbert.apply_recipe: every named recipe quantizes its family, records what it did, and reloads as it was saved."""

from __future__ import annotations

import json

import pytest
import torch

import intbert
from intbert.models.qdqbert import QDQBertModel
from intbert.quantization import TensorQuantizer
from intbert.recipes import DEFAULT_RECIPES, RECIPES, Recipe, get_recipe

from test_smoothing import IBERT_CALIB, QDQ_CALIB, ibert_batch, ibert_model, qdq_batch, qdq_model


def _fresh(family):
    return qdq_model(plant=True) if family == "qdqbert" else ibert_model(plant=True)


@pytest.mark.parametrize("family,name", list(RECIPES), ids=lambda v: v)
def test_every_recipe_quantizes_its_family_and_records_it(family, name):
    model = _fresh(family)
    calib = QDQ_CALIB if family == "qdqbert" else IBERT_CALIB
    record = intbert.apply_recipe(model, calib, name)
    recipe = RECIPES[(family, name)]
    json.dumps(record)  # goes into quantization_report.json
    assert record["recipe"]["name"] == name and record["method"] == recipe.method
    assert ("smoothing" in record) == recipe.smooth == (intbert.smoothing_record(model) is not None)
    x = qdq_batch(3) if family == "qdqbert" else ibert_batch(3)
    with torch.no_grad():
        out = model(**x).last_hidden_state
    assert torch.isfinite(out).all()
    if family == "qdqbert":
        adds = [q for n, q in model.named_modules() if isinstance(q, TensorQuantizer) and ".add_" in n]
        assert all(q._disabled != recipe.residual_adds for q in adds)
        active = [q for q in model.modules() if isinstance(q, TensorQuantizer) and not q._disabled]
        assert all(q.amax is not None for q in active)  # every active quantizer calibrated


@pytest.mark.parametrize("name", ["float-skip", "smooth-float-skip"])
def test_a_float_skip_checkpoint_reloads_with_its_residual_quantizers_off(tmp_path, name):
    model = _fresh("qdqbert")
    intbert.apply_recipe(model, QDQ_CALIB, name)
    model.save_pretrained(tmp_path)
    loaded = QDQBertModel.from_pretrained(tmp_path).eval()
    adds = [q for n, q in loaded.named_modules() if isinstance(q, TensorQuantizer) and ".add_" in n]
    assert adds and all(q._disabled for q in adds)
    x = qdq_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).last_hidden_state, model(**x).last_hidden_state, rtol=0, atol=0)


def test_default_recipes_are_the_smoothed_ones():
    assert get_recipe("qdqbert") is RECIPES[("qdqbert", DEFAULT_RECIPES["qdqbert"])]
    assert all(get_recipe(family).smooth for family in DEFAULT_RECIPES)
    model = _fresh("ibert")
    assert intbert.apply_recipe(model, IBERT_CALIB)["recipe"]["name"] == DEFAULT_RECIPES["ibert"]


def test_recipe_errors_name_the_fix():
    with pytest.raises(KeyError, match="choose one of"):
        get_recipe("qdqbert", "nonsense")
    with pytest.raises(ValueError, match="for ibert"):
        intbert.apply_recipe(_fresh("qdqbert"), QDQ_CALIB, RECIPES[("ibert", "smooth")])
    with pytest.raises(ValueError, match="integer-only"):
        Recipe("x", "ibert", residual_adds=False)
    with pytest.raises(ValueError, match="one or the other"):
        Recipe("x", "qdqbert", smooth=True, clip_gelu=10.0)
    with pytest.raises(TypeError, match="QDQBERT or I-BERT"):
        intbert.apply_recipe(torch.nn.Linear(2, 2), QDQ_CALIB)


def test_config_refuses_a_bad_disabled_quantizers_list():
    with pytest.raises(ValueError, match="regular expression"):
        intbert.QDQBertConfig(disabled_quantizers=["("])
    with pytest.raises(ValueError, match="list of regular expressions"):
        intbert.QDQBertConfig(disabled_quantizers="add_")


def test_a_recipe_can_stop_before_calibration():
    """For a caller that calibrates its own way (the command line's --method best): placement and smoothing only."""
    model = _fresh("qdqbert")
    record = intbert.apply_recipe(model, QDQ_CALIB, "smooth-float-skip", calibrate_model=False)
    assert record["method"] is None and "smoothing" in record
    quantizers = [q for q in model.modules() if isinstance(q, TensorQuantizer) and not q._disabled]
    assert quantizers and all(q.amax is None for q in quantizers)
    intbert.calibrate(model, QDQ_CALIB, "mse")
    assert all(q.amax is not None for q in quantizers)
