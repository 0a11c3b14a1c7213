"""The two kinds of failure the command line reports in one line, without a traceback.

``UsageError`` is the user's mistake (a bad argument, a missing file, a checkpoint of the wrong kind): exit
code 2, like argparse's own errors. ``Unavailable`` is a step this installation cannot run (an optional
package missing, a model family a step does not cover): exit code 1. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake; ``intbert`` prints ``intbert <command>: error: <message>`` and exits with 2."""

    exit_code = 2


class Unavailable(Exception):
    """A step that cannot run here; the message says what to install or use instead. Exit code 1."""

    exit_code = 1
