"""A training run's directory, where every write is atomic.

Each file is written to a temporary file in the same directory, flushed and
fsynced, moved onto its final name with :func:`os.replace`, and then the
directory is fsynced: a process killed at any instant leaves every file
either in its old or its new version, never torn. The one exception is
``metrics.jsonl``, which is appended to; :meth:`Workspace.read_metrics`
skips a torn line.

Names are relative paths inside the workspace (``"best"``,
``"snapshots/pivot"``); subdirectories are created as needed.
:meth:`Workspace.save_arrays` adds ``.npz`` and :meth:`Workspace.save_json`
adds ``.json``; text files keep the name they are given.

Example
-------
>>> import tempfile, numpy as np
>>> ws = Workspace(tempfile.mkdtemp())
>>> ws.save_arrays("snapshots/pivot", {"layer0.W_x": np.eye(2)})
>>> ws.load_arrays("snapshots/pivot")["layer0.W_x"].shape
(2, 2)
>>> ws.write_ids_order(["a", "b"]); ws.read_ids_order()
['a', 'b']
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, IO, Mapping

import numpy as np

IDS_ORDER = "ids.order"
METRICS = "metrics.jsonl"


class WorkspaceError(ValueError):
    """A workspace file is missing, unreadable or corrupt; the message names it."""


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
    _make_dirs(path.parent)
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
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


class Workspace:
    """One training run's directory.

    Parameters
    ----------
    path : str or PathLike
        The directory.
    create : bool, optional
        Create the directory (and its parents) if it does not exist; otherwise
        a missing directory is a :class:`WorkspaceError`.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if create and not self.path.exists():
            _make_dirs(self.path)
        if not self.path.is_dir():
            raise WorkspaceError(f"workspace {self.path} is not a directory")

    def file(self, name: str, ext: str = "") -> Path:
        """The path of file ``name + ext``; raise ValueError if ``name`` leaves the workspace."""
        if (not isinstance(name, str) or not name or Path(name).is_absolute()
                or ".." in Path(name).parts):
            raise ValueError(f"workspace file name must be a relative path inside it: {name!r}")
        return self.path / (name + ext)

    def has(self, name: str) -> bool:
        """Whether a file was saved under ``name`` (as arrays, JSON or text)."""
        return any(self.file(name, ext).is_file() for ext in ("", ".npz", ".json"))

    def save_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Save named arrays atomically to ``<name>.npz`` (a plain ``np.savez`` archive).

        Keys are stable parameter names such as ``"layer0.W_x"``; object arrays
        are refused (no pickles). Side effect: replaces ``<name>.npz``.
        """
        for key in arrays:
            if not isinstance(key, str) or not key:
                raise ValueError(f"array names must be non-empty strings; got {key!r}")
        atomic_write(self.file(name, ".npz"), lambda f: _write_npz(f, arrays))

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Load ``<name>.npz`` as ``{key: array}``; raise :class:`WorkspaceError` if missing or corrupt."""
        path = self.file(name, ".npz")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            raise WorkspaceError(f"cannot load arrays from {path}: {error}") from error

    def save_json(self, name: str, obj: Any) -> None:
        """Save ``obj`` atomically as ``<name>.json``; NaN or inf is a ValueError."""
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(self.file(name, ".json"), text.encode("utf-8"))

    def load_json(self, name: str) -> Any:
        """Load ``<name>.json``; raise :class:`WorkspaceError` if missing or corrupt."""
        path = self.file(name, ".json")
        try:
            return json.loads(self._read_bytes(path).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise WorkspaceError(f"cannot parse JSON in {path}: {error}") from error

    def save_text(self, name: str, text: str) -> None:
        """Save ``text`` atomically (UTF-8) as file ``name``."""
        atomic_write_bytes(self.file(name), text.encode("utf-8"))

    def load_text(self, name: str) -> str:
        """Load file ``name`` as UTF-8 text; raise :class:`WorkspaceError` if missing."""
        path = self.file(name)
        try:
            return self._read_bytes(path).decode("utf-8")
        except UnicodeDecodeError as error:
            raise WorkspaceError(f"{path} is not UTF-8 text: {error}") from error

    def write_ids_order(self, ids: list[str]) -> None:
        """Save the sequence IDs' order to ``ids.order``: IDs joined by ';', no newline.

        Raises ValueError for an empty ID or one containing ';' or a line break.
        """
        for seq_id in ids:
            if not isinstance(seq_id, str) or not seq_id or any(c in seq_id for c in ";\r\n"):
                raise ValueError(f"sequence ID must be a non-empty string without ';' "
                                 f"or line breaks; got {seq_id!r}")
        self.save_text(IDS_ORDER, ";".join(ids))

    def read_ids_order(self) -> list[str]:
        """The sequence IDs saved by :meth:`write_ids_order`, in order."""
        text = self.load_text(IDS_ORDER)
        return text.split(";") if text else []

    def copy_preprocessing(self, data_dir: str | os.PathLike) -> list[str]:
        """Copy every regular file at the dataset root except ``*.list`` into the workspace.

        These are the preprocessing files (``mean.matrix``, ``whitening.matrix``, …)
        a trained model needs at inference. Each copy is atomic. Returns the
        copied file names, sorted.
        """
        names = sorted(entry.name for entry in os.scandir(data_dir)
                       if entry.is_file() and not entry.name.endswith(".list"))
        for name in names:
            with open(Path(data_dir) / name, "rb") as src:
                atomic_write(self.file(name), lambda f: shutil.copyfileobj(src, f))
        return names

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line to ``metrics.jsonl`` (flushed and fsynced).

        Non-finite floats are stored as null. If the file ends with a torn line
        (a crash mid-append), the record starts on a new line.
        """
        line = json.dumps(_finite_or_none(dict(record)), allow_nan=False) + "\n"
        path = self.file(METRICS)
        is_new = not path.exists()
        with open(path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if is_new:
            _fsync_dir(path.parent)

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` in order ([] if there is none); torn lines are skipped."""
        path = self.file(METRICS)
        if not path.exists():
            return []
        records = []
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    @staticmethod
    def _read_bytes(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise WorkspaceError(f"cannot read {path}: {error}") from error


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` archive, as :func:`np.savez` does, refusing pickles."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each new directory's parent."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        os.makedirs(directory, exist_ok=True)
        _fsync_dir(directory.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
