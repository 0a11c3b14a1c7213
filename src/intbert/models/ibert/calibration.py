"""Post-training calibration of I-BERT: every activation range and LayerNorm shift from data, in one call."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .quant_modules import RANGE_SENTINEL, IntLayerNorm, QuantAct

#: "minmax": the exact min/max over all calibration batches; "ema": the reference's running average
#: (first batch, then x <- m x + (1 - m) batch), what QAT uses.
CALIBRATION_METHODS = ("minmax", "ema")


def calibrate_ibert(
    model: nn.Module,
    batches: Iterable,
    *,
    method: str = "minmax",
    momentum: float = 0.95,
    forward_fn: Callable | None = None,
    progress: bool = False,
) -> nn.Module:
    """Set every QuantAct range and IntLayerNorm shift of a quant-mode I-BERT from ``batches``.

    Ranges are reset first, then the batches run in order under no_grad with the quant modules in
    train mode (so each range is measured on the already-quantized outputs of the modules before it,
    as at inference) and dropout off. ``batches`` yields dicts of model kwargs (or tensors of ids);
    ``forward_fn(model, batch)`` overrides the call. The model's train/eval mode is restored.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    if not any(m.quant_mode for m in acts):
        raise ValueError("calibrate needs a quant-mode I-BERT: build it with config.quant_mode=True")
    norms = [m for m in model.modules() if isinstance(m, IntLayerNorm)]
    # Snapshot the state calibration writes, so a failure (no batches, a bad batch) leaves the model as it was.
    saved = {m: (m.x_min.clone(), m.x_max.clone(), m.act_range_momentum) for m in acts}
    saved_shift = {n: n.shift.clone() for n in norms}
    was_training = model.training
    ok = False
    try:
        with torch.no_grad():
            for m in acts:
                m.x_min.fill_(-RANGE_SENTINEL)
                m.x_max.fill_(RANGE_SENTINEL)
                m._calibrated = None
                m.act_range_momentum = -1 if method == "minmax" else momentum
            for n in norms:
                n.shift.zero_()
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        seen = 0
        with torch.no_grad():
            for batch in tqdm(batches, desc="calibrate", disable=not progress):
                if forward_fn is not None:
                    forward_fn(model, batch)
                elif isinstance(batch, dict):
                    model(**batch)
                else:
                    model(batch)
                seen += 1
        if seen == 0:
            raise ValueError("calibrate got no batches; pass at least one batch of representative inputs")
        ok = True
    finally:
        with torch.no_grad():
            for m, (x_min, x_max, mom) in saved.items():
                m.act_range_momentum = mom
                if not ok:
                    m.x_min.copy_(x_min)
                    m.x_max.copy_(x_max)
                    m._calibrated = None
            if not ok:
                for n, shift in saved_shift.items():
                    n.shift.copy_(shift)
        model.train(was_training)
    return model
