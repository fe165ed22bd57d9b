"""Helpers shared by the task generators.

- :func:`last_frame_target` — a target that is NaN except at the last frame.
- :func:`one_hot` — rows of an identity matrix.
- :func:`sequence_path` — the relative path of a sequence (``train/000123``).
- :func:`add_length_argument`, :func:`check_length` — the ``--T`` flag of the tasks
  whose sequences last T to T + T//10 frames.

Example
-------
>>> last_frame_target(3, [0.5]).ravel().tolist()
[nan, nan, 0.5]
"""
from __future__ import annotations

import numpy as np


def last_frame_target(n_frames, value_k):
    """Return a [t][k] float32 target, NaN everywhere but the last frame.

    Parameters
    ----------
    n_frames : int
        Sequence length t (at least 1).
    value_k : array_like, shape [k]
        The target of the last frame.
    """
    value_k = np.asarray(value_k, dtype=np.float32).reshape(-1)
    target_tk = np.full((n_frames, value_k.size), np.nan, dtype=np.float32)
    target_tk[-1] = value_k
    return target_tk


def one_hot(indices, width):
    """Return float32 one-hot rows, shape [len(indices)][width]."""
    return np.eye(width, dtype=np.float32)[np.asarray(indices)]


def sequence_path(split, index):
    """Return the relative path of a split's `index`-th sequence, e.g. ``train/000123``."""
    return f"{split}/{index:06d}"


def add_length_argument(parser, minimum: int) -> None:
    """Add ``--T``, the minimal sequence length (default 100), to an argparse ``parser``."""
    parser.add_argument("--T", type=int, default=100,
                        help=f"minimal sequence length (at least {minimum}); default 100")


def check_length(T: int, minimum: int) -> None:
    """Raise ValueError if ``T`` is below ``minimum``."""
    if T < minimum:
        raise ValueError(f"--T must be at least {minimum}, got {T}")
