"""Frequency discrimination (Neil, Pfeiffer & Liu 2016, Phased LSTM, task 1).

Each sequence is a sine wave ``sin(2 pi t / period + phase)``, t in ms,
phase ~ U[0, 2 pi), observed from t = 0 to a duration ~ U[15, 125] ms.
Exactly half of the sequences (in random order) have a period ~ U[5, 6] ms
and label 1; the others have a period log-uniform in [1, 100] ms outside
[5, 6] (drawn again when it falls inside) and label 0.

Sampling (``--sampling``):

``regular``  every 1 ms (t = 0, 1, 2, ... <= duration);
``high``     every 0.1 ms;
``async``    at the events of a Poisson process with mean spacing 1 ms,
             starting at t = 0. The timestamps (ms, float32, strictly
             increasing: a time that rounds to its predecessor in float32 is
             dropped) are written to ``<path>.time``. Regular modes write no
             ``.time`` (frames are equally spaced).

As in the paper's setting, 1 ms sampling aliases periods in [1.2, 1.25] ms
into [5, 6] ms (about 0.5 % of the label-0 sequences look like label 1);
``high`` and ``async`` sampling do not have this problem.

Input [t][1]: the sine value. Target [t][1]: the label (0 or 1) at the last
frame, NaN at every other frame (the network classifies after seeing the
whole wave).

Example
-------
>>> import numpy as np
>>> input_tj, target_tk, time_t = next(generate(np.random.default_rng(0), 1, "async"))
>>> bool((np.diff(time_t) > 0).all())
True
"""
from __future__ import annotations

import numpy as np

from .common import last_frame_target

SUMMARY = "frequency discrimination (Phased LSTM 2016, task 1)"
STEPS_MS = {"regular": 1.0, "high": 0.1}
SAMPLINGS = ("regular", "high", "async")
PERIOD_RANGE_MS = (1.0, 100.0)
TARGET_PERIOD_MS = (5.0, 6.0)
DURATION_MS = (15.0, 125.0)
ASYNC_MEAN_SPACING_MS = 1.0


def add_arguments(parser):
    """Add this task's options to an argparse `parser`."""
    parser.add_argument("--sampling", choices=SAMPLINGS, default="regular",
                        help="regular (1 ms, default), high (0.1 ms) or async "
                             "(Poisson, mean 1 ms, writes .time)")


def generate(rng, n, sampling="regular"):
    """Return an iterator over `n` sequences ``(input_tj, target_tk, time_t)``.

    `time_t` is a float32 array of ms in ``async`` mode and None otherwise.

    Raises
    ------
    ValueError
        On an unknown sampling mode, at once.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    return _sequences(rng, n, sampling)


def draw_period(rng, label):
    """Return a period in ms: U[5, 6] for label 1, else log-uniform outside it."""
    if label == 1:
        return rng.uniform(*TARGET_PERIOD_MS)
    log_low, log_high = np.log(PERIOD_RANGE_MS)
    while True:
        period = float(np.exp(rng.uniform(log_low, log_high)))
        if not TARGET_PERIOD_MS[0] <= period <= TARGET_PERIOD_MS[1]:
            return period


def sample_times(rng, duration, sampling):
    """Return float32 sample times in ms within [0, `duration`], increasing."""
    if sampling in STEPS_MS:
        step = STEPS_MS[sampling]
        return (np.arange(int(np.floor(duration / step + 1e-9)) + 1) * step).astype(np.float32)
    times = [0.0]
    while times[-1] <= duration:
        gaps = rng.exponential(ASYNC_MEAN_SPACING_MS, size=int(duration) + 16)
        times.extend(times[-1] + np.cumsum(gaps))
    times = np.asarray(times)
    return np.unique(times[times <= duration].astype(np.float32))


def _sequences(rng, n, sampling):
    labels = rng.permutation(np.arange(n) % 2)
    for label in labels:
        period = draw_period(rng, label)
        duration = rng.uniform(*DURATION_MS)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        time_t = sample_times(rng, duration, sampling)
        input_t1 = np.sin(2.0 * np.pi * time_t.astype(np.float64) / period + phase)[:, None]
        target_tk = last_frame_target(len(time_t), [label])
        yield input_t1.astype(np.float32), target_tk, (time_t if sampling == "async" else None)
