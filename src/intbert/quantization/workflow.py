"""Model-agnostic helpers over every `TensorQuantizer` in a module tree.

``calibrate_quantizers`` is the one call that replaces pytorch-quantization's manual sequence
(disable quant, enable calib, run, ``load_calib_amax``, enable quant, and remembering to restore
the model's mode); the others select quantizers by a regular expression on their module names.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calib import HISTOGRAM_METHODS, HistogramCalibrator, MaxCalibrator, amax_per_axis
from .tensor_quantizer import TensorQuantizer

__all__ = [
    "CALIBRATION_METHODS",
    "named_quantizers",
    "calibrate_quantizers",
    "recalibrate_weights",
    "set_quantizer_by_name",
    "enable_quantizers",
    "disable_quantizers",
    "quantizer_summary",
]

CALIBRATION_METHODS = ("max",) + HISTOGRAM_METHODS


def named_quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    """Every ``(name, TensorQuantizer)`` below ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            yield name, module


def _is_weight_quantizer(name: str) -> bool:
    # pytorch-quantization's QuantLinear names it `_weight_quantizer`; ModelOpt uses `weight_quantizer`.
    return name.rsplit(".", 1)[-1] in ("_weight_quantizer", "weight_quantizer")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _run(model: nn.Module, batch: Any, forward_fn: Callable[[nn.Module, Any], Any] | None) -> None:
    if forward_fn is not None:
        forward_fn(model, batch)
    elif isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (list, tuple)):
        model(*batch)
    elif isinstance(batch, torch.Tensor):
        model(batch)
    else:
        raise TypeError(f"cannot feed a batch of type {type(batch).__name__} to the model; pass forward_fn(model, batch)")


def _prepare_calibrator(name: str, quantizer: TensorQuantizer, method: str) -> None:
    """Give the quantizer the calibrator the method needs, emptied.

    Weights always get a max calibrator: a weight is one fixed tensor, so its max is exact and
    clipping it (percentile/mse) would only trade its largest values for nothing measured on data.
    """
    wants_histogram = method in HISTOGRAM_METHODS and not _is_weight_quantizer(name)
    cls = HistogramCalibrator if wants_histogram else MaxCalibrator
    if wants_histogram and quantizer.axis is not None:
        raise ValueError(
            f"{name}: method={method!r} needs a per-tensor quantizer, but its axis is {quantizer.axis!r}; "
            "use method='max' or a per-tensor descriptor for it"
        )
    if not isinstance(quantizer.calibrator, cls):
        quantizer._calibrator = cls(quantizer.num_bits, quantizer.axis, quantizer.unsigned)
    quantizer.calibrator.reset()


