"""Checkpoint folders: what one holds (family and head), its float model, and its quantized (simulation) model.

Families: BERT and RoBERTa (transformers' classes), I-BERT and QDQBERT (intbert's). Heads: the bare encoder,
sequence classification, masked LM and token classification. A folder written by ``intbert quantize`` or
``intbert qat`` also holds ``quantization_report.json``; ``artifacts`` loads those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import transformers
from torch import nn

import intbert
from intbert.quantization.workflow import named_quantizers

from .console import note
from .convert import bert_to_ibert_head, roberta_to_ibert
from .errors import UsageError

REPORT_NAME = "quantization_report.json"

#: model_type in config.json -> class-name prefix.
FAMILIES = {"bert": "Bert", "roberta": "Roberta", "ibert": "IBert", "qdqbert": "QDQBert"}
#: head -> class-name suffix.
HEADS = {
    "base": "Model",
    "sequence-classification": "ForSequenceClassification",
    "masked-lm": "ForMaskedLM",
    "token-classification": "ForTokenClassification",
}
#: Architectures read as another head: BERT's pre-training checkpoints carry the masked-LM head (cls.predictions).
_ALIASES = {"ForPreTraining": "masked-lm"}
SCHEMES = ("ibert", "qdq")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    family: str  # a key of FAMILIES
    head: str  # a key of HEADS
    config: dict
    report: dict | None  # quantization_report.json of a folder intbert wrote, else None

    @property
    def quantized(self) -> bool:
        return self.report is not None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def head_of(architecture: str, prefix: str) -> str:
    suffix = architecture[len(prefix):] if architecture.startswith(prefix) else architecture
    for head, name in HEADS.items():
        if suffix == name:
            return head
    if suffix in _ALIASES:
        return _ALIASES[suffix]
    raise UsageError(f"{architecture} is not supported by the command line; heads it handles: "
                     f"{', '.join(prefix + s for s in HEADS.values())}")


def inspect_checkpoint(path: str | Path) -> Checkpoint:
    """Family, head and report of a checkpoint folder; a missing or unreadable folder is a UsageError."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such directory")
    if not path.is_dir():
        raise UsageError(f"{path} is a file; give a checkpoint directory (config.json and weights)")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json: not a transformers checkpoint directory")
    config = _read_json(path / "config.json")
    family = config.get("model_type")
    if family not in FAMILIES:
        raise UsageError(f"{path}: model_type {family!r} is not supported; the command line reads "
                         f"{', '.join(FAMILIES)} checkpoints")
    prefix = FAMILIES[family]
    architecture = (config.get("architectures") or [prefix + "Model"])[0]
    report = _read_json(path / REPORT_NAME) if (path / REPORT_NAME).is_file() else None
    return Checkpoint(path, family, head_of(architecture, prefix), config, report)


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
    on a bare encoder); ``"refuse"`` is a UsageError (a float reference with a random head compares with nothing)."""
    from intbert import MissingWeightsError, load_float_checkpoint

    try:
        model, report = load_float_checkpoint(cls, path, **kwargs)
    except MissingWeightsError as err:
        raise UsageError(str(err)) from None
    if report.new_head:
        if new_head == "refuse":
            raise UsageError(f"{report.new_head_message()}: it cannot serve as a float reference")
        note(report.new_head_message())
    return model


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
        raise UsageError(f"cannot load a tokenizer from {path} ({str(err).splitlines()[0]}); "
                         "copy the tokenizer files (tokenizer.json, vocab) next to its config.json") from None


def set_seed(seed: int) -> None:
    """One seed for everything the commands draw (new heads, shuffles, dropout): Python's, NumPy's and torch's."""
    transformers.set_seed(seed)
