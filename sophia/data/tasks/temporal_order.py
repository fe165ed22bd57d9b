"""The temporal order problem (Hochreiter & Schmidhuber 1997, Experiment 6,
and Martens & Sutskever 2011, section 5).

Each sequence has a length uniform over the integers in [T, T + T//10]
(Hochreiter & Schmidhuber's variants fix T = 100); frame 0 is the start
symbol E, the last frame the trigger symbol B, and every other frame a
distractor drawn uniformly from {a, b, c, d}, except at the relevant
positions, each uniform within its window (0-based frame indices,
inclusive), which hold X or Y with probability 1/2:

``6a``  two positions, in [10, 20] and [50, 60]; 4 classes
        XX -> Q, XY -> R, YX -> S, YY -> U.
``6b``  three positions, in [10, 20], [33, 43] and [66, 76]; 8 classes
        XXX -> Q, XXY -> R, XYX -> S, XYY -> U, YXX -> V, YXY -> A,
        YYX -> B, YYY -> C.
``ms2`` Martens & Sutskever's temporal order problem: two positions, in
        [T//100, T//10] and [4T//10, T//2] (windows that scale with T; the
        first never on frame 0, so at least 1); 4 classes.
``ms3`` Martens & Sutskever's 3-bit temporal order problem: three positions,
        in [T//100, T//10], [3T//10, 4T//10] and [T//2, 6T//10]; 8 classes.

``ms3`` is not ``6b``: both have the same symbols, 8 classes and, at
T = 100, the same lengths, but 6b's windows are [10, 20], [33, 43],
[66, 76] and ms3's are [1, 10], [30, 40], [50, 60] (so the trigger comes
39 to 59 frames after the last relevant symbol, not 23 to 43), and only
ms3 follows ``--T``. Likewise ms2 ([1, 10], [40, 50] at T = 100) is not
6a ([10, 20], [50, 60]). The ms windows are those of Martens & Sutskever's
released code, which scales them with T as int(x * T / 100); that code
draws lengths in [T, 1.1 T) and numbers its classes with the first symbol
least significant (a relabelling of the classes below).

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

SUMMARY = ("temporal order problem (Hochreiter & Schmidhuber 1997 Exp. 6a/6b; "
           "Martens & Sutskever 2011)")
SYMBOLS = ("X", "Y", "a", "b", "c", "d", "B", "E")
WINDOWS = {"6a": ((10, 20), (50, 60)),
           "6b": ((10, 20), (33, 43), (66, 76))}
WINDOWS_PERCENT = {"ms2": ((1, 10), (40, 50)),
                   "ms3": ((1, 10), (30, 40), (50, 60))}
VARIANTS = (*WINDOWS, *WINDOWS_PERCENT)
CLASS_NAMES = {"6a": ("Q", "R", "S", "U"),
               "6b": ("Q", "R", "S", "U", "V", "A", "B", "C")}
FIXED_T = 100   # the 1997 variants' lengths are [100, 110]
MIN_T = 10      # the ms variants need T//10 >= 1
_X, _Y, _A, _D, _B, _E = 0, 1, 2, 5, 6, 7


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--variant", choices=VARIANTS, default="6a",
                        help="6a: two relevant symbols, 4 classes (default); 6b: three, "
                             "8 classes; ms2, ms3: Martens & Sutskever's, windows scale with --T")
    parser.add_argument("--T", type=int, default=FIXED_T,
                        help="minimal sequence length; 6a and 6b take only 100 (default), "
                             f"ms2 and ms3 at least {MIN_T}")


def windows(variant, T=FIXED_T):
    """Return the inclusive windows ``((low, high), ...)`` of the relevant positions."""
    if variant in WINDOWS:
        return WINDOWS[variant]
    return tuple((max(1, T * low // 100), T * high // 100)
                 for low, high in WINDOWS_PERCENT[variant])


def generate(rng, n, variant="6a", T=FIXED_T):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Raises
    ------
    ValueError
        On an unknown variant, a `T` other than 100 for 6a/6b, or one below
        10 for ms2/ms3, at once.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant in WINDOWS and T != FIXED_T:
        raise ValueError(f"--T must be {FIXED_T} for {variant} (its lengths are fixed at "
                         f"100..110); ms2 and ms3 follow --T, got {T}")
    if T < MIN_T:
        raise ValueError(f"--T must be at least {MIN_T} for {variant}, got {T}")
    return _sequences(rng, n, windows(variant, T), T)


def class_index(relevant):
    """Return the class of a sequence of relevant symbols (0 = X, 1 = Y)."""
    index = 0
    for symbol in relevant:
        index = 2 * index + int(symbol)
    return index


def _sequences(rng, n, spans, T):
    n_classes = 2 ** len(spans)
    for _ in range(n):
        n_frames = int(rng.integers(T, T + T // 10 + 1))
        symbols = rng.integers(_A, _D + 1, size=n_frames)
        symbols[0], symbols[-1] = _E, _B
        relevant = rng.integers(_X, _Y + 1, size=len(spans))
        for (low, high), symbol in zip(spans, relevant):
            symbols[rng.integers(low, high + 1)] = symbol
        target_k = one_hot([class_index(relevant)], n_classes)[0]
        yield one_hot(symbols, len(SYMBOLS)), last_frame_target(n_frames, target_k), None
