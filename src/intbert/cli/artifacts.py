"""The folder ``intbert quantize`` and ``intbert qat`` write, and loading it back.

Layout: the model's ``config.json`` and weights (``FrozenIBert.save_pretrained`` for a frozen I-BERT, the
transformers ``save_pretrained`` of the calibrated model otherwise), the tokenizer files, and
``quantization_report.json``. The report's ``format`` says how to load the weights, and its ``source`` names
the float checkpoint that ``eval`` and ``bench`` compare against.

Writing goes to a hidden folder beside the target that replaces it in one step at the end (an existing target
only with --overwrite), so an interrupted run never leaves a half-written model, nor a missing one: the hidden
folders of a killed run are removed, or restored in place of a target they had replaced, by the next write
or read of that folder (``intbert.atomic``).
"""

from __future__ import annotations

import json
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
    """Save ``model`` (frozen or transformers), ``tokenizer`` and ``report`` to ``out`` as one step a reader sees
    whole (``intbert.atomic.replace_directory``: an existing ``out`` is swapped with the complete new folder,
    or restored if the swap fails; a mount point is filled in place, the report last)."""
    from intbert.atomic import replace_directory

    check_output_dir(out, overwrite)
    with replace_directory(out, last=(REPORT_NAME,)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
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
