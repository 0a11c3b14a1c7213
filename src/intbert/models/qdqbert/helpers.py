"""QDQBERT workflow helpers of the reference SQuAD example (quant_trainer.py), without its global state and bugs.

* ``calibrate_qdq``: calibrate every quantizer, in eval mode, with one of the four methods. The example only ever
  ran max or percentile (its ``--calibrator mse`` crashed, entropy was not offered); here all four reach the
  toolkit's ``calibrate_quantizers``.
* ``fuse_qkv``: one amax for q, k and v, so that a deployment can run a single fused QKV GEMM (TensorRT does).
* ``clip_gelu``: the paper's "GELU10": cap the amax of the quantizers that read GELU output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from intbert.errors import UncalibratedError
from intbert.models.qdqbert.modeling_qdqbert import QDQBertOutput, QDQBertSelfAttention
from intbert.quantization import CALIBRATION_METHODS, TensorQuantizer
from intbert.quantization.calib import HISTOGRAM_METHODS, HistogramCalibrator

#: The name these helpers raised before intbert had one error for "not calibrated": the same class, kept importable
#: because it was in this module's ``__all__``. The message names the quantizer and says to calibrate first.
UncalibratedQuantizerError = UncalibratedError


def _amax_of(quantizer: TensorQuantizer, name: str) -> torch.Tensor:
    amax = getattr(quantizer, "_amax", None)
    if amax is None:
        raise UncalibratedError(f"{name} has no amax; calibrate the model first (calibrate_qdq)")
    return amax


def _share_max(quantizers: dict[str, TensorQuantizer]) -> None:
    """Set each amax to the largest of the group (per-tensor amaxes only); shapes must agree."""
    amaxes = {name: _amax_of(q, name) for name, q in quantizers.items()}
    shared = torch.stack([a.detach().reshape(()) for a in amaxes.values()]).max()
    with torch.no_grad():
        for amax in amaxes.values():
            amax.fill_(shared)


def _is_per_tensor(quantizer: TensorQuantizer) -> bool:
    amax = getattr(quantizer, "_amax", None)
    return amax is not None and amax.numel() == 1


def fuse_qkv(model: nn.Module) -> int:
    """Give q, k and v one amax per attention block: the max of the three. Returns the number of blocks fused.

    Fused, as in the reference's ``--fuse-qkv``: ``matmul_{q,k,v}_input_quantizer``. Also fused here: the
    ``query/key/value._input_quantizer`` (they read the same tensor, so a fused QKV GEMM has one input scale; their
    amaxes only differ through calibration noise). Weight quantizers are fused only when per-tensor: a per-row amax
    already gives each output row of a fused GEMM its own scale, so it is left alone (the reference did the same,
    under ``--quant-per-tensor``).

    Raises:
        UncalibratedError: a quantizer to fuse has no amax yet.
    """
    fused = 0
    for name, module in model.named_modules():
        if not isinstance(module, QDQBertSelfAttention):
            continue
        _share_max({f"{name}.matmul_{p}_input_quantizer": getattr(module, f"matmul_{p}_input_quantizer")
                    for p in "qkv"})  # fmt: skip
        linears = {p: getattr(module, p) for p in ("query", "key", "value")}
        _share_max({f"{name}.{p}._input_quantizer": lin._input_quantizer for p, lin in linears.items()})
        weights = {f"{name}.{p}._weight_quantizer": lin._weight_quantizer for p, lin in linears.items()}
        if all(_is_per_tensor(q) for q in weights.values()):
            _share_max(weights)
        fused += 1
    return fused


def clip_gelu(model: nn.Module, maxval: float) -> int:
    """Clamp the amax of each ``output.dense._input_quantizer`` (the FFN's second GEMM, which reads GELU output).

    GELU's output has a long positive tail; capping its range at ``maxval`` (10 in Wu et al. 2020) spends the
    8-bit levels where the values are, which mostly rescues max calibration. Returns the number of quantizers.

    Raises:
        ValueError: ``maxval`` is not positive.
        UncalibratedError: a quantizer has no amax yet (calibrate first; clipping a dynamic range is moot).
    """
    if not maxval > 0:
        raise ValueError(f"maxval must be > 0, got {maxval}")
    clipped = 0
    for name, module in model.named_modules():
        if isinstance(module, QDQBertOutput):  # not QDQBertSelfOutput: attention.output reads no GELU
            amax = _amax_of(module.dense._input_quantizer, f"{name}.dense._input_quantizer")
            with torch.no_grad():
                amax.clamp_(max=maxval)
            clipped += 1
    return clipped


def calibrate_qdq(
    model: nn.Module,
    batches: Iterable,
    method: str = "max",
    percentile: float = 99.99,
    progress: bool = True,
    forward_fn: Callable | None = None,
):
    """Calibrate every quantizer of a QDQBERT model on ``batches`` (dicts of model inputs, or tensors of input ids).

    Runs in eval mode (dropout sits before the add quantizers and would skew their ranges) and restores the
    previous mode. ``method``: "max" (running abs-max), "percentile" (``percentile`` of |x|), "mse" or "entropy"
    (KL, TensorRT style). Delegates to ``intbert.quantization.workflow.calibrate_quantizers`` and returns its result.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {CALIBRATION_METHODS}")
    if method == "percentile" and not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    from intbert.quantization.workflow import calibrate_quantizers

    was_training = model.training
    model.eval()
    try:
        return calibrate_quantizers(
            model, batches, forward_fn=forward_fn, method=method, percentile=percentile, progress=progress
        )
    finally:
        model.train(was_training)


def recompute_amax(model: nn.Module, method: str, percentile: float = 99.99) -> int:
    """Re-read the histograms of the last histogram calibration with another method; no new forward passes.

    After ``calibrate_qdq(..., method="percentile" | "mse" | "entropy")`` every activation quantizer keeps its
    histogram, so comparing methods costs one data pass, not one per method. Weight quantizers (max of the
    weight) are left as they are. Returns the number of quantizers updated.

    Raises:
        ValueError: ``method`` is not a histogram method.
        UncalibratedError: no quantizer holds a histogram (calibrate with a histogram method first).
    """
    if method not in HISTOGRAM_METHODS:
        raise ValueError(f"method={method!r} cannot be read from a histogram; use one of {HISTOGRAM_METHODS}")
    updated = 0
    for module in model.modules():
        if isinstance(module, TensorQuantizer) and isinstance(module.calibrator, HistogramCalibrator):
            if module.calibrator.histogram is not None:
                module.load_calib_amax(method, percentile=percentile)
                updated += 1
    if not updated:
        raise UncalibratedError("no quantizer holds a histogram; run calibrate_qdq with a histogram method")
    return updated


__all__ = ["UncalibratedQuantizerError", "calibrate_qdq", "clip_gelu", "fuse_qkv", "recompute_amax"]
