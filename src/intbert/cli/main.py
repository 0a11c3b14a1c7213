"""The ``intbert`` command: argparse subcommands, and one-line errors with fixed exit codes.

Exit codes: 0 success; 1 a step that cannot run here or a model the library refuses (message names the fix);
2 a usage mistake: bad arguments, a missing or wrong file (argparse's own code for its errors). Set
INTBERT_DEBUG=1 to get the traceback of such an error as well.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import bench, demo, evaluate, export, predict, qat, quantize
from .errors import Unavailable, UsageError

COMMANDS = (demo, quantize, qat, evaluate, bench, export, predict)


class _Parser(argparse.ArgumentParser):
    """argparse, with its error as one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="intbert", description="Integer BERT encoders: I-BERT (integer-only) and QDQBERT "
                     "(Q/DQ for int8 runtimes). Run 'intbert demo' for the whole path on a real model, offline.")
    from intbert import __version__

    parser.add_argument("--version", action="version", version=f"intbert {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _library_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of the library that describe the user's model or data (not bugs): one line, exit code 1."""
    from intbert.errors import OverflowRiskError, UncalibratedError

    errors: list[type[BaseException]] = [OverflowRiskError, UncalibratedError]
    try:
        from intbert.export import ExportError

        errors.append(ExportError)
    except ImportError:
        pass
    return tuple(errors)


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    prog = f"intbert {args.command}"
    from intbert.data import MissingDataPackageError

    from .console import quiet_transformers

    quiet_transformers()
    debug = os.environ.get("INTBERT_DEBUG") == "1"
    try:
        return args.run(args)
    except (UsageError, FileNotFoundError, NotADirectoryError, MissingDataPackageError) as err:
        if debug:
            raise
        return _fail(prog, err, 2)
    except Unavailable as err:
        if debug:
            raise
        return _fail(prog, err, 1)
    except _library_errors() as err:
        if debug:
            raise
        return _fail(prog, f"{type(err).__name__}: {err}", 1)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
