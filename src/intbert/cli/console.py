"""Terminal output: whether to draw progress bars, and plain-text tables."""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    """Draw tqdm bars only on a terminal: in a log file or a test's captured output they are noise."""
    return sys.stderr.isatty()


def note(message: str) -> None:
    """Something the user should know that is not an error (a newly initialised head, a check overridden): one
    line on stderr, so that stdout stays the command's result."""
    print(f"intbert: note: {' '.join(message.split())}", file=sys.stderr)


def quiet_transformers() -> None:
    """Silence transformers' load reports and weight-loading bars; the commands say what matters themselves
    (missing weights are checked by ``loading``, not left to transformers' log).

    Without importing transformers (seconds): its documented environment variables, read when it is first
    imported, do it; a user's own TRANSFORMERS_VERBOSITY wins. Where it is imported already (a program that
    calls ``main``), its logging functions do it."""
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
        if not progress_enabled():
            logging.disable_progress_bar()
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not progress_enabled():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def table(rows: list[list[str]], align: str | None = None) -> str:
    """Rows of cells as aligned text; the first row is the header, underlined. ``align``: one 'l' or 'r' per
    column (default: the first column left, the rest right, as numbers read best)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = align or "l" + "r" * (len(widths) - 1)

    def line(row):
        cells = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)]
        return "  ".join(cells).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[1:]]
    return "\n".join(out)


def megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB"
