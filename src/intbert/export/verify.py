"""``verify_onnx``: run the PyTorch model and its ONNX export on the same batches and say how far apart they are.

The reference is the model as exported: for a ``reduce_range`` export (read from the file's ``intbert.reduce_range``
metadata) the model's 8-bit weights are temporarily given the 7 bits the graph holds, so the report measures the
export, not that deliberate change. The onnxruntime session uses ORT's full optimizations (what a deployment runs),
and the report also counts the int8 kernels in the graph ORT optimized.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .ort_kernels import inspect_optimized_graph
from .qdq_form import reduced_weight_range

__all__ = ["VerifyReport", "check_graph_ids", "verify_onnx"]


@dataclass(frozen=True)
class VerifyReport:
    """Agreement between a model and its ONNX export on some batches.

    ``max_abs_diff`` / ``mean_abs_diff``: over every element of every output of every batch. ``per_output``: the same
    two numbers per output name. ``int8_kernels``: int8 kernels in onnxruntime's optimized graph (by op type in
    ``int8_kernel_counts``); ``unfused_dequantized_gemms``: quantized MatMul/Gemm nodes ORT left in float32.
    ``int8_hidden_equal``: I-BERT graphs only, whether ``last_hidden_state_int8`` equals the engine's int8 states in
    every batch (that output is then left out of ``max_abs_diff`` / ``mean_abs_diff``, which cover the float outputs).
    """

    max_abs_diff: float
    mean_abs_diff: float
    per_output: dict[str, tuple[float, float]]
    int8_kernels: int
    int8_kernel_counts: dict[str, int]
    unfused_dequantized_gemms: int
    batches: int
    target: str | None = None
    reduce_range: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    int8_hidden_equal: bool | None = None

    def __str__(self) -> str:
        kernels = ", ".join(f"{op} {n}" for op, n in self.int8_kernel_counts.items()) or "none"
        text = (f"max |diff| {self.max_abs_diff:.3g}, mean |diff| {self.mean_abs_diff:.3g} over {self.batches} batches; "
                f"int8 kernels in onnxruntime: {self.int8_kernels} ({kernels})")
        if self.int8_hidden_equal is not None:
            text += f"; int8 hidden states bit-identical: {'yes' if self.int8_hidden_equal else 'NO'}"
        return text


class DiffTally:
    """Per-output max, sum and count of |onnxruntime - model| over the compared batches (both families)."""

    def __init__(self, names: list[str], source: str):
        self.source = source  # how the error message names the reference ("torch", "the model")
        self.max = dict.fromkeys(names, 0.0)
        self.sum = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)
        self.batches = 0

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        if want.shape != got.shape:
            raise ValueError(f"output {name}: onnxruntime gave shape {got.shape}, {self.source} {want.shape}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        self.max[name] = max(self.max[name], float(diff.max(initial=0.0)))
        self.sum[name] += float(diff.sum())
        self.count[name] += diff.size

    def summary(self, overall: list[str]) -> dict:
        """VerifyReport's difference fields; ``overall`` names the outputs in max_abs_diff / mean_abs_diff."""
        if not self.batches:
            raise ValueError("batches is empty; give at least one batch to compare on")
        total = sum(self.count[name] for name in overall)
        return {
            "max_abs_diff": max((self.max[name] for name in overall), default=0.0),
            "mean_abs_diff": sum(self.sum[name] for name in overall) / max(total, 1),
            "per_output": {name: (self.max[name], self.sum[name] / max(self.count[name], 1)) for name in self.max},
            "batches": self.batches,
        }


