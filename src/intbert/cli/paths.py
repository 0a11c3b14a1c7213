"""Where the commands write, checked before any work: a mistake found after an hour of calibration or training
costs the hour.

``check_output_dir`` (--out of quantize and qat), ``check_output_file`` (export --onnx, eval --json) and
``check_writable_dir`` (bench --out, demo --cache-dir) refuse an existing output without --overwrite, a file
where a folder goes (or the reverse), the float model's own folder, and a place the user cannot write (a
read-only filesystem, a folder without write permission): each as a UsageError naming the option and the fix.
Writability is tested by creating and removing a file in the nearest existing folder, which answers for root,
ACLs and read-only mounts alike (``os.access`` does not).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _write_error(folder: Path) -> str | None:
    """Why nothing can be written in the existing folder ``folder`` (None: something can)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".intbert-write-test-", dir=folder)
    except OSError as err:
        return err.strerror or str(err)
    os.close(fd)
    os.unlink(probe)
    return None


def check_writable_dir(path: Path, option: str, shown: Path | None = None) -> None:
    """Refuse ``path`` (a folder to create or fill) when it is a file or when nothing can be written there.
    ``shown``: the path the user gave, when ``path`` is its folder."""
    path = Path(path)
    shown = shown or path
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {shown}: {path} is a file; give a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UsageError(f"{option} {shown}: {base} is a file, so no folder can be made there")
    why = _write_error(base)
    if why is not None:
        raise UsageError(f"{option} {shown}: cannot write in {base} ({why}); choose a writable place")


def check_output_file(path: Path, option: str, overwrite: bool | None = None) -> None:
    """Refuse ``path`` (a file to write) when it is a folder, when it exists and ``overwrite`` is False (None:
    the command replaces it without asking, as eval --json does), or when its folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file path")
    if overwrite is False and path.exists():
        raise UsageError(f"{option} {path} exists; pass --overwrite to replace it")
    check_writable_dir(path.parent, option, path)


def check_output_dir(out: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse, before any work is done, to write over an existing non-empty folder without --overwrite, and
    to write where the float ``source`` lives: --out that is, contains or lies inside the source folder would
    replace or pollute the float model (and the report would name the output as its own source)."""
    if source is not None:
        o, s = out.resolve(), source.resolve()
        if o == s:
            raise UsageError(f"--out {out} is the float model's own folder: quantizing in place would destroy "
                             "it; choose another folder")
        if o in s.parents:
            raise UsageError(f"--out {out} contains the float model {source}: replacing it would delete the "
                             "model; choose a folder outside it")
        if s in o.parents:
            raise UsageError(f"--out {out} lies inside the float model's folder {source}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is a file; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    # The folder is staged beside --out and renamed into place, so its parent must be writable; an existing folder
    # that cannot be renamed (a mount point, a read-only parent) is filled in place instead.
    if not (out.is_dir() and _write_error(out) is None):
        check_writable_dir(out.parent, "--out", out)
