"""Interval tracking: a probabilistic model's interval rescaled online from the targets seen.

A net's interval is calibrated on the data it trained on; a stream whose spread
changes later (a more volatile season, a calmer market) makes it too narrow or too
wide. Tracking keeps the long-run share of misses at the interval's nominal rate
whatever the drift, using only targets already seen: the quantile tracking of
Angelopoulos, Candès & Tibshirani, "Conformal PID Control for Time Series
Prediction" (NeurIPS 2023, §2.1), applied to the log of the interval's scale.

The rule, per target element, from scale 1 (the model's own interval):

- the frame's tracked interval is the model's, scaled about its centre by ``s``:
  ``[c − s·(c − lower), c + s·(upper − c)]``, where the centre ``c`` is the Gaussian's
  mean or the quantile model's median (the middle of the interval without a 0.5 level);
- once the frame's target ``y`` is seen: ``log s ← log s + step·(miss − α)``, where
  ``miss`` is 1 when ``y`` is outside the tracked interval and ``α`` the nominal miss
  rate (0.2 for the central 80 %). A NaN target changes nothing.

A miss widens the interval by ``exp(step·(1 − α))``, a hit narrows it by
``exp(step·α)``; in the long run misses are an ``α`` share of the frames. ``step``
trades how fast it follows a change against how much it wanders (default
:data:`DEFAULT_STEP`; bench/RESULTS.md shows the real series over several steps).

- :class:`IntervalTracker` -- the streaming form, for a client of the server.
- :func:`tracked_bounds` -- the same over a whole sequence [T][k].
- :func:`tracked_interval` -- a model output's tracked interval over one sequence.
- :func:`tracked_inside` -- which targets it holds: ``sophia-eval``'s ``coverage_tracked``.

Example
-------
>>> import numpy as np
>>> tracker = IntervalTracker(target_dim=1, miss_rate=0.2, step=0.1)
>>> tracker.interval(np.array([-1.0]), np.array([0.0]), np.array([1.0]))
(array([-1.]), array([1.]))
>>> tracker.observe(np.array([3.0]))                   # a miss: wider next time
>>> lower, upper = tracker.interval(np.array([-1.0]), np.array([0.0]), np.array([1.0]))
>>> round(float(upper[0]), 4)                           # exp(0.1 * 0.8)
1.0833
"""
from __future__ import annotations

import math

import numpy as np

from sophia.evaluation.probabilistic import central_interval, inside, interval_bounds, interval_center

DEFAULT_STEP = 0.1


class IntervalTracker:
    """One stream's tracked interval: one log-scale per target element [k].

    Call :meth:`interval` with a frame's model interval, then :meth:`observe` with that
    frame's target once it is known. ``miss_rate`` in (0, 1); ``step`` >= 0 (0: the
    model's interval, never rescaled). Raises ValueError for either out of range."""

    def __init__(self, target_dim: int, miss_rate: float, step: float = DEFAULT_STEP):
        check_step(step)
        if not 0.0 < miss_rate < 1.0:
            raise ValueError(f"miss_rate must be in (0, 1), got {miss_rate}")
        self.miss_rate = float(miss_rate)
        self.step = float(step)
        self.log_scale_k = np.zeros(target_dim)
        self._last = None                      # the last interval given: (lower_k, upper_k)

    def interval(self, lower_k, center_k, upper_k) -> tuple[np.ndarray, np.ndarray]:
        """The tracked ``(lower_k, upper_k)`` of one frame's model interval."""
        center_k = np.asarray(center_k, np.float64)
        scale_k = np.exp(self.log_scale_k)
        lower_k = center_k - scale_k * (center_k - np.asarray(lower_k, np.float64))
        upper_k = center_k + scale_k * (np.asarray(upper_k, np.float64) - center_k)
        self._last = (lower_k, upper_k)
        return lower_k, upper_k

    def observe(self, target_k) -> None:
        """Update the scales with the target [k] of the frame last passed to
        :meth:`interval`; NaN elements are skipped. Raises RuntimeError before any
        interval."""
        if self._last is None:
            raise RuntimeError("observe() needs the frame's interval() first")
        target_k = np.asarray(target_k, np.float64)
        lower_k, upper_k = self._last
        seen = ~np.isnan(target_k)
        miss_k = ((target_k < lower_k) | (target_k > upper_k)).astype(np.float64)
        self.log_scale_k = np.where(seen, self.log_scale_k + self.step * (miss_k - self.miss_rate),
                                    self.log_scale_k)
        self._last = None


def tracked_bounds(lower_tk, center_tk, upper_tk, target_tk, miss_rate: float,
                   step: float = DEFAULT_STEP) -> tuple[np.ndarray, np.ndarray]:
    """The tracked ``(lower_tk, upper_tk)`` over one sequence [T][k], from scale 1 at its
    first frame: frame t's interval uses the targets of frames before t only."""
    lower_tk, center_tk, upper_tk, target_tk = (np.asarray(a, np.float64) for a in
                                                (lower_tk, center_tk, upper_tk, target_tk))
    tracker = IntervalTracker(target_tk.shape[1], miss_rate, step)
    out_lower, out_upper = np.empty_like(lower_tk), np.empty_like(upper_tk)
    for t in range(len(target_tk)):
        out_lower[t], out_upper[t] = tracker.interval(lower_tk[t], center_tk[t], upper_tk[t])
        tracker.observe(target_tk[t])
    return out_lower, out_upper


def tracked_interval(output_tK, target_tk, options, step: float = DEFAULT_STEP):
    """The tracked ``(lower_tk, upper_tk)`` [T][k] of a probabilistic model's output
    [T][C·k] over one sequence with targets [T][k]. ``options``: the model's ModelOptions
    (gaussian or quantile); the miss rate is 1 minus the interval's width in levels."""
    lower_level, upper_level = central_interval(options)
    lower_tk, upper_tk = interval_bounds(output_tK, options)
    return tracked_bounds(lower_tk, interval_center(output_tK, options), upper_tk, target_tk,
                          1.0 - (upper_level - lower_level), step)


def tracked_inside(output_tK, target_tk, options, step: float = DEFAULT_STEP) -> np.ndarray:
    """Whether each non-NaN target of one sequence [T][k] lies inside
    :func:`tracked_interval` (bounds included), in row-major order: a bool vector whose
    mean is the tracked coverage."""
    return inside(*tracked_interval(output_tK, target_tk, options, step), target_tk)


def check_step(step) -> None:
    """Raise ValueError unless ``step`` is a finite number >= 0."""
    try:
        value = float(step)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"the tracking step must be a finite number >= 0, got {step!r}")
