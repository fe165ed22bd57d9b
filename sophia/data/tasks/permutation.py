"""The random permutation problem (Martens & Sutskever 2011, section 5).

An alphabet of 100 symbols, numbered 0..99. A sequence has exactly T
frames: frame 0 holds symbol 0 or 1 (the one to remember), frames 1..T-1
symbols drawn uniformly and independently from 2..99. At every frame the
target is the next symbol; at the last frame, where there is no next
symbol, it is the symbol of frame 0. So every target but the last is a
fresh random draw that no net can predict better than 1 in 98, and the
last one needs a memory of T - 1 frames. (Despite the name, the middle
symbols are independent draws, not a permutation: the authors' released
code says so; "permutation" is kept as the paper's name.)

Within each split exactly half of the sequences (one more 0 when the count
is odd), in random order, start with 0, as in the authors' code, which
balances its batches the same way.

``--targets every`` (the default, as in the paper) gives every frame its
next-symbol target, the paper's training objective; the paper scores only
the last frame. ``--targets answer`` keeps only the last frame's target
(NaN elsewhere), so Sophia's loss and metrics measure just the memory.

Input [t][100]: the symbol, one-hot. Target [t][100]: the target symbol,
one-hot (NaN rows where there is none).

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, _ = next(generate(np.random.default_rng(0), 1, T=20))
>>> input_tj.shape, int(target_tk[-1].argmax()) == int(input_tj[0].argmax())
((20, 100), True)
"""
from __future__ import annotations

import numpy as np

from .common import one_hot

SUMMARY = "random permutation problem (Martens & Sutskever 2011, sec. 5), 100 symbols"
N_SYMBOLS = 100
N_FIRST = 2  # frame 0 holds one of the symbols 0..N_FIRST-1, the others N_FIRST..99
MIN_T = 2
TARGETS = ("every", "answer")


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--T", type=int, default=100,
                        help="sequence length in frames (at least 2); default 100")
    parser.add_argument("--targets", choices=TARGETS, default="every",
                        help="every: next-symbol target at every frame (the paper, default); "
                             "answer: only the last frame's")


def generate(rng, n, T=100, targets="every"):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Raises
    ------
    ValueError
        If `T` is below 2 or `targets` unknown, at once.
    """
    if T < MIN_T:
        raise ValueError(f"--T must be at least {MIN_T}, got {T}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    return _sequences(rng, n, T, targets)


def _sequences(rng, n, T, targets):
    firsts = rng.permutation(np.arange(n) % N_FIRST)
    for first in firsts:
        symbols = np.concatenate([[first], rng.integers(N_FIRST, N_SYMBOLS, size=T - 1)])
        target_tk = one_hot(np.append(symbols[1:], first), N_SYMBOLS)
        if targets == "answer":
            target_tk[:-1] = np.nan
        yield one_hot(symbols, N_SYMBOLS), target_tk, None
