"""Per-frame labelling with a shift: the label of frame t is the symbol at frame t + shift.

Every frame holds one symbol drawn uniformly from v values; its target is the
symbol ``shift`` frames later (``shift`` > 0, a look-ahead: it needs frames
that come after it) or earlier (``shift`` < 0, a delay: it needs only the
past), NaN where that frame lies outside the sequence. A sequence lasts a
length uniform over the integers in [T, T + T//2], so sequences of one
batch differ in length.

A causal (unidirectional) net cannot know a future symbol: with ``shift`` > 0
it scores the chance accuracy 1/v at best (cross-entropy ln v), while a
bidirectional net can label every frame. With ``shift`` < 0 both can.

Input [t][v]: one-hot of the frame's symbol. Target [t][v]: one-hot of the
symbol at frame t + shift, or NaN; train with ``loss_type = "xent"``.

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, _ = next(generate(np.random.default_rng(0), 1, T=10, shift=2))
>>> bool((target_tk[:-2] == input_tj[2:]).all() and np.isnan(target_tk[-2:]).all())
True
"""
from __future__ import annotations

import numpy as np

from .common import one_hot

SUMMARY = "per-frame labels shifted in time: the symbol `shift` frames later (look-ahead) or earlier (delay)"


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--T", type=int, default=20,
                        help="shortest sequence, in frames (more than |shift|); default 20")
    parser.add_argument("--shift", type=int, default=3,
                        help="frame t is labelled with the symbol at t + shift: > 0 looks ahead, "
                             "< 0 back; default 3")
    parser.add_argument("--symbols", type=int, default=4,
                        help="number v of symbols (at least 2); default 4")


def generate(rng, n, T=20, shift=3, symbols=4):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, None)``.

    Raises
    ------
    ValueError
        If `symbols` is below 2 or `T` not above ``|shift|``, at once.
    """
    if symbols < 2:
        raise ValueError(f"--symbols must be at least 2, got {symbols}")
    if T <= abs(shift):
        raise ValueError(f"--T must be more than |shift| = {abs(shift)}, got {T}")
    return _sequences(rng, n, T, shift, symbols)


def _sequences(rng, n, T, shift, symbols):
    for _ in range(n):
        n_frames = int(rng.integers(T, T + T // 2 + 1))
        symbols_t = rng.integers(0, symbols, size=n_frames)
        input_tj = one_hot(symbols_t, symbols)
        target_tk = np.full_like(input_tj, np.nan)
        if shift >= 0:
            target_tk[:n_frames - shift] = input_tj[shift:]
        else:
            target_tk[-shift:] = input_tj[:n_frames + shift]
        yield input_tj, target_tk, None
