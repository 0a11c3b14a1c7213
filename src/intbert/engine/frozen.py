"""FrozenIBert: the user-facing integer model (any I-BERT head), with save_pretrained / from_pretrained.

On disk: ``config.json`` (the IBertConfig, ``architectures`` naming the head, and an
``intbert_engine`` entry with the format version) and ``model.safetensors`` (int8 weights and
tables, int32 biases, int64 constants, the float head layers). Loading needs no simulation model
and no float encoder. Saving writes to a temporary directory beside the target and renames it into
place, so a failed save leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.ibert import modeling_ibert
from ..models.ibert.configuration_ibert import IBertConfig
from .model import IntegerIBertModel

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HEADS = ("IBertModel", "IBertForMaskedLM", "IBertForSequenceClassification", "IBertForMultipleChoice",
         "IBertForTokenClassification", "IBertForQuestionAnswering")


class FrozenIBert(nn.Module):
    """A frozen integer I-BERT. Call it like the model it was frozen from; outputs are bit-identical.

    ``model`` is either an :class:`IntegerIBertModel` (from an IBertModel) or the source head model
    with its ``ibert`` encoder replaced by one.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    @property
    def config(self) -> IBertConfig:
        return self.model.config

    @property
    def encoder(self) -> IntegerIBertModel:
        return self.model if isinstance(self.model, IntegerIBertModel) else self.model.ibert

    @property
    def head_name(self) -> str:
        return "IBertModel" if isinstance(self.model, IntegerIBertModel) else type(self.model).__name__

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def set_backend(self, name: str | None) -> "FrozenIBert":
        """Pick the backend ("reference", "cpu", "cuda"; None = by device)."""
        self.encoder.set_backend(name)
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    # ------------------------------------------------------------------------------------------
    # save / load
    # ------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} exists and is not a directory")
        tensors, aliases = _unique_tensors(self.model.state_dict())
        config = self.config.to_dict()
        config["architectures"] = [self.head_name]
        config["intbert_engine"] = {"format": FORMAT_VERSION, "backend": self.encoder.backend_name,
                                    "aliases": aliases}
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "intbert_engine": str(FORMAT_VERSION)})
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            target.mkdir(exist_ok=True)
            for name in (WEIGHTS_NAME, CONFIG_NAME):  # each replace is atomic; weights first, config last
                os.replace(staging / name, target / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, backend: str | None = None,
                        device: str | torch.device = "cpu") -> "FrozenIBert":
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {directory} a directory written by FrozenIBert.save_pretrained?")
        raw = json.loads(config_path.read_text())
        engine = raw.pop("intbert_engine", None)
        if engine is None:
            raise ValueError(f"{config_path} has no 'intbert_engine' entry: this is not a frozen integer model "
                             "(load a simulation checkpoint with IBert*.from_pretrained and call intbert.freeze)")
        if engine.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory} uses engine format {engine.get('format')}, this intbert reads {FORMAT_VERSION}")
        head = (raw.get("architectures") or ["IBertModel"])[0]
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r} in {config_path}; expected one of {HEADS}")
        config = IBertConfig.from_dict(raw)
        try:
            tensors = load_file(str(weights_path), device=str(device))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_path} is truncated or corrupt ({err}); save the model again") from err
        for alias, source in engine.get("aliases", {}).items():
            tensors[alias] = tensors[source]
        try:
            model = _rebuild(head, config, tensors, backend if backend is not None else engine.get("backend"))
        except KeyError as err:
            raise ValueError(f"{weights_path} does not match its config ({head}): missing tensor {err}") from err
        except RuntimeError as err:  # load_state_dict of the float head layers: size mismatches
            raise ValueError(f"{weights_path} does not match its config ({head}): {err}") from err
        return cls(model.to(device))


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (a tied bias): keep each tensor once and record the aliases."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, t in state.items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.device) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().contiguous()
    return tensors, aliases


def _rebuild(head: str, config: IBertConfig, tensors: dict, backend: str | None) -> nn.Module:
    """The head model (float layers on the meta device, then loaded) around the integer encoder."""
    if head == "IBertModel":
        integer = IntegerIBertModel.from_state(config, tensors, "", backend)
        integer.pooler = _float_module(modeling_ibert.IBertPooler, config, tensors, "pooler.")
        _check_consumed(integer.state_dict(), tensors, "")
        return integer
    cls = getattr(modeling_ibert, head)
    with torch.device("meta"):
        model = cls(config)
    has_pooler = model.ibert.pooler is not None
    model.ibert = IntegerIBertModel.from_state(config, tensors, "ibert.", backend)
    if has_pooler:
        model.ibert.pooler = _float_module(modeling_ibert.IBertPooler, config, tensors, "ibert.pooler.")
    own = {k: v for k, v in tensors.items() if not k.startswith("ibert.")}
    missing, unexpected = model.load_state_dict(own, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith("ibert.")]
    if missing or unexpected:
        raise ValueError(f"saved weights do not match {head}: missing {missing}, unexpected {unexpected}")
    _check_consumed(model.ibert.state_dict(), tensors, "ibert.")
    model.eval()
    return model


def _float_module(cls, config, tensors: dict, prefix: str) -> nn.Module | None:
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not own:
        return None
    with torch.device("meta"):
        module = cls(config)
    module.load_state_dict(own, strict=True, assign=True)
    return module


def _check_consumed(state: dict, tensors: dict, prefix: str) -> None:
    """Every saved encoder tensor was used, with its saved shape and dtype (catches mismatched files)."""
    saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if set(saved) != set(state):
        extra, lacking = sorted(set(saved) - set(state)), sorted(set(state) - set(saved))
        raise ValueError(f"saved encoder tensors do not match the config: unexpected {extra[:5]}, missing {lacking[:5]}")
    for k, v in state.items():
        if v.dtype != saved[k].dtype or v.shape != saved[k].shape:
            raise ValueError(f"saved tensor {prefix}{k} has {saved[k].dtype} {tuple(saved[k].shape)}, "
                             f"expected {v.dtype} {tuple(v.shape)}")
