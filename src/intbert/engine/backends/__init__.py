"""Backends of the frozen engine, chosen by device unless named.

* ``reference``: the ``intops`` definitions in plain torch integer ops (CPU, CUDA): the oracle every other
  backend is tested against (its GEMM is tested against ``intops.int_matmul``, the GEMM's definition).
* ``native``: intbert's own C++ kernels (CPU; built by ``pip install``): the default on a CPU.
* ``cpu``: onnxruntime integer GEMMs + compiled integer elementwise kernels (needs onnxruntime); the
  CPU fallback where the native kernels could not be built.
* ``cuda``: int8 tensor-core GEMMs (``torch._int_mm``) + compiled (Triton) integer elementwise kernels.

Not in the registry: ``onnx_graph.OnnxGraphBackend``, whose tensors are ONNX graph tensor names; the ONNX
exporter runs the engine's ``encode`` on it to write the graph (it computes nothing on a device).
"""

from __future__ import annotations

import warnings

import torch

from .base import Backend
from .reference import ReferenceBackend


def _native():
    from .native import NativeBackend

    return NativeBackend()


def _cpu():
    from .cpu import CPUBackend

    return CPUBackend()


def _cuda():
    from .cuda import CUDABackend

    return CUDABackend()


#: name -> factory; imported lazily so a missing optional dependency only matters when chosen.
REGISTRY = {"reference": ReferenceBackend, "native": _native, "cpu": _cpu, "cuda": _cuda}
BACKENDS = tuple(REGISTRY)

_warned = []


def default_backend_name(device: torch.device) -> str:
    """cuda on a GPU; on a CPU native, else (one warning) cpu where onnxruntime is installed, else reference."""
    if device.type == "cuda":
        return "cuda"
    from .native import native_available, unavailable_reason

    if native_available():
        return "native"
    from .cpu import cpu_backend_available

    fallback = "cpu" if cpu_backend_available() else "reference"
    if not _warned:
        _warned.append(True)
        warnings.warn(f"{unavailable_reason()}; the engine falls back to the slower {fallback!r} backend",
                      RuntimeWarning, stacklevel=3)
    return fallback


def resolve_backend(name: str | None, device: torch.device) -> Backend:
    name = name or default_backend_name(device)
    if name not in REGISTRY:
        raise ValueError(f"unknown engine backend {name!r}; choose one of {BACKENDS} (or None to choose by device)")
    backend = REGISTRY[name]()
    if not backend.supports(device):
        raise ValueError(f"engine backend {backend.name!r} cannot run on {device}; move the model "
                         f"or pick another backend ({BACKENDS})")
    return backend


__all__ = ["BACKENDS", "REGISTRY", "Backend", "ReferenceBackend", "default_backend_name", "resolve_backend"]
