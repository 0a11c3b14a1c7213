"""Running a model (float, simulation, frozen or ONNX) over texts, and comparing two models' outputs.

Texts are batched in order of length, so a batch pads to sentences of about its own length (padding is
most of the work on short snippets), and results come back in the input order. What is compared depends
on the head: a classifier's logits, a bare encoder's mean-pooled sentence embedding (as sentence-transformers
pools all-MiniLM-L6-v2), and the per-token logits of masked-LM and token-classification heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from intbert.data import tokenized_batches

from .errors import UsageError


@dataclass(frozen=True)
class Batches:
    """Tokenized, length-sorted batches; ``order[i]`` is the input position of the i-th sorted text."""

    batches: list[dict]
    order: list[int]

    def restore(self, per_example: list) -> list:
        out = [None] * len(self.order)
        for value, i in zip(per_example, self.order):
            out[i] = value
        return out


def check_tokens(batch: dict, texts: list[str]) -> dict:
    """Refuse examples that tokenize to nothing (a tokenizer without special tokens, a text of characters it
    drops): the model would get a zero-length sequence, or a row of padding only. Returns ``batch``."""
    ids = batch["input_ids"]
    real = batch["attention_mask"].sum(-1).tolist() if "attention_mask" in batch else [ids.shape[-1]] * len(texts)
    empty = [t for t, n in zip(texts, real) if n == 0]
    if empty:
        raise UsageError(f"{len(empty)} example(s) have no tokens after tokenization, e.g. {empty[0]!r}: this "
                         "tokenizer adds no special tokens and keeps nothing of them; remove them from the data")
    return batch


def encode(tokenizer, texts: list[str], max_length: int) -> dict:
    """One padded batch of model inputs for ``texts``, checked to give every example a token."""
    batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    return check_tokens(batch, texts)


def make_batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> Batches:
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    ordered = [texts[i] for i in order]
    batches = tokenized_batches(tokenizer, ordered, batch_size, max_length)
    for start, batch in zip(range(0, len(ordered), batch_size), batches):
        check_tokens(batch, ordered[start : start + batch_size])
    return Batches(batches, order)


def model_max_length(config) -> int:
    """Longest input the position table allows (RoBERTa-style tables spend padding_idx + 1 rows)."""
    positions = config.max_position_embeddings
    if getattr(config, "model_type", "") in ("ibert", "roberta"):
        positions -= (config.pad_token_id or 0) + 1
    return positions


def example_outputs(output, batch: dict, head: str) -> list[torch.Tensor]:
    """One float tensor per example of a batch output: logits (classifier), mean-pooled hidden states (bare
    encoder) or the logits of the real tokens, flattened (token-level heads)."""
    mask = batch["attention_mask"].bool()
    if head == "sequence-classification":
        return list(output.logits.float().cpu())
    if head == "base":
        hidden = output.last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.device, hidden.dtype)  # (B, L, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return list(pooled.cpu())
    logits = output.logits.float().cpu()  # (B, L, C)
    return [logits[i][mask[i]] for i in range(logits.shape[0])]


def run_model(model, data: Batches, head: str, device: str = "cpu", progress: bool = False,
              desc: str = "inference") -> list[torch.Tensor]:
    """Per-example outputs of ``model`` on the batches, in the input order."""
    results = []
    with torch.no_grad():
        for batch in tqdm(data.batches, desc=desc, disable=not progress, leave=False):
            moved = {k: v.to(device) for k, v in batch.items()}
            results += example_outputs(model(**moved), batch, head)
    return data.restore(results)


def accuracy(outputs: list[torch.Tensor], labels: list[int]) -> float:
    return sum(int(o.argmax(-1)) == y for o, y in zip(outputs, labels)) / len(labels)


def agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of equal argmax decisions (one per example, or one per token for token-level heads)."""
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b))
    return same / sum(x.argmax(-1).numel() for x in a)


def cosines(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Cosine of each example's output vectors (each token's, for token-level heads)."""
    flat_a = torch.cat([x.reshape(-1, x.shape[-1]) for x in a])
    flat_b = torch.cat([x.reshape(-1, x.shape[-1]) for x in b])
    return torch.nn.functional.cosine_similarity(flat_a.double(), flat_b.double(), dim=-1)


def compare(reference: list[torch.Tensor], other: list[torch.Tensor], head: str) -> dict:
    """How close ``other`` is to ``reference``: cosine (mean/min) always, argmax agreement for heads with logits."""
    cos = cosines(reference, other)
    out = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if head != "base":
        out["agreement"] = agreement(reference, other)
    return out


def timed(fn: Callable[[], object], warmup: int, iters: int,
          synchronize: Callable[[], None] | None = None) -> list[float]:
    """Wall-clock milliseconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones (synchronising a GPU)."""
    import time

    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times
