"""Sophia's dataset format: lists of sequences stored as raw float32 files.

A dataset is a directory::

    DIR/train.list      relative paths of sequences, one a line, no extension
    DIR/dev.list
    DIR/test.list       (optional)
    DIR/<path>.input    little-endian float32, [time][input_dim]
    DIR/<path>.target   little-endian float32, [time][target_dim]; NaN = no target
    DIR/<path>.time     (optional, all sequences or none) float32 [time],
                        strictly increasing timestamps

The sequence ID is the last component of ``<path>``; IDs are numbered in the
order they first appear in ``train.list`` (:func:`id_order`).

What is here:

- :class:`DatasetError` -- bad data; the message names each file and problem.
- :class:`Dataset` -- one split, opened with :meth:`Dataset.open`; sequences
  are memory-mapped on demand, so memory does not grow with the dataset.
- :func:`infer_dims` -- ``(input_dim, target_dim)`` from the file sizes.
- :func:`id_order` -- the sequence IDs of a training split, numbered.
- :func:`check_dataset` -- a full check of every split, reporting all problems.
- :func:`check_targets` -- the targets fit a categorical loss (xent: one-hot or
  all-NaN frames; bce: elements in {0, 1} or NaN).
- :func:`check_tokens` -- every input is a token index: an integer in
  ``[0, vocab_size)`` (``ModelOptions.vocab_size`` > 0, ``input_dim`` 1).

Example
-------
>>> train = Dataset.open("data/toy", "train")             # doctest: +SKIP
>>> dev = Dataset.open("data/toy", "dev")                 # doctest: +SKIP
>>> train.input(0).shape == (train.sequences[0].length, train.input_dim)  # doctest: +SKIP
True
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "dev", "test")     # test is optional
FLOAT = np.dtype("<f4")
_SCAN_FLOATS = 1 << 20                # floats read at a time by the NaN/inf scan


class DatasetError(ValueError):
    """Bad data. ``problems`` lists each one, ``'<file>: <problem>'``; the
    message is those lines joined."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Sequence:
    """One entry of a list file: its relative path (no extension), its ID
    (the path's last component) and its length in frames."""

    path: str
    seq_id: str
    length: int


@dataclass(frozen=True)
class _Entry:
    """Float counts of one entry's files; None where a file is missing or bad."""

    path: str
    n_input: int | None
    n_target: int | None
    has_time: bool
    n_time: int | None

    @property
    def usable(self) -> bool:
        return (self.n_input is not None and self.n_target is not None
                and (self.n_time is not None or not self.has_time))


