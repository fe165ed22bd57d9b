"""The multiplication problem (Hochreiter & Schmidhuber 1997, Experiment 5).

Like the ``hochreiter`` adding problem (:mod:`sophia.data.tasks.adding`): length
uniform over the integers in [T, T + T//10]; frames (value, marker) with
marker 1 on X1 (one of the first 10 frames) and X2 (one of the first
T//2 - 1 frames, distinct), marker -1 on the first and the last frame, 0
elsewhere. Differences, as in the paper: values are U[0, 1], and the target
is the plain product X1 * X2 (already in [0, 1], no rescaling). The paper
sets X1 = 1 when the first frame gets marked; here, as for adding, a mark
never lands on frame 0 (it is drawn again).

Input [t][2]: column 0 the value, column 1 the marker. Target [t][1]: NaN
at every frame but the last.

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, _ = next(generate(np.random.default_rng(0), 1, T=20))
>>> bool(0.0 <= target_tk[-1, 0] <= 1.0)
True
"""
from __future__ import annotations

from .adding import MIN_T, hochreiter_pairs
from .common import add_length_argument, check_length, last_frame_target

SUMMARY = "multiplication problem (Hochreiter & Schmidhuber 1997 Exp. 5)"


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    add_length_argument(parser, MIN_T["hochreiter"])


def generate(rng, n, T=100):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Raises
    ------
    ValueError
        If `T` is below 11, at once.
    """
    check_length(T, MIN_T["hochreiter"])
    return _sequences(rng, n, T)


def _sequences(rng, n, T):
    for _ in range(n):
        input_tj, (x1, x2) = hochreiter_pairs(rng, T, low=0.0)
        yield input_tj, last_frame_target(len(input_tj), [x1 * x2]), None
