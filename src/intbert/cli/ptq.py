"""Calibration as the commands use it: one method name set for both schemes, and "best".

The command line's names are QDQBERT's (max, percentile, mse, entropy). I-BERT calibrates with max (its
"minmax"), mse or ema (the reference's running average); percentile and entropy have no I-BERT counterpart.
"best" calibrates with each method of the scheme and keeps the one whose outputs are closest to the float
model on held-out examples (argmax agreement first, then mean cosine): QDQBERT reads percentile, mse and
entropy from one histogram pass, so "best" costs two data passes there; I-BERT needs one per method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import intbert
from intbert.models.ibert.quant_modules import IntLayerNorm, QuantAct
from intbert.models.qdqbert import recompute_amax
from intbert.quantization.workflow import named_quantizers

from .arguments import METHODS, check_method
from .inference import Batches, compare, run_model


def calibrate(model: nn.Module, scheme: str, method: str, batches: list[dict], progress: bool,
              percentile: float = 99.99) -> None:
    check_method(scheme, method)
    intbert.calibrate(model, batches, METHODS[scheme][method], percentile=percentile, progress=progress)


@dataclass(frozen=True)
class Choice:
    method: str
    scores: dict[str, dict]  # method -> compare() of its outputs with the float model's


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
                reference: list[torch.Tensor], progress: bool, percentile: float = 99.99) -> Choice:
    """Calibrate ``model`` with every method of ``scheme``, leave it calibrated with the one closest to
    ``reference`` (the float model's outputs on ``held_out``), and return all the scores."""
    scores, states = {}, {}

    def measure(method: str) -> None:
        outputs = run_model(model, held_out, head, progress=progress, desc=f"scoring {method}")
        scores[method], states[method] = compare(reference, outputs, head), _snapshot(model, scheme)

    if scheme == "qdq":
        calibrate(model, scheme, "max", calib, progress)
        measure("max")
        calibrate(model, scheme, "percentile", calib, progress, percentile)  # collects the histograms once
        measure("percentile")
        for method in ("mse", "entropy"):
            recompute_amax(model, method, percentile)
            measure(method)
    else:
        for method in ("max", "mse"):  # ema is for QAT: on a fixed set it only lags behind max
            calibrate(model, scheme, method, calib, progress)
            measure(method)
    best = max(scores, key=lambda m: _score(scores[m]))
    _restore(model, scheme, states[best])
    return Choice(best, scores)
