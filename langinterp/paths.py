"""Where langinterp keeps its files, and the two safe ways of writing them.

Books are a cache (they can always be fetched again), so by default they live in the platform's user cache
directory; runs are results a researcher cares about, so they live in the user data directory, which
cleaning tools leave alone. Setting `LANGINTERP_HOME` moves both under one folder (`books/`, `runs/`),
which is how tests and shared machines keep everything in one place.

Every file is written atomically (a temp file in the same folder, fsync, rename), so a reader sees either
the old file or the new one, never half of one, even if the writer is killed. Work that several processes
may do at once (fetching the same book) is serialised with a file lock beside its target.
"""

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import platformdirs
from filelock import FileLock

APP_NAME = "langinterp"
HOME_ENV = "LANGINTERP_HOME"


def _home_override() -> Path | None:
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else None


def home() -> Path:
    """The folder that holds the book cache: `LANGINTERP_HOME` if set, else the user cache directory."""
    return _home_override() or platformdirs.user_cache_path(APP_NAME)


def books_dir() -> Path:
    """The book cache: one folder per Gutenberg id."""
    return home() / "books"


def runs_dir() -> Path:
    """Training runs: `LANGINTERP_HOME/runs` if set, else `runs/` in the user data directory."""
    override = _home_override()
    return override / "runs" if override else platformdirs.user_data_path(APP_NAME) / "runs"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` (str is encoded as UTF-8) to `path` so that no reader ever sees a partial file.

    The temp file lives in the target's folder so that the final `os.replace` is a same-filesystem rename,
    which is atomic; the data is fsynced first so a crash cannot leave a renamed but empty file.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX only; Windows has no umask to honour
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which is not thread-safe to repeat).

    mkstemp creates files readable by the owner only; cache files should get the usual permissions.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some platforms cannot open folders, and that is not an error."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process lock on `path` (lock file `path.lock` beside it) for the `with` block.

    The lock is advisory: it only serialises code that takes the same lock. The operating system releases
    it when the holder dies, so a crashed process cannot leave others waiting. `timeout` < 0 waits forever;
    otherwise `filelock.Timeout` is raised after that many seconds.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield
