"""The folder ``intbert quantize`` and ``intbert qat`` write, and loading it back.

Layout: the model's ``config.json`` and weights (``FrozenIBert.save_pretrained`` for a frozen I-BERT, the
transformers ``save_pretrained`` of the calibrated model otherwise), the tokenizer files, and
``quantization_report.json``. The report's ``format`` says how to load the weights, and its ``source`` names
the float checkpoint that ``eval`` and ``bench`` compare against.

Writing goes to a hidden folder beside the target that is renamed into place at the end, so an
interrupted run never leaves a half-written model (an existing target is only replaced with --overwrite).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from . import deploy
from .checkpoints import REPORT_NAME, Checkpoint, inspect_checkpoint, load_float, model_class
from .errors import UsageError

#: The saved formats, and what each is in words (for tables and messages).
FORMATS = {"frozen": "I-BERT, frozen integer engine", "simulation": "I-BERT, calibrated simulation",
           "qdq": "QDQBERT, calibrated fake-quant"}


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work is done, to write over an existing non-empty folder without --overwrite."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is a file; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")


def write_model_dir(out: Path, model: nn.Module, tokenizer, report: dict, overwrite: bool) -> Path:
    """Save ``model`` (frozen or transformers), ``tokenizer`` and ``report`` to ``out`` in one rename."""
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files of a model folder (or of one file): what deployment ships."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".onnx"))


def load_quantized(ckpt: Checkpoint, device: str = "cpu") -> nn.Module:
    """The model of a folder intbert wrote, in eval mode: a FrozenIBert, a calibrated I-BERT simulation or a
    calibrated QDQBERT."""
    fmt = ckpt.report.get("format")
    if fmt not in FORMATS:
        raise UsageError(f"{ckpt.path / REPORT_NAME} has format {fmt!r}; this intbert reads {sorted(FORMATS)}")
    if fmt == "frozen":
        try:
            return deploy.load_frozen(ckpt.path, device=device)
        except ValueError as err:  # the engine's message for a truncated, mismatched or other-version file
            raise UsageError(f"cannot load the frozen model in {ckpt.path}: {err}; quantize it again") from None
    return model_class(ckpt.family, ckpt.head).from_pretrained(ckpt.path).to(device).eval()


def source_checkpoint(ckpt: Checkpoint, override: str | Path | None = None) -> Checkpoint:
    """The float checkpoint a quantized folder was made from (``override``: --float), checked to exist."""
    if override is not None:
        return inspect_checkpoint(override)
    source = (ckpt.report or {}).get("source", {}).get("path")
    if not source:
        raise UsageError(f"{ckpt.path / REPORT_NAME} names no source model; pass --float MODEL")
    if not Path(source).is_dir():
        raise UsageError(f"the float model {source} that {ckpt.path} was made from is gone; pass --float MODEL")
    return inspect_checkpoint(source)


def load_pair(ckpt: Checkpoint, float_override=None, device: str = "cpu") -> tuple[nn.Module, nn.Module]:
    """(float reference, quantized model) of a quantized folder, both on ``device``, heads matching."""
    source = source_checkpoint(ckpt, float_override)
    quantized = load_quantized(ckpt, device)
    return load_float(source, ckpt.head).to(device), quantized
