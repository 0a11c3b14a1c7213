"""Saving a folder so that a reader never sees it half-written, and a crash leaves nothing to clean by hand.

Two ways to write a model folder, as context managers that yield an empty staging folder to write into:

* :func:`replace_directory`: the target becomes exactly what was staged. The staging folder sits beside the
  target and is swapped in by one ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+): a reader sees the whole old
  folder or the whole new one, never neither. Where the exchange is unavailable, two renames are used and a
  failed second one puts the old folder back; a crash between them is repaired by the next call (the old
  folder, kept under a hidden name, is renamed back). A target that cannot be renamed (a mount point such as
  an empty Docker volume: ``EBUSY``; staging on another filesystem: ``EXDEV``; a read-only parent) is staged
  inside itself and filled entry by entry instead, the names in ``last`` moved last.
* :func:`update_directory`: like transformers' ``save_pretrained``, the staged files replace their namesakes
  and other files in the target (a tokenizer saved there) stay. Staging happens inside the target, so it
  works on mount points too; each file is replaced atomically, the names in ``last`` last. A reader can see
  new files beside old ones between two replaces, so the file moved last must be able to tell (the frozen
  engine's ``config.json`` carries a checksum of the whole model, checked on load).

Staging folders are hidden and carry the writer's process id: ``.NAME.intbert-new-PID-XXXX`` beside the
target, ``.intbert-new-PID-XXXX`` inside it. Each call first removes the ones whose process is gone (a
``kill -9`` mid-save), so they never pile up, and leaves those of live processes (a concurrent save) alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Marker in every staging name, so cleanup only ever touches folders this module made.
TAG = "intbert"
_STAGING = re.compile(rf"^\.(?:(?P<name>.+)\.)?{TAG}-(?P<kind>new|old)-(?P<pid>\d+)-")
#: errno values meaning "this folder cannot be renamed into place here": stage inside it instead.
_CANNOT_RENAME = {errno.EXDEV, errno.EBUSY}
#: errno values of a parent folder we may not create the staging folder in.
_CANNOT_STAGE_BESIDE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _stale(folder: Path, name: str | None) -> list[tuple[Path, str]]:
    """(path, kind) of the staging entries in ``folder`` for target ``name`` (None: inside the target) whose
    writer is gone."""
    out = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return out
    for entry in entries:
        m = _STAGING.match(entry.name)
        if m is None or m.group("name") != name or _alive(int(m.group("pid"))):
            continue
        out.append((entry, m.group("kind")))
    return out


def clean_stale(target: str | os.PathLike) -> None:
    """Remove the staging folders of dead writers beside and inside ``target``; if ``target`` is missing and an
    interrupted swap left the old folder under its hidden name, rename it back first."""
    target = Path(target)
    stale = _stale(target.parent, target.name)
    if not target.exists():
        olds = sorted((p for p, kind in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.rename(olds[-1], target)  # the newest old folder is the last complete save
            stale = [(p, k) for p, k in stale if p != olds[-1]]
    for path, _ in stale:
        _remove(path)
    if target.is_dir():
        for path, _ in _stale(target, None):
            _remove(path)


# ----------------------------------------------------------------------------------------------------------------------
# One-step swap of two folders


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(staging: Path, target: Path) -> None:
    """Put ``staging`` in ``target``'s place, the old target deleted; one step where the system allows."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        _remove(staging)  # now holds the old folder
        return
    # Two renames. A crash between them leaves the old folder under a hidden name that clean_stale restores.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{TAG}-old-{os.getpid()}-", dir=target.parent))
    old.rmdir()  # a unique free name; rename needs it absent (or empty)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)  # put the old folder back: the swap did not happen
        raise
    _remove(old)


def _keep(path: Path, copy: Path) -> None:
    """A second name for ``path``'s current bytes (a hard link; a copy where links are not supported)."""
    try:
        os.link(path, copy)
    except OSError:
        shutil.copy2(path, copy)


def _fill_in_place(staging: Path, target: Path, last: Iterable[str], replace_all: bool) -> None:
    """Move the staged entries into ``target`` one by one (``last`` names last); with ``replace_all``, remove
    the target's other entries afterwards. Each file lands with one ``os.replace``; if any step fails, every
    step already taken is undone, so the target holds its old entries again."""
    pid = os.getpid()
    inner = staging
    bin_ = None
    undo: list = []  # callables, run in reverse order if a step fails
    try:
        if staging.parent != target:  # staged elsewhere (another filesystem): bring it inside the target first
            inner = Path(tempfile.mkdtemp(prefix=f".{TAG}-new-{pid}-", dir=target))
            for entry in staging.iterdir():
                shutil.move(str(entry), str(inner / entry.name))
        last = [n for n in last if (inner / n).exists()]
        names = sorted(e.name for e in inner.iterdir() if e.name not in last) + last
        bin_ = Path(tempfile.mkdtemp(prefix=f".{TAG}-old-{pid}-", dir=target))
        for name in names:
            src, dst, old = inner / name, target / name, bin_ / name
            if dst.is_dir() or src.is_dir():  # no atomic replace for folders: move the old one aside first
                if dst.exists():
                    os.rename(dst, old)
                    undo.append(lambda dst=dst, old=old: (_remove(dst), os.rename(old, dst)))
                else:
                    undo.append(lambda dst=dst: _remove(dst))
                os.rename(src, dst)
            elif dst.exists():
                _keep(dst, old)
                os.replace(src, dst)
                undo.append(lambda dst=dst, old=old: os.replace(old, dst))
            else:
                os.replace(src, dst)
                undo.append(lambda dst=dst: _remove(dst))
        if replace_all:
            for entry in list(target.iterdir()):
                # lost+found: a filesystem's own folder at the root of a mounted volume, not ours to remove.
                if entry.name in names or _STAGING.match(entry.name) or entry.name == "lost+found":
                    continue
                os.rename(entry, bin_ / entry.name)
                undo.append(lambda entry=entry: os.rename(bin_ / entry.name, entry))
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except OSError:
                pass  # best effort; the next save's clean_stale removes what is left
        raise
    finally:
        for folder in (inner, bin_):
            if folder is not None and folder != staging:
                _remove(folder)


# ----------------------------------------------------------------------------------------------------------------------
# The two ways to save


@contextmanager
def replace_directory(target: str | os.PathLike, last: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty folder; when the block ends without an exception, it replaces ``target`` as a whole.

    One atomic step as a reader sees it (see the module docstring), except for a target that cannot be renamed
    (a mount point), which is filled entry by entry with ``last`` names last. An exception in the block
    leaves ``target`` as it was and removes the staging folder.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    in_place = target.is_dir() and os.path.ismount(target)
    staging = None
    if not in_place:
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{TAG}-new-{os.getpid()}-", dir=target.parent))
        except OSError as err:
            if err.errno not in _CANNOT_STAGE_BESIDE or not target.is_dir():
                raise
            in_place = True
    if in_place:
        staging = Path(tempfile.mkdtemp(prefix=f".{TAG}-new-{os.getpid()}-", dir=target))
    try:
        yield staging
        if in_place:
            _fill_in_place(staging, target, last, replace_all=True)
        else:
            try:
                _swap(staging, target)
            except OSError as err:
                if err.errno not in _CANNOT_RENAME or not target.is_dir():
                    raise
                _fill_in_place(staging, target, last, replace_all=True)  # a mount point ismount did not see
    finally:
        _remove(staging)


@contextmanager
def update_directory(target: str | os.PathLike, last: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty folder inside ``target``; when the block ends without an exception, each staged file
    replaces its namesake in ``target`` (``last`` names last) and the target's other files stay.

    An exception in the block leaves ``target`` as it was (a target this call created is removed again).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{TAG}-new-{os.getpid()}-", dir=target))
    done = False
    try:
        yield staging
        _fill_in_place(staging, target, last, replace_all=False)
        done = True
    finally:
        _remove(staging)
        if created and not done:
            shutil.rmtree(target, ignore_errors=True)  # it held only our staging folder
