"""The two deployment steps, reached from the command line in this one place: freezing an I-BERT into the
integer engine (``intbert.freeze``) and exporting a model to ONNX (``intbert.export_onnx``).

Both are intbert's lazy top-level names, imported when a step runs. The export's optional dependencies (onnx,
onnxruntime, onnxscript) are imported only inside an export or a verification, so a missing one turns into an
``Unavailable`` error naming what to install, not a failed ``import intbert.cli``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import intbert

from .errors import Unavailable, UsageError

if TYPE_CHECKING:
    from torch import nn

_ONNX_PIP = "pip install 'intbert[onnx]'"


@contextlib.contextmanager
def _optional_dependencies(why: str):
    """A package missing while ``why`` runs -> ``Unavailable`` naming it and the extra to install."""
    try:
        yield
    except ModuleNotFoundError as err:
        # Only a missing package is "unavailable"; an import error inside intbert is a bug and keeps its traceback.
        if err.name and not err.name.startswith("intbert"):
            raise Unavailable(f"{why} needs {err.name!r}, which is not installed ({_ONNX_PIP})") from None
        raise


def freeze(model: nn.Module) -> nn.Module:
    """The frozen integer model (``FrozenIBert``) of a calibrated quant-mode I-BERT; bit-exact with it."""
    return intbert.freeze(model)


def load_frozen(path: Path, device: str = "cpu") -> nn.Module:
    return intbert.FrozenIBert.from_pretrained(path, device=device)


def export_onnx(model: nn.Module, path: Path, target: str):
    """Export a calibrated QDQBERT model to ``path``; returns the exporter's result (it names the file)."""
    with _optional_dependencies("ONNX export"), _quiet_torch_onnx():
        return intbert.export_onnx(model, path, target=target)


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch's ONNX exporter logs a warning per torchvision op it cannot register (torchvision is not a
    dependency): noise to a user exporting a BERT. Its errors still show."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def verify_onnx(model: nn.Module, path: Path, batches: list[dict]):
    """The exporter's comparison of the ONNX file with ``model`` on ``batches`` (max/mean |diff|, int8 kernels)."""
    with _optional_dependencies("ONNX verification"):
        return intbert.verify_onnx(model, path, batches)


def onnx_session(path: Path, threads: int | None):
    """An onnxruntime session on the CPU for an exported file (what ``intbert bench`` times)."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise Unavailable(f"running an ONNX file needs onnxruntime ({_ONNX_PIP})") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...) share no base of use
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path} is not an ONNX model onnxruntime can load ({first}); give a file written by "
                         "intbert export") from None


def check_onnx_file(path: Path, option: str) -> None:
    """Refuse, before any model is loaded, a file onnxruntime cannot open (a text file, a truncated export)."""
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file")
    onnx_session(path, 1)


class OnnxModel:
    """An onnxruntime session called like the PyTorch model it was exported from: keyword tensors in, an object
    with the graph's output names (``logits``, ``last_hidden_state``) as torch tensors out."""

    def __init__(self, path: Path, config, threads: int | None = None):
        self.session = onnx_session(path, threads)
        self.config = config
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs):
        import types

        import torch

        feed = {k: v.cpu().numpy() for k, v in inputs.items() if k in self.input_names}
        values = self.session.run(self.output_names, feed)
        return types.SimpleNamespace(**{n: torch.from_numpy(v) for n, v in zip(self.output_names, values)})
