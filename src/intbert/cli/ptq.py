"""Post-training quantization as the commands use it: a named recipe, one method name set for both schemes, "best".

The recipe (``intbert.apply_recipe``) places the quantizers and smooths outliers; the calibration method is the
recipe's unless the command names one. The command line's method names are QDQBERT's (max, percentile, mse,
entropy); I-BERT calibrates with max (its "minmax"), mse or ema (the reference's running average); percentile and
entropy have no I-BERT counterpart. "best" calibrates with each method of the scheme and keeps the one whose outputs
are closest to the float model on held-out examples (argmax agreement first, then mean cosine): QDQBERT reads
percentile, mse and entropy from one histogram pass, so "best" costs two data passes there; I-BERT needs one per
method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import intbert
from intbert.models.ibert.quant_modules import IntLayerNorm, QuantAct
from intbert.models.qdqbert import clip_gelu, recompute_amax
from intbert.quantization.workflow import named_quantizers
from intbert.recipes import get_recipe

from .arguments import METHODS, RECIPE_FAMILY
from .inference import Batches, compare, run_model


def _calibrate(model: nn.Module, scheme: str, method: str, batches: list[dict], progress: bool,
               percentile: float = 99.99) -> None:
    intbert.calibrate(model, batches, METHODS[scheme][method], percentile=percentile, progress=progress)


@dataclass(frozen=True)
class Choice:
    method: str
    scores: dict[str, dict]  # method -> compare() of its outputs with the float model's


@dataclass(frozen=True)
class Quantized:
    method: str  # the command line's name of the method used
    record: dict  # intbert.apply_recipe's record, for the report
    scores: dict[str, dict] | None  # with "best": every method's scores


@dataclass(frozen=True)
class HeldOut:
    """What "best" scores the methods on: held-out batches, the model's head and the float model's outputs there."""

    batches: Batches
    head: str
    reference: list[torch.Tensor]


def quantize(model: nn.Module, scheme: str, recipe: str | None, method: str | None, batches: list[dict],
             progress: bool, percentile: float = 99.99, held_out: HeldOut | None = None) -> Quantized:
    """Quantize a freshly built ``model`` in place by ``recipe`` (None: the scheme's default), calibrating with
    ``method`` (None: the recipe's; "best": each of the scheme's, scored on ``held_out``). The commands check both
    names (``check_recipe``, ``check_method``) before loading anything."""
    chosen = get_recipe(RECIPE_FAMILY[scheme], recipe)
    if method != "best":
        record = intbert.apply_recipe(model, batches, chosen, percentile=percentile, progress=progress,
                                      method=METHODS[scheme][method] if method else None)
        by_library_name = {v: k for k, v in METHODS[scheme].items()}
        return Quantized(method or by_library_name[record["method"]], record, None)
    if held_out is None:
        raise ValueError("method 'best' needs held-out batches to score the methods on")
    record = intbert.apply_recipe(model, batches, chosen, calibrate_model=False, progress=progress)

    def finish(m: nn.Module) -> None:  # what apply_recipe does after calibrating: the recipe's GELU cap
        if chosen.clip_gelu is not None:
            clip_gelu(m, chosen.clip_gelu)

    choice = choose_best(model, scheme, held_out.head, batches, held_out.batches, held_out.reference, progress,
                         percentile, finish=finish)
    record["method"] = METHODS[scheme][choice.method]
    if choice.method == "percentile":
        record["percentile"] = percentile
    return Quantized(choice.method, record, choice.scores)


def _score(stats: dict) -> tuple[float, float]:
    return stats.get("agreement", 0.0), stats["cosine_mean"]


def _snapshot(model: nn.Module, scheme: str) -> dict[str, torch.Tensor]:
    """The calibrated state: QDQBERT's amax values, or I-BERT's activation ranges and LayerNorm shifts."""
    if scheme == "qdq":
        return {name: q.amax.clone() for name, q in named_quantizers(model) if q.amax is not None}
    state = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantAct):
            state[f"{name}.x_min"], state[f"{name}.x_max"] = m.x_min.clone(), m.x_max.clone()
        elif isinstance(m, IntLayerNorm):
            state[f"{name}.shift"] = m.shift.clone()
    return state


def _restore(model: nn.Module, scheme: str, state: dict[str, torch.Tensor]) -> None:
    if scheme == "qdq":
        quantizers = dict(named_quantizers(model))
        for name, amax in state.items():
            quantizers[name].amax = amax
    else:
        model.load_state_dict(state, strict=False)  # QuantAct forgets its cached "calibrated" flag on load


def choose_best(model: nn.Module, scheme: str, head: str, calib: list[dict], held_out: Batches,
                reference: list[torch.Tensor], progress: bool, percentile: float = 99.99,
                finish=None) -> Choice:
    """Calibrate ``model`` with every method of ``scheme``, leave it calibrated with the one closest to
    ``reference`` (the float model's outputs on ``held_out``), and return all the scores. ``finish(model)`` runs
    after each calibration, before scoring (a recipe's range cap), so the scores are those of the saved model."""
    scores, states = {}, {}

    def measure(method: str) -> None:
        if finish is not None:
            finish(model)
        outputs = run_model(model, held_out, head, progress=progress, desc=f"scoring {method}")
        scores[method], states[method] = compare(reference, outputs, head), _snapshot(model, scheme)

    if scheme == "qdq":
        _calibrate(model, scheme, "max", calib, progress)
        measure("max")
        _calibrate(model, scheme, "percentile", calib, progress, percentile)  # collects the histograms once
        measure("percentile")
        for method in ("mse", "entropy"):
            recompute_amax(model, method, percentile)
            measure(method)
    else:
        for method in ("max", "mse"):  # ema is for QAT: on a fixed set it only lags behind max
            _calibrate(model, scheme, method, calib, progress)
            measure(method)
    best = max(scores, key=lambda m: _score(scores[m]))
    _restore(model, scheme, states[best])
    return Choice(best, scores)
