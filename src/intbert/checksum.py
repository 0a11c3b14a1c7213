"""Content hashes of tensors: the frozen engine's checksum and the float source's fingerprint.

One definition, so that every hash in intbert means the same thing: sha256 over, for each tensor in
sorted name order, its name, dtype, shape and raw bytes (native byte order, C-contiguous), each field
length-prefixed so that no two different inputs share a byte stream. A renamed, retyped, reshaped or
edited tensor changes the hash; the order the tensors were stored in does not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

#: Prefix of every hash string, so a reader knows the algorithm (and a future one can be told apart).
ALGORITHM = "sha256"


def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def tensors_digest(tensors: Mapping[str, torch.Tensor], extra: bytes = b"") -> str:
    """``"sha256:<hex>"`` of ``extra`` and every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    _field(h, extra)
    for name in sorted(tensors):
        t = tensors[name].detach()
        _field(h, name.encode("utf-8"))
        _field(h, str(t.dtype).encode())
        _field(h, repr(tuple(t.shape)).encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        # A view of the bytes, not a copy (a RoBERTa-base engine file is ~120 MB).
        _field(h, memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"")
    return f"{ALGORITHM}:{h.hexdigest()}"


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder (its *.safetensors, else its *.bin files) or of one weights file."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not files:
            raise FileNotFoundError(f"{path} holds no weights (*.safetensors or *.bin) to fingerprint")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such file or directory")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors.update(load_file(str(file)))
        else:
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    return tensors


def fingerprint(source: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike) -> str:
    """A hash of the float weights of a model, a state dict, or a checkpoint folder / weights file.

    Only floating-point tensors count (the weights): integer buffers such as ``position_ids`` come and
    go between transformers versions and say nothing about the model. Compare like with like: a
    loaded model's state dict names tied weights twice and carries any newly initialised head, while a
    folder holds what was saved. The command line records the fingerprint of the float model a
    quantized folder was made from, and refuses to compare against another one.
    """
    if isinstance(source, nn.Module):
        tensors = source.state_dict()
    elif isinstance(source, Mapping):
        tensors = dict(source)
    else:
        tensors = _checkpoint_tensors(Path(source))
    return tensors_digest({k: v for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point()})
