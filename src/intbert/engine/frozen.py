"""FrozenIBert: the user-facing integer model (any I-BERT head), with save_pretrained / from_pretrained.

On disk: ``config.json`` (the IBertConfig, ``architectures`` naming the head, and an
``intbert_engine`` entry with the format version and a checksum) and ``model.safetensors`` (int8
weights and tables, int32 biases, int64 constants, the float head layers). Loading needs no
simulation model and no float encoder.

The checksum (sha256 over config.json's canonical content and every tensor's name, dtype, shape and
bytes; ``intbert.checksum``) ties the two files together: an edited config (``num_attention_heads``,
``pad_token_id``: same tensors, other outputs), an edited tensor, or files from two saves are refused
on load. Every constant is then checked against the bounds freeze guarantees (``modules`` ``validate``),
so a file can hold nothing freeze would not write. Saving stages both files inside the target and moves
the weights, then the config, into place (``intbert.atomic.update_directory``): a reader sees the old
model, the new one, or a mix the checksum refuses; never a wrong answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import update_directory
from ..checksum import tensors_digest
from ..errors import CheckpointIntegrityError
from ..models.ibert import modeling_ibert
from ..models.ibert.configuration_ibert import IBertConfig
from .model import IntegerIBertModel
from .modules import GEMM_INPUT_BOUND, IntLinear, LayerNormConstants, Requant, ResidualRequant, SoftmaxConstants

#: 2: config.json carries a checksum of both files (1 had none).
FORMAT_VERSION = 2
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
        config["intbert_engine"]["checksum"] = checksum(config, tensors)
        # Staged inside the target (so a mount point works too); weights first, config (with the checksum) last.
        with update_directory(target, last=(CONFIG_NAME,)) as staging:
            save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "intbert_engine": str(FORMAT_VERSION)})
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, backend: str | None = None,
                        device: str | torch.device = "cpu") -> "FrozenIBert":
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {directory} a directory written by FrozenIBert.save_pretrained?")
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path} is not valid JSON ({err}); save the model again") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path} holds a JSON {type(raw).__name__}, expected an object")
        engine = raw.get("intbert_engine")
        if not isinstance(engine, dict):
            raise ValueError(f"{config_path} has no 'intbert_engine' entry: this is not a frozen integer model "
                             "(load a simulation checkpoint with IBert*.from_pretrained and call intbert.freeze)")
        if engine.get("format") != FORMAT_VERSION:
            older = " (written before files carried a checksum; freeze the model and save it again)" if (
                engine.get("format") == 1) else ""
            raise ValueError(f"{directory} uses engine format {engine.get('format')}, this intbert reads "
                             f"{FORMAT_VERSION}{older}")
        try:
            tensors = load_file(str(weights_path), device="cpu")  # checked on the CPU, then moved
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_path} is truncated or corrupt ({err}); save the model again") from err
        if engine.get("checksum") != checksum(raw, tensors):
            raise CheckpointIntegrityError(
                f"{directory}: {CONFIG_NAME} and {WEIGHTS_NAME} do not match the checksum saved with them: one was "
                "edited, or they come from two different saves (an interrupted or concurrent save); freeze and "
                "save the model again"
            )
        raw = {k: v for k, v in raw.items() if k != "intbert_engine"}
        head = (raw.get("architectures") or ["IBertModel"])[0]
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r} in {config_path}; expected one of {HEADS}")
        config = IBertConfig.from_dict(raw)
        for alias, source in engine.get("aliases", {}).items():
            tensors[alias] = tensors[source]
        try:
            model = _rebuild(head, config, tensors, backend if backend is not None else engine.get("backend"))
        except KeyError as err:
            raise ValueError(f"{weights_path} does not match its config ({head}): missing tensor {err}") from err
        except RuntimeError as err:  # load_state_dict of the float head layers: size mismatches
            raise ValueError(f"{weights_path} does not match its config ({head}): {err}") from err
        encoder = model if isinstance(model, IntegerIBertModel) else model.ibert
        validate_encoder(encoder, config, where=str(directory))
        return cls(model.to(device))


def _canonical(config: dict) -> bytes:
    """config.json's content as one byte string: through JSON once (int keys become strings, as on disk), then
    sorted and compact, so the dict that was saved and the dict that was read give the same bytes."""
    return json.dumps(json.loads(json.dumps(config)), sort_keys=True, separators=(",", ":")).encode("utf-8")


def checksum(config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """The checksum a frozen model's config.json carries: sha256 over the config (its own ``checksum`` field left
    out) and every saved tensor's name, dtype, shape and bytes (``intbert.checksum.tensors_digest``)."""
    engine = {k: v for k, v in (config.get("intbert_engine") or {}).items() if k != "checksum"}
    return tensors_digest(tensors, extra=_canonical(dict(config, intbert_engine=engine)))


