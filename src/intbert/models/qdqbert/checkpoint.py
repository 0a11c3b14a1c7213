"""Calibrated QDQBERT checkpoints: create the ``_amax`` buffers a checkpoint carries before it is loaded.

A quantizer owns an ``_amax`` buffer only once it is calibrated (or its descriptor gives ``amax``), so a freshly built
model has none. ``torch.nn.Module.load_state_dict`` and transformers 5's loader both load only keys the model already
has: without this step every ``..._quantizer._amax`` of a calibrated checkpoint is reported as unexpected and dropped,
and the model silently falls back to dynamic quantization. (transformers' own QDQBERT registered the buffer while
loading, with ``.data.cuda()``, so CPU-only machines could not load calibrated checkpoints.)

Keys are those of the reference, e.g. ``bert.encoder.layer.0.attention.self.query._input_quantizer._amax`` (shape
``[]``) or ``..._weight_quantizer._amax`` (``[out, 1]`` per row). The ``bert.`` prefix may be present or not, so a
task model's checkpoint loads into QDQBertModel and the reverse, as transformers does for weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from intbert.quantization import TensorQuantizer

AMAX_SUFFIX = "._amax"


def _checkpoint_amax_shapes(state_dict: Mapping | None, checkpoint_files: Iterable[str] | None) -> dict:
    """{key: shape} of the ``_amax`` entries, read without loading the other tensors."""
    if state_dict is not None:
        return {k: tuple(v.shape) for k, v in state_dict.items() if k.endswith(AMAX_SUFFIX)}
    shapes: dict[str, tuple[int, ...]] = {}
    for path in checkpoint_files or ():
        path = str(path)
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if key.endswith(AMAX_SUFFIX):
                        shapes[key] = tuple(f.get_slice(key).get_shape())
        else:
            loaded = torch.load(path, map_location="meta", weights_only=True, mmap=True)
            shapes.update({k: tuple(v.shape) for k, v in loaded.items() if k.endswith(AMAX_SUFFIX)})
    return shapes


def _find_quantizer(model: nn.Module, key: str) -> TensorQuantizer | None:
    """The quantizer named by ``key`` (minus ``._amax``), trying the key as is, without and with the model's prefix."""
    path = key[: -len(AMAX_SUFFIX)]
    prefix = getattr(model, "base_model_prefix", "")
    candidates = [path]
    if prefix and path.startswith(prefix + "."):
        candidates.append(path[len(prefix) + 1 :])
    if prefix and hasattr(model, prefix):
        candidates.append(f"{prefix}.{path}")
    for candidate in candidates:
        try:
            module = model.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(module, TensorQuantizer):
            return module
    return None


def register_checkpoint_amax(
    model: nn.Module,
    state_dict: Mapping | None = None,
    checkpoint_files: Iterable[str] | None = None,
) -> list[str]:
    """Give every quantizer named in the checkpoint an ``_amax`` buffer of the checkpoint's shape; returns its keys.

    The buffers (Parameters under ``learn_amax``) are zero placeholders on the quantizer's device, meant to be
    overwritten at once by ``load_state_dict``/``from_pretrained``. A buffer of another shape is replaced, since the amax shape decides
    per-tensor vs per-channel quantization (the checkpoint wins). Keys naming no quantizer are left to the loader,
    which reports them as unexpected.
    """
    registered = []
    for key, shape in _checkpoint_amax_shapes(state_dict, checkpoint_files).items():
        quantizer = _find_quantizer(model, key)
        if quantizer is None:
            continue
        current = quantizer.amax
        if current is None or tuple(current.shape) != shape:
            quantizer.amax = None
            # Explicitly on CPU: from_pretrained builds the model under a meta-device context, where the setter's
            # finiteness check could not read the value. The quantizer moves it to its own device.
            quantizer.amax = torch.zeros(shape, dtype=torch.float32, device="cpu")
        registered.append(key)
    return registered


def load_qdq_state_dict(model: nn.Module, state_dict: Mapping, strict: bool = True):
    """``model.load_state_dict`` that also accepts calibrated ``_amax`` entries the model does not have yet."""
    register_checkpoint_amax(model, state_dict=state_dict)
    return model.load_state_dict(state_dict, strict=strict)


__all__ = ["register_checkpoint_amax", "load_qdq_state_dict"]
