"""``verify_onnx`` for integer I-BERT graphs (``export_ibert_onnx``): the graph's integers against the engine's.

The verifier of the ``"ibert"`` family in ``verify.VERIFIERS``: it gets the graph already loaded in onnxruntime
(``report.LoadedGraph``) and returns a ``VerifyReport`` whose ``int8_hidden_equal`` says whether the graph's int8
hidden states equal the engine's in every batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .batches import as_inputs
from .ibert_onnx import INT8_OUTPUT, as_frozen, engine_int8
from .report import DiffTally, LoadedGraph, VerifyReport

__all__ = ["verify_ibert_onnx"]


def verify_ibert_onnx(model: nn.Module, graph: LoadedGraph, batches: Iterable) -> VerifyReport:
    """Compare a graph written by `export_ibert_onnx` with ``model`` on ``batches`` (called by `verify_onnx`).

    ``model``: the FrozenIBert, or the simulation it was frozen from (frozen here with the reference backend to read
    its integers: slow for large models, pass the FrozenIBert to use its own backend). Every output is compared with
    the model's: ``last_hidden_state_int8`` with the engine's int8 states (``int8_hidden_equal``), padded positions
    included (``frozen.encoder.padded()``: the graph computes them), ``last_hidden_state`` with int8 * scale, and the
    head's fields with the model's outputs.
    """
    frozen = as_frozen(model)
    metadata = graph.metadata
    exported = metadata.get("intbert.model_class")
    if exported is not None and exported != frozen.head_name:
        raise ValueError(f"the graph was exported from a {exported}, not a {frozen.head_name}")
    output_names = graph.output_names
    tally = DiffTally(output_names, "the model", graph.runtime)
    int8_equal = True
    scale = frozen.encoder.boundary_scales()[-1].cpu()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = as_inputs(batch, graph.input_names, frozen.config)
                q = engine_int8(frozen, inputs)
                reference = {INT8_OUTPUT: q, "last_hidden_state": q.to(torch.float32) * scale}
                with frozen.encoder.padded():  # per-token outputs at padded positions too, as the graph's
                    out = model(**{k: v.to(frozen.device) for k, v in inputs.items()}, return_dict=True)
                for name, value in zip(output_names, graph.run_inputs(inputs)):
                    want = (reference[name] if name in reference else getattr(out, name)).detach().cpu().numpy()
                    tally.add(name, value, want)
                    if name == INT8_OUTPUT:
                        int8_equal = int8_equal and bool(np.array_equal(value, want))
                tally.batches += 1
    finally:
        model.train(was_training)
    # The int8 output is reported apart (int8_hidden_equal): its unit is one quantization step, not a float value.
    return graph.report(tally, [name for name in output_names if name != INT8_OUTPUT], int8_hidden_equal=int8_equal)
