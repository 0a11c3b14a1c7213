"""ONNX export of quantized models, and the check that onnxruntime reproduces them.

``export_onnx`` picks the exporter by the model's family (below: the one place to add a family); ``verify_onnx``
compares any exported model with its PyTorch original. onnx, onnxruntime and onnxscript (the dynamo exporter) are
imported only when an export or a verification runs: ``pip install 'intbert[onnx]'``.
"""

from __future__ import annotations

import os

from torch import nn

from .errors import ExportError
from .ibert_onnx import IBertExportResult, export_ibert_onnx
from .qdq_onnx import QDQExportResult, export_qdqbert_onnx
from .verify import VerifyReport, check_graph_ids, verify_onnx

__all__ = ["ExportError", "IBertExportResult", "QDQExportResult", "VerifyReport", "check_graph_ids", "export_onnx",
           "verify_onnx"]


def export_onnx(model: nn.Module, path: str | os.PathLike, target: str = "onnxruntime", **options):
    """Export a calibrated quantized ``model`` to the ONNX file ``path`` for ``target``.

    QDQBERT heads (``QDQBertPreTrainedModel``): QuantizeLinear/DequantizeLinear graphs, ``target`` "onnxruntime" or
    "tensorrt"; ``options`` are `export_qdqbert_onnx`'s (``opset``, ``dynamo``, ``reduce_range``); returns a
    `QDQExportResult`.

    I-BERT: a ``FrozenIBert`` (``intbert.freeze(model)``), or a calibrated quant-mode I-BERT simulation (frozen here):
    an integer-op graph bit-identical to the engine, ``target`` "onnxruntime"; ``options`` are `export_ibert_onnx`'s
    (``kernel``); returns an `IBertExportResult`.

    Raises:
        TypeError: no exporter handles this model's family.
    """
    from intbert.engine import FrozenIBert
    from intbert.models.ibert import IBertPreTrainedModel
    from intbert.models.qdqbert import QDQBertPreTrainedModel

    if isinstance(model, QDQBertPreTrainedModel):
        return export_qdqbert_onnx(model, path, target, **options)
    if isinstance(model, (FrozenIBert, IBertPreTrainedModel)):
        return export_ibert_onnx(model, path, target, **options)
    raise TypeError(
        f"export_onnx has no exporter for {type(model).__name__}; supported: QDQBERT heads (QDQBertModel, "
        "QDQBertFor*, QDQBertLMHeadModel) and I-BERT (FrozenIBert, or a calibrated quant-mode IBert* model)"
    )
