"""Loading a checkpoint folder's models and tokenizer: the float model (with its head, or a new one), and the
uncalibrated quantized simulation (I-BERT converted from BERT / RoBERTa, or QDQBERT).

Every float load goes through ``_from_pretrained``, which refuses what transformers would silently fill with
random numbers (missing encoder weights: renamed or prefixed keys, a lost layer) and turns a damaged file into
one line naming the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from torch import nn

import intbert
from intbert.quantization.workflow import named_quantizers

from .checkpoints import FAMILIES, HEADS, SCHEMES, Checkpoint
from .console import note
from .convert import bert_to_ibert_head, roberta_to_ibert
from .errors import UsageError


def model_class(family: str, head: str) -> type:
    name = FAMILIES[family] + HEADS[head]
    return getattr(intbert if family in ("ibert", "qdqbert") else transformers, name)


def _weights_present(path: Path) -> None:
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UsageError(f"{path} has a config.json but no weights (*.safetensors or *.bin)")


def _from_pretrained(cls: type, path: Path, new_head: str, **kwargs) -> nn.Module:
    """``cls.from_pretrained(path)`` that refuses a checkpoint lacking encoder weights (renamed or prefixed keys, a
    missing layer: transformers would fill them with random numbers and only log it). Head weights the checkpoint
    lacks are newly initialised: ``new_head="note"`` says so on stderr (a head meant to be new, e.g. a classifier
    on a bare encoder); ``"expected"`` says nothing (the caller trains it next); ``"refuse"`` is a UsageError (a
    float reference with a random head compares with nothing)."""
    from intbert import MissingWeightsError, load_float_checkpoint

    from safetensors import SafetensorError

    try:
        model, report = load_float_checkpoint(cls, path, **kwargs)
    except MissingWeightsError as err:
        raise UsageError(str(err)) from None
    except (SafetensorError, OSError, EOFError) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"cannot read the weights in {path} ({why}): the file is truncated or damaged; save or "
                         "download the checkpoint again") from None
    except RuntimeError as err:
        if "mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
            raise
        raise UsageError(_shape_mismatch(cls, path, kwargs)) from None
    if report.new_head:
        if new_head == "refuse":
            raise UsageError(f"{report.new_head_message()}: it cannot serve as a float reference")
        if new_head == "note":
            note(report.new_head_message())
    return model


def _shape_mismatch(cls: type, path: Path, kwargs: dict) -> str:
    """One line naming the tensors whose shapes disagree with config.json (transformers only logs them)."""
    _, info = cls.from_pretrained(path, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    mismatched = sorted(info.get("mismatched_keys") or ())
    shown = "; ".join(f"{key}: checkpoint {tuple(a)}, config {tuple(b)}" for key, a, b in mismatched[:3])
    return (f"the weights in {path} do not fit its config.json ({len(mismatched)} tensors of other shapes, e.g. "
            f"{shown}); use the config.json the weights were saved with")


def load_float(ckpt: Checkpoint, head: str | None = None, *, new_head: str = "note", **config_overrides) -> nn.Module:
    """The float model of a checkpoint, in eval mode, with its own head or ``head`` (a new head is
    initialised from torch's global generator: seed it first). QDQBERT runs with its quantizers off.
    ``new_head``: see ``_from_pretrained``."""
    _weights_present(ckpt.path)
    head = head or ckpt.head
    cls = model_class(ckpt.family, head)
    if ckpt.family == "ibert":
        config_overrides["quant_mode"] = False
    model = _from_pretrained(cls, ckpt.path, new_head, **config_overrides)
    if ckpt.family == "qdqbert":
        for _, q in named_quantizers(model):
            q.disable()
    return model.eval()


def build_quantized(ckpt: Checkpoint, scheme: str, head: str | None = None, **config_overrides) -> nn.Module:
    """The uncalibrated quantized simulation of a float checkpoint: I-BERT in quant mode (``scheme="ibert"``,
    converting BERT and RoBERTa) or QDQBERT (``scheme="qdq"``, from BERT or QDQBERT)."""
    if scheme not in SCHEMES:
        raise UsageError(f"scheme {scheme!r} is unknown; use one of {SCHEMES}")
    _weights_present(ckpt.path)
    head = head or ckpt.head
    if scheme == "qdq":
        if ckpt.family not in ("bert", "qdqbert"):
            raise UsageError(f"{ckpt.path} is a {ckpt.family} checkpoint; QDQBERT is BERT with Q/DQ nodes, so "
                             "RoBERTa and I-BERT checkpoints quantize with --scheme ibert")
        return _from_pretrained(model_class("qdqbert", head), ckpt.path, "note", **config_overrides).eval()
    if ckpt.family == "qdqbert":
        raise UsageError(f"{ckpt.path} is a QDQBERT checkpoint; quantize it with --scheme qdq (or start from its "
                         "float BERT for --scheme ibert)")
    if ckpt.family == "ibert":
        return _from_pretrained(model_class("ibert", head), ckpt.path, "note", quant_mode=True,
                                **config_overrides).eval()
    source = load_float(ckpt, head, **config_overrides)
    if ckpt.family == "bert":
        return bert_to_ibert_head(source, quant_mode=True)
    return roberta_to_ibert(source, quant_mode=True)


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer, offline; a folder without one is a UsageError naming the fix."""
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        for file in sorted(Path(path).glob("*.json")):  # name the file that transformers' JSON error leaves out
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as bad:
                why = getattr(bad, "msg", "not UTF-8")
                raise UsageError(f"cannot load a tokenizer from {path}: {file.name} is not valid JSON ({why}); "
                                 "repair it or save the tokenizer again") from None
        raise UsageError(f"cannot load a tokenizer from {path} ({str(err).splitlines()[0]}); "
                         "copy the tokenizer files (tokenizer.json, vocab) next to its config.json") from None


def set_seed(seed: int) -> None:
    """One seed for everything the commands draw (new heads, shuffles, dropout): Python's, NumPy's and torch's."""
    transformers.set_seed(seed)