def calibrate_quantizers(
    model: nn.Module,
    batches: Iterable[Any],
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    method: str = "max",
    percentile: float = 99.99,
    progress: bool = True,
    *,
    strict: bool = True,
) -> dict[str, torch.Tensor]:
    """Calibrate every enabled quantizer of ``model`` on ``batches``, in one call.

    Weight quantizers use the max of the weight; activation quantizers use ``method``: ``"max"``
    (running abs-max) or a histogram read as ``"percentile"`` (at ``percentile``), ``"mse"`` or
    ``"entropy"``. The batches run in eval mode (dropout would skew the ranges) under ``no_grad``,
    with a tqdm bar unless ``progress=False``; each is moved to the model's device and passed as
    ``model(**batch)`` (a dict), ``model(*batch)`` (a tuple) or ``model(batch)``, or to
    ``forward_fn(model, batch)`` when given. Afterwards every calibrated quantizer quantizes with its
    new amax, and the model's train/eval mode and the clip switches are restored (also on error).

    Returns ``{quantizer name: amax}``. Raises RuntimeError when there are no batches, or (with
    ``strict``) when some quantizers never ran; ``strict=False`` leaves those uncalibrated with a warning.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {CALIBRATION_METHODS}")
    quantizers = [(n, q) for n, q in named_quantizers(model) if not q._disabled]
    if not quantizers:
        raise ValueError("the model has no enabled TensorQuantizer to calibrate")
    for name, q in quantizers:
        _prepare_calibrator(name, q, method)
    saved_clip = {name: q._if_clip for name, q in quantizers}
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    seen = 0
    try:
        for _, q in quantizers:
            q.disable_quant()
            q.disable_clip()
            q.enable_calib()
        model.eval()
        with torch.no_grad():
            for batch in tqdm(batches, desc=f"calibrating ({method})", disable=not progress):
                _run(model, _to_device(batch, device) if device is not None else batch, forward_fn)
                seen += 1
    finally:
        for name, q in quantizers:
            q.disable_calib()
            q.enable_quant()
            if saved_clip[name]:
                q.enable_clip()
        model.train(was_training)
    if seen == 0:
        raise RuntimeError("calibration got no batches; pass a non-empty iterable of batches")
    idle = [name for name, q in quantizers if _collected_nothing(q)]
    if idle and strict:
        raise RuntimeError(
            f"{len(idle)} quantizer(s) never ran during calibration: {idle[:8]}{' ...' if len(idle) > 8 else ''}; "
            "feed batches that reach them, disable them (disable_quantizers), or pass strict=False"
        )
    if idle:
        warnings.warn(f"{len(idle)} quantizer(s) never ran and stay uncalibrated: {idle[:8]}", stacklevel=2)
    amaxes = {}
    for name, q in quantizers:
        if name in idle:
            continue
        histogram = isinstance(q.calibrator, HistogramCalibrator)
        amaxes[name] = q.load_calib_amax(method if histogram else None, **({"percentile": percentile} if histogram else {}))
    return amaxes


def _collected_nothing(q: TensorQuantizer) -> bool:
    calib = q.calibrator
    if isinstance(calib, HistogramCalibrator):
        return calib.histogram is None
    return calib.compute_amax() is None


def recalibrate_weights(model: nn.Module) -> list[str]:
    """Set every weight quantizer's amax to ``max |W|`` of the current weight, per its axis.

    Use it after QAT or fine-tuning has moved the weights (a stale amax clips the ones that grew).
    Returns the names of the modules updated. A stored amax of another shape raises ValueError.
    """
    updated = []
    for name, module in model.named_modules():
        q = getattr(module, "_weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if isinstance(q, TensorQuantizer) and isinstance(weight, torch.Tensor):
            q.amax = amax_per_axis(weight, q.axis).to(torch.float32)
            updated.append(name)
    return updated


def _select(model: nn.Module, pattern: str) -> list[tuple[str, TensorQuantizer]]:
    regex = re.compile(pattern)
    found = list(named_quantizers(model))
    chosen = [(n, q) for n, q in found if regex.search(n)]
    if not chosen:
        sample = [n for n, _ in found[:5]]
        raise ValueError(f"no quantizer name matches {pattern!r} (names look like {sample})")
    return chosen


def _set_attr(name: str, q: TensorQuantizer, key: str, value: Any) -> None:
    public = key.lstrip("_")
    prop = getattr(type(q), public, None)
    if isinstance(prop, property) and prop.fset is not None:
        setattr(q, public, value)  # validated setter (num_bits, narrow_range, amax)
    elif hasattr(q, "_" + public):
        setattr(q, "_" + public, value)  # a plain field such as _disabled or _if_quant
    else:
        raise AttributeError(f"{name}: TensorQuantizer has no attribute {key!r}")


def set_quantizer_by_name(model: nn.Module, pattern: str, **attrs: Any) -> list[str]:
    """Set attributes (``num_bits=4``, ``_disabled=True``, ``narrow_range=True`` ...) on every quantizer
    whose module name matches the regular expression ``pattern`` (``re.search``). Returns the names.
    """
    chosen = _select(model, pattern)
    for name, q in chosen:
        for key, value in attrs.items():
            _set_attr(name, q, key, value)
    return [n for n, _ in chosen]


def enable_quantizers(model: nn.Module, pattern: str = ".*") -> list[str]:
    """Enable the quantizers whose names match ``pattern``; returns their names."""
    chosen = _select(model, pattern)
    for _, q in chosen:
        q.enable()
    return [n for n, _ in chosen]


def disable_quantizers(model: nn.Module, pattern: str = ".*") -> list[str]:
    """Disable (bypass) the quantizers whose names match ``pattern``; returns their names."""
    chosen = _select(model, pattern)
    for _, q in chosen:
        q.disable()
    return [n for n, _ in chosen]


def _describe_amax(q: TensorQuantizer) -> str:
    amax = q.amax
    if amax is None:
        return "dynamic"
    if amax.numel() == 1:
        return f"{amax.item():.4g}"
    return f"{amax.min().item():.4g}..{amax.max().item():.4g} ({amax.numel()})"


def _describe_state(q: TensorQuantizer) -> str:
    if q._disabled:
        return "disabled"
    flags = [flag for flag, on in (("quant", q._if_quant), ("calib", q._if_calib), ("clip", q._if_clip)) if on]
    return "+".join(flags) or "pass-through"


def quantizer_summary(model: nn.Module) -> str:
    """A text table of every quantizer: name, bits (``u`` unsigned, ``n`` narrow), axis, amax, state.

    A per-channel amax shows as ``min..max (count)``; ``dynamic`` means no amax is stored.
    """
    rows = [("name", "bits", "axis", "amax", "state")]
    for name, q in named_quantizers(model):
        bits = f"{q.num_bits}{'u' if q.unsigned else 'n' if q.narrow_range else ''}"
        axis = "-" if q.axis is None else str(q.axis)
        rows.append((name or "(root)", bits, axis, _describe_amax(q), _describe_state(q)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(rows) - 1} quantizer(s)")
    return "\n".join(lines)