#: Id inputs and the config field that bounds each. The exported graphs do not check ids (see check_graph_ids).
ID_BOUNDS = (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size"))


def check_graph_ids(inputs: dict[str, torch.Tensor], config) -> None:
    """Refuse ids outside [0, size) before they reach an exported graph, which does not check them.

    Both exporters look ids up with ONNX ``Gather``, which reads a negative index as counting from the end of
    the table: ``token_type_ids = -1`` gives the last type's embedding and ``input_ids = -1`` the last word, a
    silent wrong answer, where the PyTorch models raise. onnxruntime fails on an id at or past the table's end
    (an ``INVALID_ARGUMENT`` error from the Gather node). Call this on inputs before ``session.run``.
    """
    for name, field in ID_BOUNDS:
        t, size = inputs.get(name), getattr(config, field, None)
        if t is None or size is None or not t.numel():
            continue
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} must lie in [0, {size}) (config.{field}), got values {lo}..{hi}; the ONNX "
                             "graph does not check ids (a negative id reads the table from its end)")


def _as_inputs(batch, names: list[str], config=None) -> dict[str, torch.Tensor]:
    """A batch (dict of model inputs, or a tensor of input ids) as the graph's inputs, with the model's defaults;
    with ``config``, ids are checked first (:func:`check_graph_ids`)."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError("each batch must be a dict with 'input_ids' (e.g. a tokenizer's output) or a tensor of ids")
    ids = batch["input_ids"]
    defaults = {"attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    missing = [name for name in names if name not in batch and name not in defaults]
    if missing:
        raise ValueError(f"the graph needs inputs {missing}, which the batch lacks")
    inputs = {name: batch[name] if name in batch else defaults[name] for name in names}
    if config is not None:
        check_graph_ids(inputs, config)
    return inputs


def verify_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    batches: Iterable,
    *,
    threads: int | None = None,
) -> VerifyReport:
    """Compare ``model`` (eval, no grad) with the ONNX file in onnxruntime (CPU) on ``batches``.

    ``batches``: dicts of model inputs (``input_ids`` and optionally ``attention_mask``, ``token_type_ids``) or
    tensors of input ids. Outputs are matched by name (the graph's outputs are ``ModelOutput`` fields).

    The graphs do not check ids (ONNX ``Gather`` reads a negative id from the end of the table, and onnxruntime
    fails on ids past its end), so every batch's ``input_ids`` and ``token_type_ids`` are checked here against
    the model's config first; check ids the same way (:func:`check_graph_ids`) wherever the graph is deployed.

    Raises:
        ValueError: the file was exported from another model class, no batch was given, or a batch holds ids
            outside [0, vocab_size) / [0, type_vocab_size).
    """
    session, graph = inspect_optimized_graph(onnx_path, threads=threads)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if metadata.get("intbert.exporter") == "ibert":  # integer I-BERT graph: compared with the engine's integers
        from .ibert_onnx import verify_ibert_onnx

        return verify_ibert_onnx(model, session, graph, metadata, batches)
    exported_class = metadata.get("intbert.model_class")
    if exported_class is not None and exported_class != type(model).__name__:
        raise ValueError(f"{onnx_path} was exported from a {exported_class}, not a {type(model).__name__}")
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    reduce_range = metadata.get("intbert.reduce_range") == "true"

    tally = DiffTally(output_names, "torch")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), reduced_weight_range(model, enabled=reduce_range):
            for batch in batches:
                inputs = _as_inputs(batch, input_names, model.config)
                device = next(model.parameters()).device
                expected = model(**{k: v.to(device) for k, v in inputs.items()}, return_dict=True)
                got = session.run(output_names, {k: v.cpu().numpy().astype(np.int64) for k, v in inputs.items()})
                for name, value in zip(output_names, got):
                    tally.add(name, value, getattr(expected, name).detach().cpu().double().numpy())
                tally.batches += 1
    finally:
        model.train(was_training)
    return VerifyReport(
        **tally.summary(output_names),
        int8_kernels=graph.int8_kernels,
        int8_kernel_counts=graph.int8_kernel_counts(),
        unfused_dequantized_gemms=graph.unfused_dequantized_gemms,
        target=metadata.get("intbert.target"),
        reduce_range=reduce_range,
        metadata=metadata,
    )
