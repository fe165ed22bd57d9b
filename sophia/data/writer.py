"""Write a dataset in Sophia's on-disk format, one sequence at a time.

A dataset is a directory holding ``train.list``, ``dev.list`` and
``test.list``: ``'\\n'``-delimited relative paths of sequences, without
extension (no trailing newline; an empty split gives an empty file). For each
listed path there are

- ``<path>.input``  — little-endian float32 (``'<f4'``), shape [t][j], flat;
- ``<path>.target`` — ``'<f4'``, shape [t][k], flat; NaN means "no target at
  this frame";
- ``<path>.time``   — optional, ``'<f4'``, shape [t]: one timestamp per frame,
  strictly increasing (asynchronously sampled sequences).

The sequence ID is the last component of the path (``train/000123``). ``j``
and ``k`` are the same for every sequence of a dataset.

:class:`DatasetWriter` writes each sequence as soon as it is added, so a
generator never holds a whole dataset in memory; the ``.list`` files are
written by :meth:`DatasetWriter.close` (or on leaving a ``with`` block without
an exception).

Example
-------
>>> import numpy as np, tempfile, os
>>> root = os.path.join(tempfile.mkdtemp(), "toy")
>>> with DatasetWriter(root) as writer:
...     writer.add("train", "train/000000", np.zeros((5, 2)), np.ones((5, 1)))
>>> np.fromfile(os.path.join(root, "train/000000.input"), "<f4").shape
(10,)
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

SPLITS = ("train", "dev", "test")
DTYPE = np.dtype("<f4")


class DatasetWriter:
    """Stream sequences of a dataset to disk.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset directory. It is created if missing; it must be empty if it
        exists, so that no stale sequence of an earlier run survives.

    Raises
    ------
    FileExistsError
        If `root` exists and is not an empty directory.
    """

    def __init__(self, root):
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise FileExistsError(f"dataset directory {self.root} exists and is not empty")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lists = {split: [] for split in SPLITS}
        self._seen = set()
        self.input_dim = None
        self.target_dim = None
        self.closed = False

    def add(self, split, rel_path, input_tj, target_tk, time_t=None):
        """Write one sequence and remember it for `split`'s list.

        Parameters
        ----------
        split : {'train', 'dev', 'test'}
        rel_path : str
            Relative POSIX path without extension, e.g. ``'train/000123'``;
            its directories are created.
        input_tj : array_like, shape [t][j]
            Real inputs, all finite.
        target_tk : array_like, shape [t][k]
            Real targets; NaN marks a frame without target, infinities are
            refused.
        time_t : array_like, shape [t], optional
            Finite timestamps, strictly increasing once cast to float32.

        Raises
        ------
        ValueError
            On an unknown split, a bad or repeated path, mismatched shapes,
            a width differing from earlier sequences, non-finite values, or
            timestamps that are not strictly increasing.
        TypeError
            On non-real data (complex, object, strings).
        RuntimeError
            If the writer is closed.
        """
        if self.closed:
            raise RuntimeError("DatasetWriter is closed")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rel_path = self._check_path(rel_path)
        input_tj = _as_f4(input_tj, "input_tj", ndim=2)
        target_tk = _as_f4(target_tk, "target_tk", ndim=2)
        n_frames = input_tj.shape[0]
        if n_frames == 0:
            raise ValueError(f"{rel_path}: a sequence needs at least one frame")
        if target_tk.shape[0] != n_frames:
            raise ValueError(f"{rel_path}: input has {n_frames} frames, "
                             f"target has {target_tk.shape[0]}")
        self._check_widths(rel_path, input_tj.shape[1], target_tk.shape[1])
        if not np.isfinite(input_tj).all():
            raise ValueError(f"{rel_path}: input has NaN or infinite values")
        if np.isinf(target_tk).any():
            raise ValueError(f"{rel_path}: target has infinite values")
        if time_t is not None:
            time_t = _as_f4(time_t, "time_t", ndim=1)
            if time_t.shape[0] != n_frames:
                raise ValueError(f"{rel_path}: time has {time_t.shape[0]} frames, "
                                 f"input has {n_frames}")
            if not np.isfinite(time_t).all() or (np.diff(time_t) <= 0).any():
                raise ValueError(f"{rel_path}: time must be finite and strictly "
                                 "increasing in float32")
        base = self.root / rel_path
        base.parent.mkdir(parents=True, exist_ok=True)
        _write(base.with_name(base.name + ".input"), input_tj)
        _write(base.with_name(base.name + ".target"), target_tk)
        if time_t is not None:
            _write(base.with_name(base.name + ".time"), time_t)
        self._seen.add(rel_path)
        self._lists[split].append(rel_path)

    def write_array(self, name, array):
        """Write `array` flat as ``'<f4'`` to ``<root>/<name>``.

        For dataset-wide values such as normalisation statistics
        (``mean.matrix``, ``std.matrix``).

        Raises
        ------
        ValueError
            If `name` is not a plain file name.
        """
        if not name or PurePosixPath(name).name != name or name in (".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        _write(self.root / name, _as_f4(array, name, ndim=None))

    def close(self):
        """Write ``train.list``, ``dev.list`` and ``test.list``; idempotent."""
        if self.closed:
            return
        for split, paths in self._lists.items():
            (self.root / f"{split}.list").write_text("\n".join(paths), encoding="utf-8")
        self.closed = True

    def counts(self):
        """Return ``{split: number of sequences added so far}``."""
        return {split: len(paths) for split, paths in self._lists.items()}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # On an error the lists are not written: an incomplete dataset stays
        # visibly unusable instead of looking finished.
        if exc_type is None:
            self.close()
        return False

    def _check_path(self, rel_path):
        if not isinstance(rel_path, str) or not rel_path:
            raise ValueError(f"rel_path must be a non-empty string, got {rel_path!r}")
        path = PurePosixPath(rel_path)
        bad = (path.is_absolute() or "\\" in rel_path or "\n" in rel_path
               or any(part in ("", ".", "..") for part in rel_path.split("/")))
        if bad:
            raise ValueError(f"rel_path must be a relative POSIX path without "
                             f"'.', '..' or empty parts, got {rel_path!r}")
        if rel_path in self._seen:
            raise ValueError(f"sequence {rel_path!r} was already added")
        return rel_path

    def _check_widths(self, rel_path, input_dim, target_dim):
        if self.input_dim is None:
            self.input_dim, self.target_dim = input_dim, target_dim
        if (input_dim, target_dim) != (self.input_dim, self.target_dim):
            raise ValueError(f"{rel_path}: widths (j={input_dim}, k={target_dim}) differ "
                             f"from the dataset's (j={self.input_dim}, k={self.target_dim})")


def _as_f4(values, name, ndim):
    """Return `values` as a C-ordered ``'<f4'`` array with `ndim` axes."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=DTYPE)


def _write(path, array):
    with open(path, "wb") as stream:
        stream.write(array.tobytes(order="C"))


__all__ = ["DatasetWriter", "SPLITS", "DTYPE"]
