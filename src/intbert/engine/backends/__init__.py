"""Backends of the frozen engine, chosen by device unless named.

* ``reference``: plain torch integer ops (CPU, CUDA): the definition.
* ``cpu``: onnxruntime integer GEMMs + compiled integer elementwise kernels (needs onnxruntime).
* ``cuda``: int8 tensor-core GEMMs (``torch._int_mm``) + compiled (Triton) integer elementwise kernels.
"""

from __future__ import annotations

import torch

from .base import Backend
from .reference import ReferenceBackend

BACKENDS = ("reference", "cpu", "cuda")


def _make(name: str) -> Backend:
    if name == "reference":
        return ReferenceBackend()
    if name == "cpu":
        from .cpu import CPUBackend

        return CPUBackend()
    if name == "cuda":
        from .cuda import CUDABackend

        return CUDABackend()
    raise ValueError(f"unknown engine backend {name!r}; choose one of {BACKENDS} (or None to choose by device)")


def default_backend_name(device: torch.device) -> str:
    """cuda on a GPU; cpu where onnxruntime is installed; else the reference backend."""
    if device.type == "cuda":
        return "cuda"
    from .cpu import cpu_backend_available

    return "cpu" if cpu_backend_available() else "reference"


def resolve_backend(name: str | None, device: torch.device) -> Backend:
    backend = _make(name or default_backend_name(device))
    if not backend.supports(device):
        raise ValueError(f"engine backend {backend.name!r} cannot run on {device}; move the model "
                         f"or pick another backend ({BACKENDS})")
    return backend


__all__ = ["BACKENDS", "Backend", "ReferenceBackend", "default_backend_name", "resolve_backend"]
