"""The XOR problem (Martens & Sutskever 2011, section 5).

The addition and multiplication problems with bits: every frame's value is
a fair bit in {0, 1} (the marked ones and the distractors alike), and the
target is the XOR of the two marked bits. As Martens & Sutskever note, the
second bit alone says nothing about the target, so a net cannot learn the
problem one operand at a time, which makes it the hardest of the family.

The frames follow the ``hochreiter`` layout of :mod:`sophia.data.tasks.adding`
(Hochreiter & Schmidhuber 1997, Experiment 4), as Sophia's multiplication
does: length uniform over the integers in [T, T + T//10]; marker 1 on X1
(one of frames 1..9) and X2 (one of frames 1..T//2 - 2, distinct from X1),
marker -1 on the first and the last frame, 0 elsewhere. (Martens &
Sutskever's released code draws X1 in [T/100, T/10) and X2 in [T/10, T/2),
and puts its second -1 three frames before the end; Sophia keeps one layout
for the three problems, so they differ only in the values and the rule.)

Input [t][2]: column 0 the bit, column 1 the marker. Target [t][1]: X1 XOR X2
(0 or 1) at the last frame, NaN at every other frame. Predicting the
constant 0.5 scores MSE 0.25; a prediction is right when it falls on the
target's side of 0.5.

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, _ = next(generate(np.random.default_rng(0), 1, T=20))
>>> float(target_tk[-1, 0]) in (0.0, 1.0)
True
"""
from __future__ import annotations

import numpy as np

from .adding import MIN_T, hochreiter_marked
from .common import add_length_argument, check_length, last_frame_target

SUMMARY = "XOR problem (Martens & Sutskever 2011, sec. 5): the 1997 adding layout with bits"


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
        n_frames = int(rng.integers(T, T + T // 10 + 1))
        bits = rng.integers(0, 2, size=n_frames).astype(np.float32)
        input_tj, (x1, x2) = hochreiter_marked(rng, T, bits)
        yield input_tj, last_frame_target(n_frames, [int(x1) ^ int(x2)]), None
