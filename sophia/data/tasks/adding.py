"""The adding problem, in two variants.

``hochreiter`` (Hochreiter & Schmidhuber 1997, LSTM paper, Experiment 4)
    Length uniform over the integers in [T, T + T//10]. Each frame is a pair
    (value, marker): value ~ U[-1, 1], marker in {-1, 0, 1}. Exactly two
    frames carry marker 1: X1 is one of the first 10 frames, X2 one of the
    first T//2 - 1 frames, distinct from X1. The first and the last frame
    carry marker -1; all others 0. The paper zeroes X1 when the first frame
    gets marked; here a mark never lands on frame 0 (it is drawn again, so
    X1 is uniform over frames 1..9 and X2 over frames 1..T//2 - 2), so every
    marker is unambiguous and frame 0 keeps a random value like the others.
    Target, at the last frame only: 0.5 + (X1 + X2) / 4, in [0, 1].

``arjovsky`` (Arjovsky, Shah & Bengio 2016, unitary RNNs)
    Fixed length T, as in that paper. value ~ U[0, 1], marker in {0, 1}: one
    mark uniform over the first half (frames 0..T//2 - 1), one over the
    second half (frames T//2..T - 1). Target, at the last frame only:
    X1 + X2. Predicting the constant 1 scores MSE = Var(X1 + X2) = 1/6
    (about 0.167).

Input [t][2]: column 0 the value, column 1 the marker. Target [t][1]: NaN
at every frame but the last.

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, time_t = next(generate(np.random.default_rng(0), 1, T=20))
>>> input_tj.shape[1], target_tk.shape[1], time_t
(2, 1, None)
"""
from __future__ import annotations

import numpy as np

from .common import last_frame_target

SUMMARY = "adding problem (Hochreiter & Schmidhuber 1997 Exp. 4, or Arjovsky 2016)"
VARIANTS = ("hochreiter", "arjovsky")
MIN_T = {"hochreiter": 11, "arjovsky": 2}


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--T", type=int, default=100,
                        help="minimal sequence length (arjovsky: the length); default 100")
    parser.add_argument("--variant", choices=VARIANTS, default="hochreiter",
                        help="hochreiter (1997, default) or arjovsky (2016)")


def generate(rng, n, T=100, variant="hochreiter"):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
        Number of sequences.
    T : int
        Minimal length (hochreiter, at least 11) or length (arjovsky, at
        least 2).
    variant : {'hochreiter', 'arjovsky'}

    Raises
    ------
    ValueError
        On an unknown variant or a too small `T`, at once.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if T < MIN_T[variant]:
        raise ValueError(f"--T must be at least {MIN_T[variant]} for {variant}, got {T}")
    return _sequences(rng, n, T, variant)


def _sequences(rng, n, T, variant):
    for _ in range(n):
        if variant == "arjovsky":
            input_tj, (x1, x2) = arjovsky_pairs(rng, T)
            target = x1 + x2
        else:
            input_tj, (x1, x2) = hochreiter_pairs(rng, T, low=-1.0)
            target = 0.5 + (x1 + x2) / 4.0
        yield input_tj, last_frame_target(len(input_tj), [target]), None


def hochreiter_pairs(rng, T, low):
    """Return ``(input_tj, (X1, X2))`` with the 1997 marker layout.

    The length is uniform over [T, T + T//10], values are U[`low`, 1]; see
    the module docstring for the markers. Shared with
    :mod:`sophia.data.tasks.multiplication`.
    """
    n_frames = int(rng.integers(T, T + T // 10 + 1))
    values = rng.uniform(low, 1.0, size=n_frames).astype(np.float32)
    return hochreiter_marked(rng, T, values)


def hochreiter_marked(rng, T, values):
    """Mark two of `values` with the 1997 layout; return ``(input_tj, (X1, X2))``.

    `values` (float32, one per frame, at least `T` of them) become column 0;
    column 1 holds the markers (see the module docstring). Shared with
    :mod:`sophia.data.tasks.xor`, which draws bits instead of reals.
    """
    n_frames = len(values)
    first = int(rng.integers(1, 10))
    candidates = [p for p in range(1, T // 2 - 1) if p != first]
    second = int(candidates[rng.integers(len(candidates))])
    markers = np.zeros(n_frames, dtype=np.float32)
    markers[[0, -1]] = -1.0
    markers[[first, second]] = 1.0
    return np.stack([values, markers], axis=1), (values[first], values[second])


def arjovsky_pairs(rng, T):
    """Return ``(input_tj, (X1, X2))`` with the 2016 layout (one mark per half)."""
    values = rng.uniform(0.0, 1.0, size=T).astype(np.float32)
    first = int(rng.integers(0, T // 2))
    second = int(rng.integers(T // 2, T))
    markers = np.zeros(T, dtype=np.float32)
    markers[[first, second]] = 1.0
    return np.stack([values, markers], axis=1), (values[first], values[second])
