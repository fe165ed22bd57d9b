"""Metrics of probabilistic forecasts: the log score or pinball loss, and interval coverage.

A probabilistic model's output [T][C·k] is split into channels
(:mod:`sophia.graph.output_layout`); these functions score them against targets
[T][k] over the non-NaN target values:

- :func:`central_interval` -- which interval ``coverage`` measures: the central 80%
  (gaussian: μ ± 1.2816 σ; quantile: [q0.1, q0.9]), or, for quantile levels without
  both 0.1 and 0.9, the interval between the lowest and the highest level.
- :func:`interval_bounds` -- that interval's lower and upper bounds [T][k].
- :func:`interval_center` -- the point it is scaled about when tracked
  (:mod:`sophia.evaluation.tracking`): the mean or the median [T][k].
- :func:`inside` -- which targets an interval holds (``coverage`` is their share).
- :func:`probabilistic_metrics` -- ``nll`` (gaussian: mean negative log-likelihood per
  target value, ``½ log 2π`` included) or ``pinball`` (quantile: mean pinball loss
  per target value and level), and ``coverage``, the share of target values inside
  the interval (bounds included).

Example
-------
>>> import numpy as np
>>> from sophia.options import ModelOptions
>>> o = ModelOptions(target_dim=1, output_activation="quantile", quantiles=(0.1, 0.5, 0.9))
>>> out = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])          # [T][C*k]
>>> m = probabilistic_metrics(out, np.array([[1.0], [3.0]]), o)
>>> m["coverage"], central_interval(o)
(0.5, (0.1, 0.9))
"""
from __future__ import annotations

import math

import numpy as np

from sophia.graph.output_layout import channels_tck, num_channels

Z_80 = 1.2815515655446004            # the standard normal's 0.9 quantile
PROBABILISTIC_METRICS = {"gaussian": ("nll", "coverage"), "quantile": ("pinball", "coverage")}


def central_interval(options) -> tuple[float, float]:
    """The levels ``(lower, upper)`` of the interval ``coverage`` measures."""
    if options.output_activation == "quantile":
        levels = list(options.quantiles)
        if any(abs(q - 0.1) < 1e-9 for q in levels) and any(abs(q - 0.9) < 1e-9 for q in levels):
            return 0.1, 0.9
        return levels[0], levels[-1]
    return 0.1, 0.9


def interval_bounds(output_tK, options) -> tuple[np.ndarray, np.ndarray]:
    """``(lower_tk, upper_tk)`` of :func:`central_interval` for an output [T][C·k]."""
    out_tck = channels_tck(np.asarray(output_tK, np.float64), num_channels(options))
    if options.output_activation == "gaussian":
        sigma_tk = np.exp(0.5 * out_tck[:, 1])
        return out_tck[:, 0] - Z_80 * sigma_tk, out_tck[:, 0] + Z_80 * sigma_tk
    lower, upper = central_interval(options)
    levels = list(options.quantiles)
    return out_tck[:, _nearest(levels, lower)], out_tck[:, _nearest(levels, upper)]


def interval_center(output_tK, options) -> np.ndarray:
    """The centre [T][k] about which the interval is scaled (:mod:`sophia.evaluation.tracking`):
    the Gaussian's mean; the quantile model's 0.5 level, or without one the middle of
    :func:`interval_bounds`."""
    out_tck = channels_tck(np.asarray(output_tK, np.float64), num_channels(options))
    if options.output_activation == "gaussian":
        return out_tck[:, 0]
    levels = list(options.quantiles)
    if any(abs(q - 0.5) < 1e-9 for q in levels):
        return out_tck[:, _nearest(levels, 0.5)]
    lower_tk, upper_tk = interval_bounds(output_tK, options)
    return 0.5 * (lower_tk + upper_tk)


def probabilistic_metrics(output_tK, target_tk, options) -> dict:
    """``{"nll" or "pinball": float, "coverage": float}`` over the non-NaN targets (NaN
    for both with none). ``options`` is the model's ModelOptions (gaussian or quantile)."""
    target_tk = np.asarray(target_tk, np.float64)
    seen = ~np.isnan(target_tk)
    out_tck = channels_tck(np.asarray(output_tK, np.float64), num_channels(options))
    score = "nll" if options.output_activation == "gaussian" else "pinball"
    if not seen.any():
        return {score: math.nan, "coverage": math.nan}
    y = target_tk[seen]
    if options.output_activation == "gaussian":
        mean, logvar = out_tck[:, 0][seen], out_tck[:, 1][seen]
        value = float(np.mean(0.5 * (math.log(2 * math.pi) + logvar + (y - mean) ** 2 * np.exp(-logvar))))
    else:
        levels = np.asarray(options.quantiles, np.float64)
        u_nc = y[:, None] - np.stack([out_tck[:, c][seen] for c in range(len(levels))], axis=1)
        value = float(np.mean(np.maximum(levels * u_nc, (levels - 1.0) * u_nc)))
    return {score: value, "coverage": float(np.mean(inside(*interval_bounds(output_tK, options), target_tk)))}


def inside(lower_tk, upper_tk, target_tk) -> np.ndarray:
    """Whether each non-NaN target [T][k] lies in ``[lower_tk, upper_tk]`` (bounds
    included), in row-major order: a bool vector whose mean is the coverage."""
    target_tk = np.asarray(target_tk, np.float64)
    seen = ~np.isnan(target_tk)
    return (lower_tk[seen] <= target_tk[seen]) & (target_tk[seen] <= upper_tk[seen])


def _nearest(levels, level) -> int:
    return int(np.argmin([abs(q - level) for q in levels]))
