"""The resume checkpoint: a training run's whole state after an epoch, in one file.

``snapshots/resume.npz`` is written atomically after every epoch (and after the
initial evaluation), so a run killed at any instant resumes from its last
completed epoch and goes on exactly as if it had never stopped
(``train.py --resume WORKSPACE``). It holds, as plain arrays (nothing pickled):

==================  ============================================================
``net.<name>``      the live parameters and buffers (``Net.get_values()``)
``state.<n>``       the stored states the training windows carry, [B][width]
``optim.<n>``       the optimizer's state variables (moments, step counts, average)
``iter.<name>``     the iterator's shuffled order and window buffers
``hf.<name>``       ``update_type = "hessian_free"`` only: the HF driver's state as
                    ``HessianFree.state_dict()`` names it (λ, the last CG solution)
``meta.json``       UTF-8 JSON: the annealer's state, the iterator's position and
                    random state, the training streak, the epoch numbering, the
                    number of metrics records, the stop reason of a finished run,
                    and the state of the generator that dropout and input noise
                    draw from (``noise``; absent from checkpoints of 0.2.0)
==================  ============================================================

What is here:

- :class:`Checkpoint` -- those parts, with :meth:`Checkpoint.save` and :func:`load`.

Example
-------
>>> ckpt = load(Workspace("workspaces/demo", create=False))   # doctest: +SKIP
>>> ckpt.meta["epoch_offset"], ckpt.meta["annealer"]["lr"]     # doctest: +SKIP
(0, 0.001)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from sophia.workspace import RESUME, Workspace, WorkspaceError

VERSION = 1
_META = "meta.json"
_HF = "hf."


@dataclass
class Checkpoint:
    """A run's state between epochs (see the module docstring for each part)."""

    net: dict[str, np.ndarray]
    states: list[np.ndarray]
    optimizer: list[np.ndarray]
    iterator_arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    hf: dict[str, np.ndarray] = field(default_factory=dict)   # keys keep their "hf." prefix

    def save(self, ws: Workspace) -> None:
        """Write ``snapshots/resume.npz`` atomically (replacing the previous one)."""
        arrays = {f"net.{k}": v for k, v in self.net.items()}
        arrays.update({f"state.{n}": v for n, v in enumerate(self.states)})
        arrays.update({f"optim.{n}": v for n, v in enumerate(self.optimizer)})
        arrays.update({f"iter.{k}": v for k, v in self.iterator_arrays.items()})
        if any(not k.startswith(_HF) for k in self.hf):
            raise ValueError(f"HF state names must start with {_HF!r}: {sorted(self.hf)}")
        arrays.update(self.hf)
        text = json.dumps({"version": VERSION, **self.meta}, allow_nan=False)
        arrays[_META] = np.frombuffer(text.encode("utf-8"), np.uint8)
        ws.save_arrays(RESUME, arrays)


def load(ws: Workspace) -> Checkpoint:
    """Read ``snapshots/resume.npz``.

    Raises :class:`WorkspaceError` naming the file when there is none (the
    message names ``--load_from``, the warm start that needs no checkpoint) or
    when it is corrupt or of another version.
    """
    path = ws.file(RESUME, ".npz")
    if not path.is_file():
        raise WorkspaceError(f"{ws.path} has no resumable state ({path} is missing: the run "
                             "stopped before its first epoch, or was trained by a version "
                             f"without --resume); start from its best model with --load_from {ws.path}")
    arrays = ws.load_arrays(RESUME)
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
    except (KeyError, ValueError, UnicodeDecodeError) as error:
        raise WorkspaceError(f"{path}: no readable {_META}: {error}") from error
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise WorkspaceError(f"{path}: checkpoint version {meta.get('version') if isinstance(meta, dict) else meta!r}"
                             f", expected {VERSION}")
    parts = {prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
             for prefix in ("net.", "state.", "optim.", "iter.")}
    try:
        return Checkpoint(parts["net."], _numbered(parts["state."]), _numbered(parts["optim."]),
                          parts["iter."], meta, {k: v for k, v in arrays.items() if k.startswith(_HF)})
    except KeyError as error:
        raise WorkspaceError(f"{path}: a numbered array is missing: {error}") from error


def _numbered(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``{"0": a, "1": b, ...}`` as ``[a, b, ...]``; KeyError for a gap."""
    return [arrays[str(n)] for n in range(len(arrays))]
