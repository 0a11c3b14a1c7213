"""The two deployment steps, reached from the command line in this one place: freezing an I-BERT into the
integer engine (``intbert.engine``) and exporting a QDQBERT to ONNX (``intbert.export``).

Both packages are imported when a step runs, so a missing optional dependency (onnx, onnxruntime) turns
into an ``Unavailable`` error naming what to install, not a failed ``import intbert.cli``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Unavailable, UsageError

if TYPE_CHECKING:
    from torch import nn

_ONNX_PIP = "pip install 'intbert[onnx]'"


def _module(name: str, why: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        # Only a missing package is "unavailable"; an import error inside intbert is a bug and keeps its traceback.
        if err.name and (err.name == name or not err.name.startswith("intbert")):
            raise Unavailable(f"{why} needs {err.name!r}, which is not installed ({_ONNX_PIP})") from None
        raise


def freeze(model: nn.Module) -> nn.Module:
    """The frozen integer model (``FrozenIBert``) of a calibrated quant-mode I-BERT; bit-exact with it."""
    return _module("intbert.engine", "freezing an I-BERT").freeze(model)


def load_frozen(path: Path, device: str = "cpu") -> nn.Module:
    return _module("intbert.engine", "loading a frozen I-BERT").FrozenIBert.from_pretrained(path, device=device)


def export_onnx(model: nn.Module, path: Path, target: str):
    """Export a calibrated QDQBERT model to ``path``; returns the exporter's result (it names the file)."""
    export = _module("intbert.export", "ONNX export")
    try:
        with _quiet_torch_onnx():
            return export.export_onnx(model, path, target=target)
    except ModuleNotFoundError as err:
        raise Unavailable(f"ONNX export needs {err.name!r}, which is not installed ({_ONNX_PIP})") from None


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
    export = _module("intbert.export", "ONNX verification")
    try:
        return export.verify_onnx(model, path, batches)
    except ModuleNotFoundError as err:
        raise Unavailable(f"ONNX verification needs {err.name!r}, which is not installed ({_ONNX_PIP})") from None


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
