"""The workspace: one training run's directory, the contract that training,
serving and the benchmarks share.

==========================  ====================================================
``options.json``            ``{"model": ..., "train": ..., "seed": ..., "data_dir": ...}``
                            (model options with dims and ``num_ids`` filled in)
``params.npz``              the best parameters and buffers (``Net.get_values()``):
                            the model to serve
``ids.order``               the training sequence IDs, ';'-separated
preprocessing files         every non-``.list`` file of the dataset root, copied
                            (``vocab.json``: a token model's symbols, :mod:`sophia.data.vocab`)
``snapshots/pivot.npz``     the model an annealing rollback returns to
``snapshots/resume.npz``    everything ``train.py --resume`` needs to continue the
                            run exactly (:mod:`sophia.training.checkpoint`)
``metrics.jsonl``           one record per epoch
``learning_curve.png``      train/dev loss per epoch
==========================  ====================================================

Every write is atomic (:mod:`sophia.atomic`): a process killed at any instant
leaves every file in its old or its new version, never torn. The one exception
is ``metrics.jsonl``, which is appended to; :meth:`Workspace.read_metrics` skips
a torn line. Names are relative paths inside the workspace;
:meth:`Workspace.save_arrays` adds ``.npz`` and :meth:`Workspace.save_json` adds
``.json``. Nothing is pickled.

What is here:

- :class:`Workspace` -- the directory and its typed, atomic reads and writes.
- :class:`RunOptions`, :func:`save_run_options`, :func:`load_run_options` --
  ``options.json``.
- :func:`load_model_options`, :func:`load_ids`, :func:`load_params` -- what a
  served model needs, each checked, errors naming the file.
- :func:`load_vocab` -- ``vocab.json`` (token models), checked against ``vocab_size``.
- :func:`load_net` -- a :class:`~sophia.graph.net.Net` with the best parameters.
- :func:`model_differences` -- requested model options that contradict a saved model.

Example
-------
>>> import tempfile, numpy as np
>>> ws = Workspace(tempfile.mkdtemp())
>>> ws.save_arrays(PIVOT, {"layer0.W_x": np.eye(2)})
>>> ws.load_arrays(PIVOT)["layer0.W_x"].shape
(2, 2)
>>> ws.write_ids_order(["a", "b"]); ws.read_ids_order()
['a', 'b']
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np

from sophia.atomic import atomic_write, atomic_write_bytes, fsync_dir, make_dirs
from sophia.data.dataset import DatasetError
from sophia.data.vocab import VOCAB_FILE, read_vocab
from sophia.options import ModelOptions, OptionError, TrainOptions, from_dict, parse_value, to_dict

OPTIONS = "options"                  # options.json
PARAMS = "params"                    # params.npz
IDS_ORDER = "ids.order"
PIVOT = "snapshots/pivot"            # .npz
RESUME = "snapshots/resume"          # .npz
METRICS = "metrics.jsonl"
CURVE = "learning_curve.png"

# Model options that say "take it from the data" when 0.
INFERRED_WHEN_ZERO = ("input_dim", "target_dim", "num_ids")


class WorkspaceError(ValueError):
    """A workspace file is missing, unreadable or corrupt; the message names it."""


class Workspace:
    """One training run's directory (see the module docstring for its files).

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
            make_dirs(self.path)
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
            fsync_dir(path.parent)

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

    def keep_metrics(self, count: int) -> None:
        """Keep the first ``count`` records of ``metrics.jsonl`` (torn lines dropped);
        rewritten atomically. Side effect: a resumed run drops the records of an
        epoch its checkpoint does not hold."""
        records = self.read_metrics()[:count]
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
        atomic_write_bytes(self.file(METRICS), text.encode("utf-8"))

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


# -- the contract: options, the served model ----------------------------------------

@dataclass(frozen=True)
class RunOptions:
    """The content of ``options.json``."""

    model: ModelOptions
    train: TrainOptions
    seed: int
    data_dir: str


def save_run_options(ws: Workspace, run: RunOptions) -> None:
    """Write ``options.json`` atomically (``data_dir`` as an absolute path)."""
    ws.save_json(OPTIONS, {"model": to_dict(run.model), "train": to_dict(run.train),
                           "seed": int(run.seed), "data_dir": os.path.abspath(run.data_dir)})


