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
from typing import TYPE_CHECKING

from . import deploy
from .checkpoints import REPORT_NAME, Checkpoint, inspect_checkpoint
from .console import note
from .errors import UsageError
from .paths import check_output_dir

if TYPE_CHECKING:
    from torch import nn

#: The saved formats, and what each is in words (for tables and messages).
FORMATS = {"frozen": "I-BERT, frozen integer engine", "simulation": "I-BERT, calibrated simulation",
           "qdq": "QDQBERT, calibrated fake-quant"}


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
    from .loading import model_class

    return model_class(ckpt.family, ckpt.head).from_pretrained(ckpt.path).to(device).eval()


def source_checkpoint(ckpt: Checkpoint, override: str | Path | None = None, allow_other: bool = False) -> Checkpoint:
    """The float checkpoint a quantized folder was made from (``override``: --float), checked to exist and to
    hold the weights recorded at quantize time (see ``check_source``)."""
    if override is not None:
        source = inspect_checkpoint(override)
    else:
        path = (ckpt.report or {}).get("source", {}).get("path")
        if not path:
            raise UsageError(f"{ckpt.path / REPORT_NAME} names no source model; pass --float MODEL")
        if not Path(path).is_dir():
            raise UsageError(f"the float model {path} that {ckpt.path} was made from is gone; pass --float MODEL")
        source = inspect_checkpoint(path)
    check_source(ckpt, source, allow_other)
    return source


def check_source(ckpt: Checkpoint, source: Checkpoint, allow_other: bool = False) -> None:
    """Refuse a float model whose weights are not those ``ckpt`` was quantized from (its fingerprint, recorded in
    the report): another model, the bare encoder under a new head, renamed keys, or the source folder retrained
    since. Comparing against it gives numbers that look like a bad quantization. ``allow_other``: warn instead."""
    recorded = (ckpt.report or {}).get("source", {}).get("fingerprint")
    if recorded is None:
        note(f"{ckpt.path / REPORT_NAME} records no fingerprint of its float model (written by an older intbert), "
             f"so {source.path} cannot be checked to be it")
        return
    from intbert import fingerprint

    actual = fingerprint(source.path)
    if actual == recorded:
        return
    what = (f"the float weights in {source.path} are not those {ckpt.path} was quantized from (fingerprint "
            f"{actual[:15]}..., recorded {recorded[:15]}...)")
    if not allow_other:
        raise UsageError(f"{what}; pass the source checkpoint with --float MODEL, or --allow-other-float to "
                         "compare anyway")
    note(f"WARNING: {what}; comparing anyway (--allow-other-float): the numbers do not measure the quantization")
