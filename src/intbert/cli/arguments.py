"""Options several commands share, defined once so they read the same everywhere."""

from __future__ import annotations

import argparse

import torch

from .errors import UsageError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    try:
        return [positive_int(part) for part in text.split(",") if part.strip()] or [positive_int("")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def add_data_options(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    parser.add_argument("--text-column", metavar="NAME", help="CSV/TSV/JSONL column with the text (default: text)")
    if labels:
        parser.add_argument("--label-column", metavar="NAME", help="CSV/TSV/JSONL column with the label "
                            "(default: label, if present)")


def add_batch_options(parser: argparse.ArgumentParser, batch_size: int = 32) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N",
                        help=f"examples per batch (default: {batch_size})")
    parser.add_argument("--max-length", type=positive_int, default=128, metavar="N",
                        help="truncate inputs to N tokens (default: 128)")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where to run (default: cuda if available, else cpu)")


def resolve_device(name: str | None) -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to torch")
    return name
