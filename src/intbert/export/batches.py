"""The batches ``verify_onnx`` compares on, as an exported graph's inputs, and the id check the graphs lack."""

from __future__ import annotations

import torch

__all__ = ["ID_BOUNDS", "as_inputs", "check_graph_ids"]


#: Id inputs and the config field that bounds each. The exported graphs do not check ids (see check_graph_ids).
ID_BOUNDS = (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size"))


def check_graph_ids(inputs: dict[str, torch.Tensor], config) -> None:
    """Refuse ids outside [0, size) before they reach an exported graph, which does not check them.

    Both exporters look ids up with ONNX ``Gather``, which reads a negative index as counting from the end of
    the table: ``token_type_ids = -1`` gives the last type's embedding and ``input_ids = -1`` the last word, a
    silent wrong answer, where the PyTorch models raise. onnxruntime fails on an id at or past the table's end
    (an ``INVALID_ARGUMENT`` error from the Gather node). Call this on inputs before ``session.run``.
    """
    for name, field in ID_BOUNDS:
        t, size = inputs.get(name), getattr(config, field, None)
        if t is None or size is None or not t.numel():
            continue
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"{name} must lie in [0, {size}) (config.{field}), got values {lo}..{hi}; the ONNX "
                             "graph does not check ids (a negative id reads the table from its end)")


def as_inputs(batch, names: list[str], config=None) -> dict[str, torch.Tensor]:
    """A batch (dict of model inputs, or a tensor of input ids) as the graph's inputs, with the model's defaults;
    with ``config``, ids are checked first (:func:`check_graph_ids`)."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError("each batch must be a dict with 'input_ids' (e.g. a tokenizer's output) or a tensor of ids")
    ids = batch["input_ids"]
    defaults = {"attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    missing = [name for name in names if name not in batch and name not in defaults]
    if missing:
        raise ValueError(f"the graph needs inputs {missing}, which the batch lacks")
    inputs = {name: batch[name] if name in batch else defaults[name] for name in names}
    if config is not None:
        check_graph_ids(inputs, config)
    return inputs