# ----------------------------------------------------------------------------------------------------------------------
# Every constant within the bounds freeze enforces


#: Channels of each requantization's (m, e), by part name: a linear's or LayerNorm's output is per channel ("H",
#: "I"); everything requantized from a per-tensor scale has one. (a, b) for a residual add. This is the layout
#: freeze writes; a file with (1,) where (C,) belongs would broadcast one multiplier over every channel.
EMBEDDING_REQUANTS = {"add_token_type": (1, 1), "add_position": (1, 1), "out": "H"}
LAYER_REQUANTS = {
    "query_act": "H", "key_act": "H", "value_act": "H", "context_act": 1, "attention_add": ("H", 1),
    "attention_out": "H", "pre_intermediate": 1, "gelu_act": "I", "pre_output": 1, "output_add": ("H", 1),
    "output_out": "H",
}  # fmt: skip
#: A smoothed model (``config.smoothing``, see ``intbert.smooth``) reads each layer's residual input per channel.
SMOOTHED_LAYER_REQUANTS = dict(LAYER_REQUANTS, attention_add=("H", "H"), output_add=("H", "H"))


def _config_bounds(config: IBertConfig, where: str, error: type[Exception]) -> None:
    """The config-level bounds of freeze (attention GEMMs, head size, positions): an edited config must meet them."""
    H, heads = config.hidden_size, config.num_attention_heads
    if heads < 1 or H % heads:
        raise error(f"{where}: hidden_size {H} is not a multiple of num_attention_heads {heads}")
    for what, worst in (("attention scores", (H // heads) * GEMM_INPUT_BOUND * GEMM_INPUT_BOUND),
                        ("attention context", config.max_position_embeddings * 255 * GEMM_INPUT_BOUND)):
        if worst > 2**31 - 1:
            raise error(f"{where}: the {what} GEMM can reach {worst}, beyond the int32 accumulator")
    pad = config.pad_token_id
    if pad is None or not 0 <= pad < min(config.vocab_size, config.max_position_embeddings - 1):
        raise error(f"{where}: pad_token_id {pad} must lie in [0, min(vocab_size {config.vocab_size}, "
                    f"max_position_embeddings - 1 = {config.max_position_embeddings - 1}))")


def validate_encoder(encoder: IntegerIBertModel, config: IBertConfig, where: str = "frozen model",
                     error: type[Exception] = CheckpointIntegrityError) -> None:
    """Check every integer constant of ``encoder`` against the bounds freeze guarantees (shapes exact).

    Called on load for every file (``error``: CheckpointIntegrityError) and by freeze on what it built
    (OverflowRiskError), so the two cannot disagree.
    """
    sizes = {"H": config.hidden_size, "I": config.intermediate_size, 1: 1}
    _config_bounds(config, where, error)

    def check(part: nn.Module, name: str, channels) -> None:
        at = f"{where}: {name}"
        if isinstance(part, IntLinear):
            part.validate(at, error)
        elif isinstance(part, ResidualRequant):
            part.validate(at, (sizes[channels[0]], sizes[channels[1]]), error)
        elif isinstance(part, Requant):
            part.validate(at, sizes[channels], error)
        elif isinstance(part, SoftmaxConstants):
            part.validate(at, error)
        elif isinstance(part, LayerNormConstants):
            part.validate(at, config.hidden_size, error)
        else:  # GELUConstants: one per intermediate channel
            part.validate(at, config.intermediate_size, error)

    emb = encoder.embeddings
    for name in emb.PARTS:
        check(getattr(emb, name), f"embeddings.{name}", EMBEDDING_REQUANTS.get(name))
    layer_requants = SMOOTHED_LAYER_REQUANTS if getattr(config, "smoothing", None) else LAYER_REQUANTS
    for i, layer in enumerate(encoder.layer):
        for name in layer.PARTS:
            check(getattr(layer, name), f"layer.{i}.{name}", layer_requants.get(name))


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
