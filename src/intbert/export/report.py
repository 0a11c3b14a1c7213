"""What ``verify_onnx`` reports, and the types its verifiers share: the report, the running differences, a graph
loaded in a runtime.

Its own module so that each family's verifier (``verify.py`` for QDQ graphs, ``ibert_verify.py`` for integer I-BERT
graphs) depends on these types and ``verify_onnx`` depends on the verifiers, with no import back (the verifiers
were once reached through each other: ``ibert_onnx`` <-> ``verify``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DiffTally", "LoadedGraph", "VerifyReport"]


@dataclass(frozen=True)
class VerifyReport:
    """Agreement between a model and its ONNX export on some batches.

    ``max_abs_diff`` / ``mean_abs_diff``: over every element of every output of every batch. ``per_output``: the same
    two numbers per output name. ``int8_kernels``: int8 kernels in onnxruntime's optimized graph (by op type in
    ``int8_kernel_counts``); ``unfused_dequantized_gemms``: quantized MatMul/Gemm nodes ORT left in float32.
    With ``runtime == "openvino"``: ``int8_kernels`` counts the graph's quantized GEMMs (MatMul/Gemm fed by a
    DequantizeLinear) that OpenVINO's compiled model runs in an int8 node (``int8_kernel_counts`` by that node's
    layer type; a fused attention ``Subgraph`` holds two), ``unfused_dequantized_gemms`` the others, and
    ``metadata["openvino.inference_precision"]`` the precision its float parts were compiled to.
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
    runtime: str = "onnxruntime"

    def __str__(self) -> str:
        kernels = ", ".join(f"{op} {n}" for op, n in self.int8_kernel_counts.items()) or "none"
        text = (f"max |diff| {self.max_abs_diff:.3g}, mean |diff| {self.mean_abs_diff:.3g} over {self.batches} "
                f"batches; int8 kernels in {self.runtime}: {self.int8_kernels} ({kernels})")
        if self.int8_hidden_equal is not None:
            text += f"; int8 hidden states bit-identical: {'yes' if self.int8_hidden_equal else 'NO'}"
        return text


class DiffTally:
    """Per-output max, sum and count of |runtime - model| over the compared batches (both families)."""

    def __init__(self, names: list[str], source: str, runtime: str = "onnxruntime"):
        self.source = source  # how the error message names the reference ("torch", "the model")
        self.runtime = runtime
        self.max = dict.fromkeys(names, 0.0)
        self.sum = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)
        self.batches = 0

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        if want.shape != got.shape:
            raise ValueError(f"output {name}: {self.runtime} gave shape {got.shape}, {self.source} {want.shape}")
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


@dataclass(frozen=True)
class LoadedGraph:
    """A graph ready to run in one runtime: its names, a run function, its metadata and the int8 GEMMs the runtime
    chose (``run(feed)`` returns the outputs in ``output_names`` order; ``runtime`` names the runtime, ``path`` the
    file)."""

    input_names: list[str]
    output_names: list[str]
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
    metadata: dict[str, str]
    int8_kernels: int
    int8_kernel_counts: dict[str, int]
    unfused_dequantized_gemms: int
    runtime: str = "onnxruntime"
    path: str = ""

    def run_inputs(self, inputs: dict) -> list[np.ndarray]:
        """``run`` on a batch of torch tensors (the graph's inputs are int64)."""
        return self.run({k: v.cpu().numpy().astype(np.int64) for k, v in inputs.items()})

    def report(self, tally: DiffTally, overall: list[str], **fields) -> VerifyReport:
        """The report of a comparison: ``tally``'s differences (``overall`` as in ``DiffTally.summary``), this
        graph's int8 kernels, target and metadata, and a verifier's own ``fields``."""
        return VerifyReport(**tally.summary(overall), int8_kernels=self.int8_kernels,
                            int8_kernel_counts=self.int8_kernel_counts,
                            unfused_dequantized_gemms=self.unfused_dequantized_gemms,
                            target=self.metadata.get("intbert.target"), metadata=self.metadata, runtime=self.runtime,
                            **fields)
