"""Atomic files: a write that a process killed at any instant never tears.

- :func:`atomic_write` -- fill a temporary file in the target's directory, fsync
  it, :func:`os.replace` it onto its name, then fsync the directory.
- :func:`atomic_write_bytes` -- the same for a bytes object.
- :func:`make_dirs`, :func:`fsync_dir` -- create directories durably.

Example
-------
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "sub", "a.txt")
>>> atomic_write_bytes(path, b"hello"); open(path, "rb").read()
b'hello'
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_CREATE_MODE = _umask_mode()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file that replaces ``path``.

    Side effects: creates missing parent directories; on success ``path`` holds
    the new content and the directory entry is fsynced; on failure the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _CREATE_MODE)    # mkstemp makes 0600; a saved file follows the umask like any other
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each new directory's parent."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        os.makedirs(directory, exist_ok=True)
        fsync_dir(directory.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or replaced file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
