"""intbert.atomic: a folder is replaced in one step as a reader sees it, a failed swap keeps the old folder, an
interrupted one is repaired by the next save, staging of dead savers is cleaned, and mount points work."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intbert import atomic
from intbert.atomic import clean_stale, replace_directory, update_directory


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def _read(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_replace_directory_swaps_the_whole_folder_in_one_step(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, {"config.json": "old", "stale.txt": "only in the old save"})
    reader = open(target / "config.json")  # a reader with the old folder open keeps reading the old file
    with replace_directory(target) as staging:
        _write(staging, {"config.json": "new", "model.safetensors": "w"})
        assert _read(target) == {"config.json": "old", "stale.txt": "only in the old save"}  # nothing seen yet
    assert _read(target) == {"config.json": "new", "model.safetensors": "w"}
    assert reader.read() == "old"
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left


def test_replace_directory_creates_a_missing_target_and_an_error_leaves_it_untouched(tmp_path):
    with replace_directory(tmp_path / "a" / "new") as staging:
        _write(staging, {"f": "1"})
    assert _read(tmp_path / "a" / "new") == {"f": "1"}
    with pytest.raises(RuntimeError, match="boom"):
        with replace_directory(tmp_path / "a" / "new") as staging:
            _write(staging, {"f": "2"})
            raise RuntimeError("boom")
    assert _read(tmp_path / "a" / "new") == {"f": "1"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["new"]


def test_without_an_exchange_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, {"f": "old"})
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # a system without renameat2
    real = os.rename
    calls = []

    def second_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", second_fails)
    with pytest.raises(OSError, match="disk gone"):
        with replace_directory(target) as staging:
            _write(staging, {"f": "new"})
    monkeypatch.setattr(atomic.os, "rename", real)
    assert _read(target) == {"f": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_swap_killed_between_its_renames_is_repaired_by_the_next_save(tmp_path):
    """Was: the output folder missing and the old model only in a hidden folder (a CLI --overwrite killed)."""
    target = tmp_path / "out"
    old = tmp_path / f".out.intbert-old-{_dead_pid()}-x1"  # what the kill left: the old folder, moved aside
    old.mkdir()
    _write(old, {"f": "old"})
    half = tmp_path / f".out.intbert-new-{_dead_pid()}-x2"  # and the half-written new one
    half.mkdir()
    clean_stale(target)
    assert _read(target) == {"f": "old"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_staging_of_dead_processes_is_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "my.model"
    target.mkdir()
    dead = _dead_pid()
    stale = [tmp_path / f".my.model.intbert-new-{dead}-a", tmp_path / f".my.model.intbert-old-{dead}-b",
             target / f".intbert-new-{dead}-c"]
    live = [tmp_path / ".my.model.intbert-new-1-d"]  # pid 1 is alive: a concurrent save's staging
    others = [tmp_path / f".other.intbert-new-{dead}-f", tmp_path / ".my.model.backup"]  # not this target's
    for folder in stale + live + others:
        folder.mkdir()
    with replace_directory(target) as staging:
        _write(staging, {"f": "new"})
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live + others)


def test_update_directory_replaces_its_files_and_keeps_the_others(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, {"config.json": "old", "model.safetensors": "old", "tokenizer.json": "tok"})
    order = []
    real = os.replace
    with update_directory(target, last=("config.json",)) as staging:
        _write(staging, {"config.json": "new", "model.safetensors": "new"})
        monkeypatch.setattr(atomic.os, "replace", lambda s, d: (order.append(Path(d).name), real(s, d))[1])
    monkeypatch.undo()
    assert order == ["model.safetensors", "config.json"]  # the file that vouches for the others comes last
    assert _read(target) == {"config.json": "new", "model.safetensors": "new", "tokenizer.json": "tok"}
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


def _as_mount_point(monkeypatch, target: Path) -> None:
    """Renaming ``target`` fails with EBUSY, and moving anything across its boundary with EXDEV, as for a volume."""
    root = target.resolve()

    def inside(p) -> bool:
        p = Path(p).resolve()
        return p != root and p.is_relative_to(root)

    def guard(real):
        def move(src, dst):
            if root in (Path(src).resolve(), Path(dst).resolve()):
                raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
            if inside(src) != inside(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(dst))
            return real(src, dst)
        return move

    monkeypatch.setattr(atomic.os, "rename", guard(os.rename))
    monkeypatch.setattr(atomic.os, "replace", guard(os.replace))
    monkeypatch.setattr(atomic, "_exchange", guard(lambda a, b: True))  # renameat2 meets the same walls


@pytest.mark.parametrize("detected", [True, False], ids=["ismount", "undetected"])
def test_replace_directory_fills_a_mount_point_in_place(tmp_path, monkeypatch, detected):
    """Was: "Invalid cross-device link" / "Device or resource busy" saving into an (empty) Docker volume."""
    target = tmp_path / "volume"
    target.mkdir()
    (target / "lost+found").mkdir()
    _write(target, {"config.json": "old", "stale.txt": "x"})
    _as_mount_point(monkeypatch, target)
    monkeypatch.setattr(atomic.os.path, "ismount", lambda p: detected and Path(p) == target)
    inode = target.stat().st_ino
    with replace_directory(target, last=("config.json",)) as staging:
        _write(staging, {"config.json": "new", "model.safetensors": "w"})
    assert target.stat().st_ino == inode
    assert _read(target) == {"config.json": "new", "model.safetensors": "w"}
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "lost+found", "model.safetensors"]


def test_a_failed_fill_in_place_restores_every_old_file(tmp_path, monkeypatch):
    target = tmp_path / "volume"
    target.mkdir()
    _write(target, {"a": "old a", "b": "old b"})
    monkeypatch.setattr(atomic.os.path, "ismount", lambda p: Path(p) == target)
    real = os.replace

    def fail_on_b(src, dst):
        if Path(dst) == target / "b":
            raise OSError("killed")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_b)
    with pytest.raises(OSError, match="killed"):
        with replace_directory(target, last=("b",)) as staging:
            _write(staging, {"a": "new a", "b": "new b", "c": "new c"})
    assert _read(target) == {"a": "old a", "b": "old b"}
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
