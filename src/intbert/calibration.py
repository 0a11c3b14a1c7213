"""``intbert.calibrate``: one verb for both families, dispatched on the modules the model contains."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from .models.ibert.calibration import calibrate_ibert
from .models.ibert.quant_modules import QuantAct
from .models.qdqbert.helpers import calibrate_qdq
from .quantization.tensor_quantizer import TensorQuantizer


def calibrate(
    model: nn.Module,
    batches: Iterable,
    method: str | None = None,
    *,
    percentile: float = 99.99,
    forward_fn: Callable | None = None,
    progress: bool = False,
) -> nn.Module:
    """Set every activation range of a quantized model from ``batches``, in one call.

    I-BERT (the model has ``QuantAct`` modules): method "mse" (default), "minmax" or "ema"; also sets
    every IntLayerNorm shift. QDQBERT (``TensorQuantizer`` modules): method "max" (default), "percentile",
    "mse" or "entropy". ``batches`` yields dicts of model keyword arguments (or tensors of input ids).
    Returns the model, calibrated in place.
    """
    modules = list(model.modules())
    if any(isinstance(m, QuantAct) for m in modules):
        return calibrate_ibert(model, batches, method=method or "mse", forward_fn=forward_fn, progress=progress)
    if any(isinstance(m, TensorQuantizer) for m in modules):
        calibrate_qdq(model, batches, method=method or "max", percentile=percentile, progress=progress,
                      forward_fn=forward_fn)
        return model
    raise ValueError(
        f"{type(model).__name__} has no quantizers to calibrate; build an I-BERT with config.quant_mode=True "
        "or a QDQBERT model"
    )