def read_list(root: str, split: str) -> list[str]:
    """Relative paths listed in ``root/<split>.list``, blank lines skipped.

    Raises :class:`DatasetError` if the file is missing, lists nothing, or
    lists an absolute path or one that leaves ``root``.
    """
    file = os.path.join(root, split + ".list")
    try:
        with open(file, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise DatasetError(f"{file}: missing list file") from None
    paths = [line.strip() for line in lines if line.strip()]
    if not paths:
        raise DatasetError(f"{file}: empty list (no sequence paths)")
    bad = [p for p in paths if os.path.isabs(p) or ".." in p.split("/")]
    if bad:
        raise DatasetError([f"{file}: {p!r} is not a path inside the dataset" for p in bad])
    return paths


def _float_count(file: str, problems: list[str]) -> int | None:
    try:
        size = os.path.getsize(file)
    except OSError:
        problems.append(f"{file}: missing file")
        return None
    if size % FLOAT.itemsize:
        problems.append(f"{file}: size {size} bytes is not a multiple of 4 (float32)")
        return None
    return size // FLOAT.itemsize


def _stat_entry(root: str, path: str, problems: list[str]) -> _Entry:
    base = os.path.join(root, path)
    has_time = os.path.exists(base + ".time")
    return _Entry(path, _float_count(base + ".input", problems),
                  _float_count(base + ".target", problems), has_time,
                  _float_count(base + ".time", problems) if has_time else None)


def _time_presence(root: str, entries: list[_Entry], problems: list[str]) -> bool:
    """True if every entry has a .time file; a problem per file if only some do."""
    with_time = [e for e in entries if e.has_time]
    if with_time and len(with_time) < len(entries):
        problems.extend(f"{os.path.join(root, e.path)}.time: missing, but other "
                        f"sequences have .time files (all or none must)"
                        for e in entries if not e.has_time)
    return bool(with_time) and len(with_time) == len(entries)


def _time_entries(root: str) -> list[_Entry]:
    """Which entries of all readable lists have a .time file (sizes not read)."""
    entries = []
    for split in SPLITS:
        try:
            paths = read_list(root, split)
        except DatasetError:
            continue                # reported when that split is opened or checked
        entries += [_Entry(p, None, None, os.path.exists(os.path.join(root, p + ".time")),
                           None) for p in paths]
    return entries


def _infer(root: str, entries: list[_Entry], input_dim: int, target_dim: int,
           has_time: bool, problems: list[str]) -> tuple[int, int] | None:
    """The most common (input_dim, target_dim) the sizes allow; None on failure."""
    if input_dim and target_dim:
        return input_dim, target_dim
    usable = [e for e in entries if e.usable]
    if not usable:                      # the problems found so far say why
        return None
    if not (has_time or input_dim or target_dim):
        g = math.gcd(*(n for e in usable for n in (e.n_input, e.n_target)))
        if g > 1:
            problems.append(f"{root}: cannot infer input_dim and target_dim from the "
                            f"file sizes (all are multiples of {g}); set input_dim "
                            f"and target_dim")
            return None
    votes = Counter()
    for e in usable:
        if has_time:
            frames = e.n_time
        elif input_dim:
            frames = e.n_input // input_dim if e.n_input % input_dim == 0 else 0
        elif target_dim:
            frames = e.n_target // target_dim if e.n_target % target_dim == 0 else 0
        else:
            frames = math.gcd(e.n_input, e.n_target)
        if frames and e.n_input % frames == 0 and e.n_target % frames == 0:
            votes[input_dim or e.n_input // frames, target_dim or e.n_target // frames] += 1
    if not votes:
        problems.append(f"{root}: cannot infer input_dim and target_dim (no sequence "
                        f"with frames fits); set input_dim and target_dim")
        return None
    return votes.most_common(1)[0][0]


def _check_lengths(root: str, entries: list[_Entry], input_dim: int, target_dim: int,
                   has_time: bool, problems: list[str]) -> list[Sequence]:
    """The entries whose sizes agree with the dims, as :class:`Sequence`;
    a problem for each that does not."""
    sequences = []
    for e in entries:
        if not e.usable:
            continue
        base = os.path.join(root, e.path)
        bad = [f"{base}.{ext}: {n} floats is not a multiple of {name} {dim}"
               for ext, n, name, dim in (("input", e.n_input, "input_dim", input_dim),
                                         ("target", e.n_target, "target_dim", target_dim))
               if n % dim]
        if not bad:
            frames = e.n_input // input_dim
            if e.n_target // target_dim != frames:
                bad.append(f"{base}.target: {e.n_target // target_dim} frames, but "
                           f"{base}.input has {frames}")
            elif has_time and e.n_time != frames:
                bad.append(f"{base}.time: {e.n_time} timestamps, but {base}.input "
                           f"has {frames} frames")
        problems.extend(bad)
        if not bad:
            sequences.append(Sequence(e.path, e.path.rsplit("/", 1)[-1], frames))
    return sequences


def _stat_splits(root: str, splits, problems: list[str]) -> dict[str, list[_Entry]]:
    """Entries of each split whose list could be read; test only if present."""
    found = {}
    for split in splits:
        if split == "test" and not os.path.exists(os.path.join(root, "test.list")):
            continue
        try:
            paths = read_list(root, split)
        except DatasetError as e:
            problems.extend(e.problems)
            continue
        found[split] = [_stat_entry(root, p, problems) for p in paths]
    return found


def infer_dims(root: str, input_dim: int = 0, target_dim: int = 0) -> tuple[int, int]:
    """``(input_dim, target_dim)`` of a dataset; a 0 argument is inferred.

    Inference uses the sizes of all splits together, so every split agrees:
    with .time files the frame counts are known exactly; otherwise, if the
    gcd ``G`` of all input and target float counts is 1, each sequence has
    ``gcd(n_input, n_target)`` frames. ``G > 1`` is ambiguous and raises
    :class:`DatasetError`, as does any bad file found on the way.
    """
    if input_dim < 0 or target_dim < 0:
        raise ValueError(f"dims must be >= 0 (got {input_dim}, {target_dim})")
    if input_dim and target_dim:
        return input_dim, target_dim
    problems: list[str] = []
    entries = [e for es in _stat_splits(root, SPLITS, problems).values() for e in es]
    has_time = _time_presence(root, entries, problems)
    dims = _infer(root, entries, input_dim, target_dim, has_time, problems)
    if problems:
        raise DatasetError(problems)
    return dims


class Dataset:
    """One split of a dataset; use :meth:`open`.

    Attributes: ``root``, ``split``, ``input_dim``, ``target_dim``,
    ``has_time`` (sequences carry .time files) and ``sequences`` (a list of
    :class:`Sequence`). Sequence data is read only through memory maps.
    """

    def __init__(self, root: str, split: str, input_dim: int, target_dim: int,
                 has_time: bool, sequences: list[Sequence]):
        self.root, self.split = root, split
        self.input_dim, self.target_dim = input_dim, target_dim
        self.has_time, self.sequences = has_time, sequences

    @classmethod
    def open(cls, root: str, split: str, input_dim: int = 0,
             target_dim: int = 0) -> "Dataset":
        """Open ``root/<split>.list`` and check the sizes of its files.

        A dim of 0 is inferred with :func:`infer_dims` (over all splits).
        Raises :class:`DatasetError` naming every problem found from file
        sizes, and .time files present for some sequences of any split but
        not others. Values (NaN/inf inputs, timestamp order) are checked by
        :func:`check_dataset`, timestamps also by :meth:`time_signal`.
        """
        input_dim, target_dim = infer_dims(root, input_dim, target_dim)
        problems: list[str] = []
        entries = [_stat_entry(root, p, problems) for p in read_list(root, split)]
        has_time = _time_presence(root, _time_entries(root), problems)
        sequences = _check_lengths(root, entries, input_dim, target_dim, has_time, problems)
        if problems:
            raise DatasetError(problems)
        return cls(root, split, input_dim, target_dim, has_time, sequences)

    def subset(self, indices) -> "Dataset":
        """The same split restricted to the sequences at ``indices`` (in that order);
        shares the files, reads nothing."""
        return Dataset(self.root, self.split, self.input_dim, self.target_dim, self.has_time,
                       [self.sequences[i] for i in indices])

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_frames(self) -> int:
        """Frames of all sequences together."""
        return sum(s.length for s in self.sequences)

    def file(self, i: int, ext: str) -> str:
        """Path of sequence ``i``'s file with extension ``ext`` (input, target, time)."""
        return os.path.join(self.root, self.sequences[i].path + "." + ext)

    def _map(self, i: int, ext: str, dim: int) -> np.ndarray:
        length = self.sequences[i].length
        if length == 0:                       # an empty file cannot be mapped
            empty = np.zeros((0, dim), FLOAT)
            empty.flags.writeable = False
            return empty
        return np.memmap(self.file(i, ext), FLOAT, "r", shape=(length, dim))

    def input(self, i: int) -> np.ndarray:
        """Read-only memory map of sequence ``i``'s inputs, float32 [T][input_dim]."""
        return self._map(i, "input", self.input_dim)

    def target(self, i: int) -> np.ndarray:
        """Read-only memory map of sequence ``i``'s targets, float32 [T][target_dim]
        (NaN = no target at that frame)."""
        return self._map(i, "target", self.target_dim)

    def time_signal(self, i: int) -> np.ndarray:
        """Time of each frame of sequence ``i``, float32 [T], first frame 0.

        The timestamps minus the first one, or ``arange(T)`` without .time
        files. A new array (it reads the whole .time file); raises
        :class:`DatasetError` if the timestamps are not finite and strictly
        increasing.
        """
        if not self.has_time:
            return np.arange(self.sequences[i].length, dtype=np.float32)
        file = self.file(i, "time")
        stamps = np.fromfile(file, FLOAT)
        problem = _time_problem(file, stamps)
        if problem:
            raise DatasetError(problem)
        return (stamps - stamps[:1]).astype(np.float32)


def id_order(train_dataset: Dataset) -> list[str]:
    """Sequence IDs of a training split, in first-seen order of its list.

    Index ``n`` of the result is ID number ``n``; an ID not in it maps to
    ``len(result)`` (the unseen slot).
    """
    return list(dict.fromkeys(s.seq_id for s in train_dataset.sequences))


def check_targets(dataset: Dataset, loss_type: str) -> None:
    """Raise :class:`DatasetError` if a target does not fit ``loss_type``.

    ``xent`` needs each target frame one-hot (one 1, the rest 0) or all NaN (no
    target); ``bce`` needs each element 0, 1 or NaN. Other losses take any
    target. Reads every .target file of ``dataset`` in chunks; the message names
    the first bad frame of each file.
    """
    if loss_type not in ("xent", "bce"):
        return
    problems, rows = [], max(1, _SCAN_FLOATS // dataset.target_dim)
    for i, seq in enumerate(dataset.sequences):
        target_tk = dataset.target(i)
        for start in range(0, seq.length, rows):
            problem = _target_problem(dataset.file(i, "target"), loss_type, start,
                                      np.asarray(target_tk[start:start + rows]))
            if problem:
                problems.append(problem)
                break
    if problems:
        raise DatasetError(problems)


def _target_problem(file: str, loss_type: str, start: int, target_tk: np.ndarray) -> str | None:
    """The first frame of a chunk (starting at frame ``start``) that ``loss_type`` cannot take."""
    nan_tk = np.isnan(target_tk)
    if loss_type == "xent":
        one_hot_t = (np.sum(target_tk == 1, axis=1) == 1) & np.all((target_tk == 0) | (target_tk == 1), axis=1)
        bad = np.flatnonzero(~(nan_tk.all(axis=1) | one_hot_t))
        if bad.size:
            return (f"{file}: target frame {start + bad[0]} is {target_tk[bad[0]].tolist()}, "
                    "but loss_type xent needs a one-hot frame (one 1, the rest 0) or all NaN")
        return None
    bad_tk = ~(nan_tk | (target_tk == 0) | (target_tk == 1))
    bad = np.flatnonzero(bad_tk.any(axis=1))
    if bad.size:
        k = np.flatnonzero(bad_tk[bad[0]])[0]
        return (f"{file}: target frame {start + bad[0]}, dimension {k} is {target_tk[bad[0], k]}, "
                "but loss_type bce needs targets 0, 1 or NaN")
    return None


def check_tokens(dataset: Dataset, vocab_size: int) -> None:
    """Raise :class:`DatasetError` unless every input of ``dataset`` is a token index.

    Token inputs (``vocab_size`` > 0) have ``input_dim`` 1 and hold an integer in
    ``[0, vocab_size)`` per frame, stored as float32. Reads every .input file in
    chunks; the message names the first bad frame of each file.
    """
    if dataset.input_dim != 1:
        raise DatasetError(f"{dataset.root}: token inputs (vocab_size {vocab_size}) need "
                           f"input_dim 1, one index per frame; the data has {dataset.input_dim}")
    problems = [_token_problem(dataset.file(i, "input"), vocab_size)
                for i in range(len(dataset))]
    problems = [p for p in problems if p]
    if problems:
        raise DatasetError(problems)


def _token_problem(file: str, vocab_size: int) -> str | None:
    """The first frame of a one-wide .input file that is not an integer in [0, vocab_size)."""
    if os.path.getsize(file) == 0:
        return None
    flat = np.memmap(file, FLOAT, "r")
    for start in range(0, flat.size, _SCAN_FLOATS):
        chunk = np.asarray(flat[start:start + _SCAN_FLOATS])
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~((chunk >= 0) & (chunk < vocab_size) & (chunk == np.floor(chunk))))
        if bad.size:
            k = start + bad[0]
            return (f"{file}: input frame {k} is {flat[k]}, but token inputs need an integer "
                    f"index in [0, {vocab_size}) (vocab_size {vocab_size})")
    return None


def _time_problem(file: str, stamps: np.ndarray) -> str | None:
    bad = np.flatnonzero(~np.isfinite(stamps))
    if bad.size:
        return f"{file}: timestamp {stamps[bad[0]]} at frame {bad[0]} is not finite"
    down = np.flatnonzero(np.diff(stamps) <= 0)
    if down.size:
        k = down[0] + 1
        return (f"{file}: timestamps not strictly increasing at frame {k} "
                f"({stamps[k - 1]} then {stamps[k]})")
    return None


def _input_problem(file: str, input_dim: int) -> str | None:
    """Scan an .input file in chunks for NaN or inf; None if all finite."""
    if os.path.getsize(file) == 0:
        return None
    flat = np.memmap(file, FLOAT, "r")
    for start in range(0, flat.size, _SCAN_FLOATS):
        bad = np.flatnonzero(~np.isfinite(flat[start:start + _SCAN_FLOATS]))
        if bad.size:
            k = start + bad[0]
            return (f"{file}: input value {flat[k]} at frame {k // input_dim}, "
                    f"dimension {k % input_dim} is not finite (NaN or inf)")
    return None


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`check_dataset` found: per-split sequence and frame counts."""

    root: str
    input_dim: int
    target_dim: int
    has_time: bool
    num_ids: int
    sequences: dict[str, int]
    frames: dict[str, int]

    def format(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.root}: input_dim {self.input_dim}, target_dim "
                 f"{self.target_dim}, {'timestamps' if self.has_time else 'no timestamps'}, "
                 f"{self.num_ids} sequence IDs in train"]
        lines += [f"  {split}: {n} sequences, {self.frames[split]} frames"
                  for split, n in self.sequences.items()]
        return "\n".join(lines)


def check_dataset(root: str, input_dim: int = 0, target_dim: int = 0,
                  vocab_size: int = 0) -> DatasetSummary:
    """Check every split fully: lists, sizes, dims, NaN/inf inputs, timestamps, and
    with ``vocab_size`` > 0 token inputs (``input_dim`` 1, each an integer index in
    ``[0, vocab_size)``: :func:`check_tokens`).

    Reads every .input file once in chunks (memory stays bounded). Returns a
    :class:`DatasetSummary`; raises :class:`DatasetError` listing all
    problems found, one a line.
    """
    if input_dim < 0 or target_dim < 0 or vocab_size < 0:
        raise ValueError(f"dims and vocab_size must be >= 0 (got {input_dim}, {target_dim}, "
                         f"{vocab_size})")
    if vocab_size and input_dim not in (0, 1):
        raise ValueError(f"token inputs (vocab_size {vocab_size}) have input_dim 1, got {input_dim}")
    input_dim = 1 if vocab_size else input_dim
    problems: list[str] = []
    found = _stat_splits(root, SPLITS, problems)
    entries = [e for es in found.values() for e in es]
    has_time = _time_presence(root, entries, problems)
    dims = _infer(root, entries, input_dim, target_dim, has_time, problems) if entries else None
    checked = {}
    if dims:
        for split, es in found.items():
            checked[split] = _check_lengths(root, es, *dims, has_time, problems)
            for s in checked[split]:
                base = os.path.join(root, s.path)
                problem = _input_problem(base + ".input", dims[0])
                if problem is None and vocab_size:
                    problem = _token_problem(base + ".input", vocab_size)
                problems.append(problem)
                if has_time:
                    problems.append(_time_problem(base + ".time",
                                                  np.fromfile(base + ".time", FLOAT)))
    problems = [p for p in dict.fromkeys(problems) if p]
    if problems:
        raise DatasetError(problems)
    train = Dataset(root, "train", *dims, has_time, checked["train"])
    return DatasetSummary(root, *dims, has_time, len(id_order(train)),
                          {k: len(v) for k, v in checked.items()},
                          {k: sum(s.length for s in v) for k, v in checked.items()})
