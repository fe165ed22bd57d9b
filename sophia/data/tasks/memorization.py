"""The noiseless memorization problem (Martens & Sutskever 2011, section 5).

A sequence has exactly T frames. The first k frames hold the string to
remember, k symbols drawn uniformly from an alphabet of v values; then
blanks; at frame T - k - 1 a trigger; then k blanks, during which the net
must play the string back. ``--bits`` picks the variant, with the sizes of
the authors' released code:

``5``   k = 5 symbols of v = 2 values (5 bits);
``20``  k = 10 symbols of v = 5 values (the paper's "20-bit" problem; it
        holds log2(5**10), about 23.2 bits).

Input [t][v + 2]: one-hot over the v values, the blank (column v) and the
trigger (column v + 1). Target [t][v + 1]: one-hot over the v values and
the blank (column v): the blank at frames 0..T - k - 1, the stored string
at the last k frames.

``--targets every`` (the default, as in the paper) gives every frame its
target, so most targets are the easy blank: predicting the blank
everywhere gets (T - k) / T of the frames right. ``--targets answer`` keeps
only the last k frames' targets (NaN elsewhere), the authors' code's
``only_predict_the_memory_bits`` alternative.

Unlike the released code, whose input has v columns and so writes the
blank and the trigger over the two highest values, every symbol here has
its own column.

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, _ = next(generate(np.random.default_rng(0), 1, T=20, bits=5))
>>> input_tj.shape, target_tk.shape
((20, 4), (20, 3))
"""
from __future__ import annotations

import numpy as np

from .common import one_hot

SUMMARY = "noiseless memorization (Martens & Sutskever 2011, sec. 5), 5- or 20-bit"
SIZES = {5: (5, 2), 20: (10, 5)}  # --bits: (k symbols to remember, v values each)
TARGETS = ("every", "answer")


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--T", type=int, default=100,
                        help="sequence length in frames (at least 2k + 1); default 100")
    parser.add_argument("--bits", type=int, choices=tuple(SIZES), default=5,
                        help="5: 5 binary symbols (default); 20: 10 symbols of 5 values")
    parser.add_argument("--targets", choices=TARGETS, default="every",
                        help="every: a target at every frame (the paper, default); "
                             "answer: only the last k frames'")


def min_length(bits):
    """Return the shortest T of a variant: the string, the trigger, the playback."""
    return 2 * SIZES[bits][0] + 1


def generate(rng, n, T=100, bits=5, targets="every"):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Raises
    ------
    ValueError
        On unknown `bits` or `targets`, or a `T` below :func:`min_length`, at once.
    """
    if bits not in SIZES:
        raise ValueError(f"bits must be one of {tuple(SIZES)}, got {bits!r}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    if T < min_length(bits):
        raise ValueError(f"--T must be at least {min_length(bits)} for {bits} bits, got {T}")
    return _sequences(rng, n, T, *SIZES[bits], targets)


def _sequences(rng, n, T, k, v, targets):
    blank, trigger = v, v + 1
    for _ in range(n):
        string = rng.integers(0, v, size=k)
        symbols = np.full(T, blank)
        symbols[:k] = string
        symbols[T - k - 1] = trigger
        answers = np.full(T, blank)
        answers[T - k:] = string
        target_tk = one_hot(answers, v + 1)
        if targets == "answer":
            target_tk[:T - k] = np.nan
        yield one_hot(symbols, v + 2), target_tk, None
