"""``quantization_report.json``: how a model was quantized, with every range and amax, written beside it.

I-BERT: each QuantAct's calibrated [min, max] and bit width, each IntLayerNorm's shift, and each weight's
scale (per output channel for the encoder linears). QDQBERT: each TensorQuantizer's bits, axis, state and
amax (a list for per-channel weights). Numbers are stored as JSON floats (float32 values print exactly
enough to rebuild the scale they define).
"""

from __future__ import annotations

import datetime as _dt

import torch
from torch import nn

import intbert
from intbert.models.ibert.quant_modules import IntLayerNorm, QuantAct, QuantEmbedding, QuantLinear
from intbert.quantization.workflow import named_quantizers

REPORT_VERSION = 1


def _numbers(t: torch.Tensor | None):
    if t is None:
        return None
    values = t.detach().float().reshape(-1).tolist()
    return values[0] if len(values) == 1 else values


def ibert_ranges(model: nn.Module) -> dict:
    """Every calibrated quantity of a quant-mode I-BERT simulation (before freezing: the frozen model's
    integer constants are derived from exactly these)."""
    activations, shifts, weights = {}, {}, {}
    for name, m in model.named_modules():
        if isinstance(m, QuantAct):
            activations[name] = {"bits": m.activation_bit, "min": _numbers(m.x_min), "max": _numbers(m.x_max)}
        elif isinstance(m, IntLayerNorm):
            shifts[name] = int(m.shift.item())
        elif isinstance(m, QuantLinear) and m.quant_mode:
            _, scale = m.quantized_weight()
            weights[name] = {"bits": m.weight_bit, "per_channel": bool(m.per_channel), "scale": _numbers(scale)}
        elif isinstance(m, QuantEmbedding) and m.quant_mode:
            _, scale = m.quantized_weight()
            weights[name] = {"bits": m.weight_bit, "per_channel": False, "scale": _numbers(scale)}
    return {"activations": activations, "layernorm_shifts": shifts, "weights": weights}


def qdq_ranges(model: nn.Module) -> dict:
    """Every TensorQuantizer of a QDQBERT model: bits, axis, signedness, narrow range, on/off, amax."""
    quantizers = {}
    for name, q in named_quantizers(model):
        quantizers[name] = {"bits": q.num_bits, "axis": q.axis, "unsigned": bool(q.unsigned),
                            "narrow_range": bool(q.narrow_range), "enabled": not q._disabled,
                            "amax": _numbers(q.amax)}
    return {"quantizers": quantizers}


def build_report(*, scheme: str, fmt: str, method: str, model: nn.Module, source, calibration: dict,
                 extra: dict | None = None) -> dict:
    """The report of a quantized folder. ``fmt``: "frozen" (integer engine files), "simulation" (a calibrated
    quant-mode I-BERT checkpoint) or "qdq" (a calibrated QDQBERT checkpoint); ``source``: the Checkpoint the
    float model came from (its path is where ``intbert eval`` and ``bench`` find the float reference, and the
    fingerprint of its weights is how they check that what they find there is still that model)."""
    report = {
        "report_version": REPORT_VERSION,
        "intbert_version": intbert.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "scheme": scheme,
        "format": fmt,
        "method": method,
        "source": {"path": str(source.path.resolve()), "family": source.family, "head": source.head,
                   "fingerprint": intbert.fingerprint(source.path)},
        "calibration": calibration,
    }
    report.update(extra or {})
    report["ranges"] = ibert_ranges(model) if scheme == "ibert" else qdq_ranges(model)
    return report
