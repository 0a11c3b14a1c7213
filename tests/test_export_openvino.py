"""QDQBERT's ONNX graph deployed with OpenVINO: ``verify_onnx(..., runtime="openvino")`` agrees with PyTorch, counts the
quantized GEMMs OpenVINO runs in int8, and refuses what OpenVINO cannot run exactly (the integer I-BERT graph).

Tiny models of test_export_qdq_onnx (2 layers, hidden 32; 12 quantized linears and 4 attention matmuls). The tests that
run OpenVINO skip without it (``pip install openvino``, part of the ``bench`` extra); the argument checks run everywhere.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from intbert.export import export_onnx, verify_onnx  # noqa: E402
from test_export_qdq_onnx import (  # noqa: E402
    ATTENTION_MATMULS,
    QUANTIZED_LINEARS,
    assert_agrees,
    calibrated,
    other_shapes,
)

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino not installed (pip install openvino)")


@needs_openvino
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_openvino_runs_the_qdq_graph_as_pytorch_does_with_int8_linears(tmp_path, target):
    model = calibrated()
    path = export_onnx(model, tmp_path / "model.onnx", target, dynamo=False).path
    report = verify_onnx(model, path, other_shapes(), runtime="openvino", threads=1)
    assert_agrees(report)  # float32 float parts: the same bounds as onnxruntime
    assert report.runtime == "openvino" and "int8 kernels in openvino" in str(report)
    assert report.metadata["openvino.inference_precision"] == "f32"
    assert report.target == target and report.batches == len(other_shapes())
    assert report.int8_kernel_counts.get("FullyConnected") == QUANTIZED_LINEARS  # every linear layer in int8
    total = QUANTIZED_LINEARS + ATTENTION_MATMULS
    assert report.int8_kernels + report.unfused_dequantized_gemms == total
    if target == "tensorrt":
        # Signed int8 at zero point 0: OpenVINO (2026.4.1) runs the attention matmuls in int8 too, inside its fused
        # attention Subgraph. The onnxruntime target's uint8 attention inputs stay float there (measured: 4 of 4).
        assert report.int8_kernels == total and report.unfused_dequantized_gemms == 0


@needs_openvino
def test_openvino_config_overrides_the_float32_default(tmp_path):
    """The documented knob: compile properties pass through (here the thread count, which any CPU accepts)."""
    model = calibrated()
    path = export_onnx(model, tmp_path / "model.onnx", dynamo=False).path
    report = verify_onnx(model, path, other_shapes()[:1], runtime="openvino",
                         openvino_config={"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    assert_agrees(report)


@needs_openvino
def test_openvino_refuses_the_integer_ibert_graph(tmp_path):
    """OpenVINO's CPU plugin runs int64 as int32: measured int8 states off by up to 252, so verify says to use ORT."""
    from intbert.engine import freeze
    from test_ibert_modeling import batch, head_model

    frozen = freeze(head_model("model", quant=True), backend="reference")
    path = export_onnx(frozen, tmp_path / "ibert.onnx").path
    with pytest.raises(ValueError, match="integer I-BERT graph.*runtime='onnxruntime'"):
        verify_onnx(frozen, path, [batch(0)], runtime="openvino")


def test_verify_without_openvino_names_the_pip_command(tmp_path, monkeypatch):
    model = calibrated()
    path = export_onnx(model, tmp_path / "model.onnx", dynamo=False).path
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ImportError, match="pip install openvino"):
        verify_onnx(model, path, other_shapes(), runtime="openvino")


def test_verify_refuses_an_unknown_runtime_and_openvino_options_elsewhere(tmp_path):
    model = calibrated()
    path = export_onnx(model, tmp_path / "model.onnx", dynamo=False).path
    with pytest.raises(ValueError, match="runtime must be one of"):
        verify_onnx(model, path, other_shapes(), runtime="tensorrt")
    with pytest.raises(ValueError, match="openvino_config is only for runtime='openvino'"):
        verify_onnx(model, path, other_shapes(), openvino_config={"INFERENCE_NUM_THREADS": 1})
