"""Examples from a text file: one per line (.txt or any other suffix), or a column of a CSV/TSV/JSONL file.

Labels are kept as the strings the file holds; ``label_ids`` turns them into class ids against a model's
``config.label2id`` (names) or as integers, so "fresh"/"rotten" and "1"/"0" files both work.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

#: The column names tried, in order, when --text-column / --label-column are not given.
TEXT_COLUMNS = ("text", "sentence", "review")
LABEL_COLUMNS = ("label", "labels", "category")


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    labels: list[str] | None  # as written in the file; None when the file has no label column
    path: Path

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> "Examples":
        return Examples(self.texts[:n], None if self.labels is None else self.labels[:n], self.path)


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise UsageError(f"{path} has no {what} column {wanted!r}; its columns are {columns}")
        return wanted
    return next((c for c in defaults if c in columns), None)


def read_text(path: Path) -> str:
    """The file's text, which must be UTF-8 (a UTF-8 byte-order mark, as Excel writes, is dropped). A UTF-16 file,
    another encoding or a binary file is a UsageError naming the fix: decoding it some other way would
    calibrate or train on mojibake."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UsageError(f"{path} is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if b"\x00" in raw:
        raise UsageError(f"{path} holds NUL bytes: UTF-16 or binary, not UTF-8 text; give a UTF-8 text, .csv, .tsv or "
                         ".jsonl file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UsageError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8 "
                         "(e.g. iconv -f LATIN1 -t UTF-8)") from None


def _rows_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict]]:
    # strict: an unterminated quote is an error (not the rest of the file read as one field), as is any
    # other malformed quoting.
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, strict=True)
    rows, line = [], 1  # the line the record being read starts on
    try:
        for row in reader:
            rows.append(row)
            line = reader.line_num + 1
    except csv.Error as err:
        raise UsageError(f"{path}:{line}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} record ({err}); check "
                         "its quotes (a field that opens a quote must close it)") from None
    return list(reader.fieldnames or []), rows


def _rows_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    rows, columns = [], {}
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{number} is not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{number} is a JSON {type(row).__name__}, expected an object per line")
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return list(columns), rows


def read_examples(path: str | Path, text_column: str | None = None, label_column: str | None = None,
                  require_labels: bool = False) -> Examples:
    """Read FILE: .csv / .tsv (a header row), .jsonl (an object per line) or plain text (a line per example).

    The text comes from ``text_column`` (default: the first of TEXT_COLUMNS present), the label from
    ``label_column`` (default: the first of LABEL_COLUMNS present, else none). Blank texts are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl"):
        columns, rows = _rows_jsonl(path) if suffix == ".jsonl" else _rows_csv(path, "\t" if suffix == ".tsv" else ",")
        text_key = _pick(columns, text_column, TEXT_COLUMNS, "text", path)
        if text_key is None:
            raise UsageError(f"{path} has no text column (tried {list(TEXT_COLUMNS)}); its columns are {columns}: "
                             "pass --text-column")
        label_key = _pick(columns, label_column, LABEL_COLUMNS, "label", path)
        kept = [r for r in rows if str(r.get(text_key) or "").strip()]
        texts = [str(r[text_key]).strip() for r in kept]
        labels = None
        if label_key is not None:
            missing = sum(1 for r in kept if r.get(label_key) in (None, ""))
            if missing:
                raise UsageError(f"{path}: {missing} of {len(kept)} rows have no {label_key!r} value")
            labels = [str(r[label_key]).strip() for r in kept]
    else:
        if label_column is not None:
            raise UsageError(f"{path} is plain text (one example per line); labels need a .csv, .tsv or .jsonl file")
        texts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        labels = None
    if not texts:
        raise UsageError(f"{path} holds no examples")
    if require_labels and labels is None:
        raise UsageError(f"{path} has no label column (tried {list(LABEL_COLUMNS)}); pass --label-column, "
                         "or use a .csv/.tsv/.jsonl file with one")
    return Examples(texts, labels, path)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def label_ids(labels: list[str], label2id: dict[str, int], num_labels: int, where: str) -> list[int]:
    """Class ids of ``labels``: integers as they are, names through ``label2id`` (case-insensitive)."""
    if all(_is_int(x) for x in labels):
        ids = [int(x) for x in labels]
        bad = sorted({i for i in ids if not 0 <= i < num_labels})
        if bad:
            raise UsageError(f"{where}: labels {bad[:5]} are outside the model's {num_labels} classes")
        return ids
    lookup = {str(k).lower(): int(v) for k, v in label2id.items()}
    unknown = sorted({x for x in labels if x.lower() not in lookup})
    if unknown:
        raise UsageError(f"{where}: labels {unknown[:5]} are not among the model's labels {sorted(label2id)}")
    return [lookup[x.lower()] for x in labels]


def label_names(labels: list[str]) -> dict[int, str]:
    """id2label for a new classification head trained on ``labels``: integers keep their value, names are
    numbered in sorted order (so the same file always gives the same mapping)."""
    if all(_is_int(x) for x in labels):
        top = max(int(x) for x in labels)
        if min(int(x) for x in labels) < 0:
            raise UsageError("integer labels must be >= 0 (class ids)")
        return {i: str(i) for i in range(max(top + 1, 2))}
    return dict(enumerate(sorted(set(labels))))
