"""Cache locations, atomic writes and the inter-process file lock."""

import os
import subprocess
import sys
import time
from pathlib import Path

import filelock
import platformdirs
import pytest

from langinterp import paths


def test_langinterp_home_moves_books_and_runs(langinterp_home: Path) -> None:
    assert paths.home() == langinterp_home
    assert paths.books_dir() == langinterp_home / "books"
    assert paths.runs_dir() == langinterp_home / "runs"


def test_home_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LANGINTERP_HOME", "~/li")
    assert paths.home() == tmp_path / "li"


def test_platform_dirs_without_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGINTERP_HOME")
    assert paths.books_dir() == platformdirs.user_cache_path("langinterp") / "books"
    assert paths.runs_dir() == platformdirs.user_data_path("langinterp") / "runs"


def test_atomic_write_creates_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.txt"
    paths.atomic_write(target, "first \u2014 text")
    assert target.read_text("utf-8") == "first \u2014 text"
    paths.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_atomic_write_uses_normal_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    paths.atomic_write(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_failed_atomic_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")

    def broken_replace(source: str, destination: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        paths.atomic_write(target, "new content")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from langinterp.paths import file_lock
target, signal = Path(sys.argv[1]), Path(sys.argv[2])
with file_lock(target):
    signal.write_text("held")
    time.sleep(float(sys.argv[3]))
"""


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    target, signal = tmp_path / "book", tmp_path / "signal"
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(target), str(signal), "1.0"], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while not signal.exists():
            assert holder.poll() is None, "lock holder died"
            assert time.monotonic() < deadline, "lock holder never took the lock"
            time.sleep(0.02)
        with pytest.raises(filelock.Timeout), paths.file_lock(target, timeout=0.1):
            pass
        assert (tmp_path / "book.lock").exists()
    finally:
        holder.wait(timeout=20)
    assert holder.returncode == 0
    with paths.file_lock(target, timeout=1):
        pass
