"""The ``intbert`` command: argparse subcommands, and one-line errors with fixed exit codes.

Exit codes: 0 success; 1 a step that cannot run here or a model the library refuses (message names the fix);
2 a usage mistake: bad arguments, a missing or wrong file (argparse's own code for its errors); 130 Ctrl-C. Set
INTBERT_DEBUG=1 to get the traceback of such an error as well.

Answering at once: importing torch and transformers takes seconds (over 30 on a loaded machine), so nothing
this module imports to build the parser imports them: the command modules keep their heavy imports inside the
functions that do the work, after the checks that need no model (missing files, outputs that cannot be
written, bad option values). ``intbert --help``, ``intbert CMD --help`` and those usage errors never wait for
torch (tests/test_cli_startup.py checks it), and a Ctrl-C while torch loads is caught like any other.
"""

from __future__ import annotations

import argparse
import errno
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


#: Exceptions of the library that describe the user's model or data (not bugs): one line, exit code 1. Named, not
#: imported: importing intbert.export imports torch, and this is consulted while an exception (a Ctrl-C during
#: torch's own import, say) is on its way out.
LIBRARY_ERRORS = frozenset({"intbert.errors.OverflowRiskError", "intbert.errors.UncalibratedError",
                            "intbert.export.errors.ExportError"})


def _is_library_error(err: BaseException) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in LIBRARY_ERRORS for c in type(err).__mro__)


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
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)
    except (UsageError, FileNotFoundError, NotADirectoryError, MissingDataPackageError) as err:
        if debug:
            raise
        return _fail(prog, err, 2)
    except Unavailable as err:
        if debug:
            raise
        return _fail(prog, err, 1)
    except OSError as err:
        # A place the user cannot write that no earlier check caught (the commands check their outputs first).
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or debug:
            raise
        return _fail(prog, f"cannot write {err.filename or ''} ({err.strerror}); choose a writable place", 2)
    except Exception as err:
        if debug or not _is_library_error(err):
            raise
        return _fail(prog, f"{type(err).__name__}: {err}", 1)

if __name__ == "__main__":
    sys.exit(main())
