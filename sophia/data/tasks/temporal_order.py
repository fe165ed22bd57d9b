"""The temporal order problem (Hochreiter & Schmidhuber 1997, Experiment 6).

Each sequence has a length uniform over the integers in [100, 110]; frame 0
is the start symbol E, the last frame the trigger symbol B, and every other
frame a distractor drawn uniformly from {a, b, c, d}, except at the relevant
positions, each uniform within its window (0-based frame indices,
inclusive), which hold X or Y with probability 1/2:

``6a``  two positions, in [10, 20] and [50, 60]; 4 classes
        XX -> Q, XY -> R, YX -> S, YY -> U.
``6b``  three positions, in [10, 20], [33, 43] and [66, 76]; 8 classes
        XXX -> Q, XXY -> R, XYX -> S, XYY -> U, YXX -> V, YXY -> A,
        YYX -> B, YYY -> C.

The class index reads the relevant symbols as a binary number, X = 0,
Y = 1, the earliest symbol most significant (so it follows the lists above).

Input [t][8]: one-hot over the symbols in the order of :data:`SYMBOLS`
(X, Y, a, b, c, d, B, E). Target [t][classes]: one-hot class at the last
frame, NaN at every other frame.

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, _ = next(generate(np.random.default_rng(0), 1, variant="6b"))
>>> input_tj.shape[1], target_tk.shape[1]
(8, 8)
"""
from __future__ import annotations

from .common import last_frame_target, one_hot

SUMMARY = "temporal order problem (Hochreiter & Schmidhuber 1997 Exp. 6a/6b)"
SYMBOLS = ("X", "Y", "a", "b", "c", "d", "B", "E")
WINDOWS = {"6a": ((10, 20), (50, 60)),
           "6b": ((10, 20), (33, 43), (66, 76))}
CLASS_NAMES = {"6a": ("Q", "R", "S", "U"),
               "6b": ("Q", "R", "S", "U", "V", "A", "B", "C")}
MIN_LENGTH, MAX_LENGTH = 100, 110
_X, _Y, _A, _D, _B, _E = 0, 1, 2, 5, 6, 7


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--variant", choices=tuple(WINDOWS), default="6a",
                        help="6a: two relevant symbols, 4 classes (default); "
                             "6b: three, 8 classes")


def generate(rng, n, variant="6a"):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Raises
    ------
    ValueError
        On an unknown variant, at once.
    """
    if variant not in WINDOWS:
        raise ValueError(f"variant must be one of {tuple(WINDOWS)}, got {variant!r}")
    return _sequences(rng, n, WINDOWS[variant])


def class_index(relevant):
    """Return the class of a sequence of relevant symbols (0 = X, 1 = Y)."""
    index = 0
    for symbol in relevant:
        index = 2 * index + int(symbol)
    return index


def _sequences(rng, n, windows):
    n_classes = 2 ** len(windows)
    for _ in range(n):
        n_frames = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        symbols = rng.integers(_A, _D + 1, size=n_frames)
        symbols[0], symbols[-1] = _E, _B
        relevant = rng.integers(_X, _Y + 1, size=len(windows))
        for (low, high), symbol in zip(windows, relevant):
            symbols[rng.integers(low, high + 1)] = symbol
        target_k = one_hot([class_index(relevant)], n_classes)[0]
        yield one_hot(symbols, len(SYMBOLS)), last_frame_target(n_frames, target_k), None
