"""Options several commands share, defined once so they read the same everywhere.

Like every module ``intbert --help`` imports, this one imports neither torch nor transformers: parsing and
checking arguments must answer at once (see ``main``).
"""

from __future__ import annotations

import argparse
import math

from .errors import UsageError

#: Calibration methods by scheme: command-line name -> intbert.calibrate's name. The command line's names are
#: QDQBERT's (max, percentile, mse, entropy); I-BERT calibrates with max (its "minmax"), mse or ema (the
#: reference's running average); "best" tries each method of the scheme (``ptq.choose_best``).
METHODS = {
    "ibert": {"max": "minmax", "mse": "mse", "ema": "ema"},
    "qdq": {"max": "max", "percentile": "percentile", "mse": "mse", "entropy": "entropy"},
}
ALL_METHODS = ("max", "percentile", "mse", "entropy", "ema", "best")

#: Post-training recipes by scheme (``intbert.RECIPES``; its module imports torch, so the names are repeated here
#: and tests/test_cli.py checks that the two agree) and each scheme's default (``intbert.DEFAULT_RECIPES``: the most
#: accurate on all-MiniLM-L6-v2, benchmarks/RESULTS.md "Recipes").
RECIPE_NAMES = {"ibert": ("reference", "smooth"), "qdq": ("reference", "float-skip", "smooth", "smooth-float-skip")}
DEFAULT_RECIPES = {"ibert": "smooth", "qdq": "smooth-float-skip"}
#: --scheme -> the family name intbert.RECIPES uses.
RECIPE_FAMILY = {"ibert": "ibert", "qdq": "qdqbert"}
RECIPE_HELP = ("post-training recipe: where the quantizers sit and whether outliers are smoothed first (default: "
               "smooth for I-BERT, smooth-float-skip for QDQBERT; I-BERT also takes reference, QDQBERT reference, "
               "float-skip and smooth; docs/cli.md says what each does)")


def check_method(scheme: str, method: str | None) -> None:
    """None is the recipe's own method."""
    if method is not None and method != "best" and method not in METHODS[scheme]:
        raise UsageError(f"--method {method} is not available for --scheme {scheme}; "
                         f"choose one of {', '.join(METHODS[scheme])} or best")


def check_recipe(scheme: str, recipe: str | None) -> None:
    """None is the scheme's default recipe."""
    if recipe is not None and recipe not in RECIPE_NAMES[scheme]:
        raise UsageError(f"--recipe {recipe} is not a {scheme} recipe; choose one of "
                         f"{', '.join(RECIPE_NAMES[scheme])}")


def add_recipe_options(parser: argparse.ArgumentParser, best: bool = True) -> None:
    """--recipe and --method: the method overrides the recipe's calibration method."""
    names = sorted({name for names in RECIPE_NAMES.values() for name in names})
    parser.add_argument("--recipe", choices=names, help=RECIPE_HELP)
    methods = ALL_METHODS if best else tuple(m for m in ALL_METHODS if m != "best")
    parser.add_argument("--method", choices=methods,
                        help="calibration method, instead of the recipe's (mse for I-BERT, max for QDQBERT's default "
                             "recipe): I-BERT takes max, mse or ema; QDQBERT max, percentile, mse or entropy"
                             + ("; best tries each and keeps the closest to float on a held-out quarter" if best
                                else ""))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0: float() also accepts 'nan' and 'inf', which no comparison with 0 rejects
    (nan <= 0 is False) and which training would turn into NaN weights."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    try:
        return [positive_int(part) for part in text.split(",") if part.strip()] or [positive_int("")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def add_seed_option(parser: argparse.ArgumentParser, what: str = "random seed") -> None:
    # numpy's seed must lie in [0, 2**32): a negative one failed deep inside transformers.set_seed.
    parser.add_argument("--seed", type=non_negative_int, default=0, help=f"{what} (default: 0)")


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
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to torch")
    return name