def load_run_options(ws: Workspace) -> RunOptions:
    """Read ``options.json``; raise :class:`WorkspaceError` naming it if malformed."""
    d = ws.load_json(OPTIONS)
    path = ws.file(OPTIONS, ".json")
    if not isinstance(d, dict) or not {"model", "train", "seed"} <= set(d):
        raise WorkspaceError(f"{path}: expected keys model, train, seed")
    model = load_model_options(ws, d)
    try:
        train = from_dict(TrainOptions, d["train"])
    except (OptionError, TypeError, AttributeError) as error:
        raise WorkspaceError(f"{path}: 'train': {error}") from error
    if isinstance(d["seed"], bool) or not isinstance(d["seed"], int):
        raise WorkspaceError(f"{path}: seed must be an integer, got {d['seed']!r}")
    return RunOptions(model, train, d["seed"], str(d.get("data_dir", "")))


def load_model_options(ws: Workspace, saved: Any = None) -> ModelOptions:
    """The ``"model"`` object of ``options.json`` (or of ``saved``, its parsed content),
    validated; raise :class:`WorkspaceError` naming the file if it is missing or bad."""
    path = ws.file(OPTIONS, ".json")
    saved = ws.load_json(OPTIONS) if saved is None else saved
    model = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(model, dict):
        raise WorkspaceError(f"{path}: expected an object with a 'model' object")
    try:
        return from_dict(ModelOptions, model)
    except (OptionError, TypeError, AttributeError) as error:
        raise WorkspaceError(f"{path}: 'model': {error}") from error


def load_ids(ws: Workspace, model: ModelOptions) -> list[str]:
    """``ids.order`` for a model with an ID embedding ([] without one); raise
    :class:`WorkspaceError` if it is missing or its length is not ``num_ids``."""
    if not model.learn_id_embedding:
        return []
    ids = ws.read_ids_order()
    if len(ids) != model.num_ids:
        raise WorkspaceError(f"{ws.file(IDS_ORDER)} holds {len(ids)} sequence IDs but "
                             f"{ws.file(OPTIONS, '.json')} says num_ids = {model.num_ids}")
    return ids


def load_vocab(ws: Workspace, model: ModelOptions) -> dict[str, int]:
    """The workspace's ``vocab.json`` as ``{symbol: index}``, every index below the
    model's ``vocab_size``; raise :class:`WorkspaceError` naming the file if it is
    missing or bad (:func:`sophia.data.vocab.read_vocab`)."""
    path = ws.file(VOCAB_FILE)
    if not path.is_file():
        raise WorkspaceError(f"{path}: missing (a token model's vocabulary, copied from "
                             "the dataset's vocab.json by training)")
    try:
        return read_vocab(path, model.vocab_size)
    except DatasetError as error:
        raise WorkspaceError(str(error)) from None


def load_params(ws: Workspace, name: str = PARAMS) -> dict[str, np.ndarray]:
    """The arrays of ``<name>.npz``; raise :class:`WorkspaceError` naming the file if
    it is missing, corrupt, or holds non-numeric or non-finite values."""
    arrays = ws.load_arrays(name)
    bad = [key for key, a in arrays.items() if a.dtype.kind not in "fiu" or not np.all(np.isfinite(a))]
    if bad:
        raise WorkspaceError(f"{ws.file(name, '.npz')}: non-numeric or non-finite values in "
                             + ", ".join(bad))
    return arrays


def load_net(path: str | os.PathLike, dtype: str = "float32"):
    """Build the net a workspace describes and load its best parameters.

    Returns ``(net, run_options)``. Compiles nothing. Raises
    :class:`WorkspaceError` naming the file for a missing or corrupt file, or
    parameters that do not fit the saved options.
    """
    from sophia.graph.net import Net         # PyTensor only where a net is built

    ws = Workspace(path, create=False)
    run = load_run_options(ws)
    net = Net(run.model, seed=run.seed, dtype=dtype)
    set_params(ws, net, load_params(ws))
    return net, run


def set_params(ws: Workspace, net, arrays: Mapping[str, np.ndarray], name: str = PARAMS) -> None:
    """``net.set_values(arrays)``, its misfit a :class:`WorkspaceError` naming ``<name>.npz``."""
    try:
        net.set_values(arrays)
    except ValueError as error:
        raise WorkspaceError(f"{ws.file(name, '.npz')}: {error}") from error


def model_differences(saved: ModelOptions, overrides: Mapping[str, Any]) -> list[str]:
    """Overrides of model options that differ from a saved model's, as
    ``'name: saved X, requested Y'`` lines (typed with ``parse_value``).

    A 0 for a dim or ``num_ids`` means "from the data" and matches anything.
    """
    problems = []
    for name, value in overrides.items():
        wanted = parse_value(ModelOptions, name, value)
        if name in INFERRED_WHEN_ZERO and wanted == 0:
            continue
        if wanted != getattr(saved, name):
            problems.append(f"{name}: saved {getattr(saved, name)!r}, requested {wanted!r}")
    return problems
