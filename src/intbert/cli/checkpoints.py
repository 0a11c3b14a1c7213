"""Checkpoint folders: what one holds (family, head, config, report), read from its JSON files alone.

Families: BERT and RoBERTa (transformers' classes), I-BERT and QDQBERT (intbert's). Heads: the bare encoder,
sequence classification, masked LM and token classification. A folder written by ``intbert quantize`` or
``intbert qat`` also holds ``quantization_report.json``. Loading the models is ``loading``'s (float and
simulation) and ``artifacts``' (what intbert wrote); this module stays free of torch, so that a wrong folder
is reported before torch is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text, so not a JSON file transformers wrote") from None
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


#: config.json fields that must be positive integers where present.
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings")


def _check_config(path: Path, config: dict) -> None:
    """The sizes the commands compute with, checked where a bad value would otherwise surface as a nonsense
    number (a pad_token_id of 5000 in a 30k-row table made "truncate to -4961 tokens") or a torch assert."""
    for name in _SIZES:
        value = config.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise UsageError(f"{path}: {name} is {value!r}, expected a positive integer; fix config.json")
    pad, vocab = config.get("pad_token_id"), config.get("vocab_size")
    if pad is not None and vocab is not None and (not isinstance(pad, int) or not 0 <= pad < vocab):
        raise UsageError(f"{path}: pad_token_id {pad!r} is outside the vocabulary (vocab_size {vocab}); set it to "
                         "the id of the tokenizer's pad token (BERT: 0, RoBERTa: 1) in config.json")
    positions = config.get("max_position_embeddings")
    if config.get("model_type") in ("ibert", "roberta") and isinstance(pad, int) and positions is not None \
            and positions <= pad + 1:
        raise UsageError(f"{path}: max_position_embeddings {positions} leaves no position for a token (RoBERTa-style "
                         f"positions start after pad_token_id {pad}); fix config.json")


def inspect_checkpoint(path: str | Path) -> Checkpoint:
    """Family, head and report of a checkpoint folder; a missing or unreadable folder is a UsageError."""
    path = Path(path)
    if not path.exists():
        from intbert.atomic import clean_stale

        clean_stale(path)  # a save killed mid-swap left the folder under a hidden name: put it back
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
    _check_config(path / "config.json", config)
    prefix = FAMILIES[family]
    architecture = (config.get("architectures") or [prefix + "Model"])[0]
    report = _read_json(path / REPORT_NAME) if (path / REPORT_NAME).is_file() else None
    return Checkpoint(path, family, head_of(architecture, prefix), config, report)
