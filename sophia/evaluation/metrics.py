"""Point-forecast metrics over the non-NaN target values.

- :func:`mase_scale` -- the in-sample seasonal-naive MAE of the training split.
- :func:`point_metrics` -- RMSE, MAE, MASE, largest absolute error, count wrong
  at a tolerance, over the target values that are not NaN.
- :data:`POINT_METRICS` -- their names, in the order tables print them.
- :func:`exact_match` -- of categorical outputs: the sequences whose every target
  frame has the target's class as its argmax.

A probabilistic model is scored here on its point forecast; its log score or
pinball loss and interval coverage are :mod:`sophia.evaluation.probabilistic`'s.

Example
-------
>>> import numpy as np
>>> m = point_metrics(np.array([[1.0], [2.0]]), np.array([[1.0], [4.0]]), scale=2.0, tolerance=0.5)
>>> m["mae"], m["mase"], m["num_wrong"]
(1.0, 0.5, 1)
>>> nan = float("nan")
>>> exact_match([np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.6, 0.4]])],
...             [np.array([[nan, nan], [0.0, 1.0]]), np.array([[0.0, 1.0]])])
{'exact_match': 0.5, 'num_exact': 1, 'sequences': 2}
"""
from __future__ import annotations

import math

import numpy as np

from sophia.evaluation.baselines import _last_known_index

POINT_METRICS = ("rmse", "mae", "mase", "max_abs_error", "num_wrong", "count")


def mase_scale(train_targets, season) -> float:
    """The mean absolute error of seasonal naive, in sample, on the training split.

    Over every non-NaN training target ``y[t, c]`` whose sequence has a non-NaN
    target at or before frame ``t - season`` (the last such one, as
    :func:`~sophia.evaluation.baselines.seasonal_naive` uses), pooled over
    sequences and channels. NaN if there is no such pair.
    """
    total, count = 0.0, 0
    for target_tk in train_targets:
        target_tk = np.asarray(target_tk, np.float64)
        if len(target_tk) <= season:
            continue
        source_tk = _last_known_index(target_tk)[:-season]
        now_tk = target_tk[season:]
        use = (source_tk >= 0) & ~np.isnan(now_tk)
        channel_tk = np.broadcast_to(np.arange(target_tk.shape[1]), source_tk.shape)
        total += float(np.sum(np.abs(now_tk[use] - target_tk[source_tk[use], channel_tk[use]])))
        count += int(np.sum(use))
    return total / count if count else float("nan")


def point_metrics(prediction_tk, target_tk, scale, tolerance) -> dict:
    """Metrics of ``prediction_tk`` against ``target_tk`` (both [T][k]).

    Only values where the target is not NaN count. Returns a dict of
    :data:`POINT_METRICS`: ``rmse``, ``mae``, ``mase`` (``mae / scale``),
    ``max_abs_error``, ``num_wrong`` (values with ``|error| > tolerance``) and
    ``count`` (values counted). With no values counted the float metrics are NaN.
    """
    target_tk = np.asarray(target_tk, np.float64)
    seen = ~np.isnan(target_tk)
    error_n = np.asarray(prediction_tk, np.float64)[seen] - target_tk[seen]
    if error_n.size == 0:
        nan = float("nan")
        return dict(rmse=nan, mae=nan, mase=nan, max_abs_error=nan, num_wrong=0, count=0)
    abs_n = np.abs(error_n)
    mae = float(np.mean(abs_n))
    return dict(rmse=float(np.sqrt(np.mean(error_n ** 2))), mae=mae,
                mase=mae / scale if scale and math.isfinite(scale) else float("nan"),
                max_abs_error=float(np.max(abs_n)),
                num_wrong=int(np.sum(~(abs_n <= tolerance))),   # a NaN prediction is wrong
                count=int(error_n.size))


def exact_match(outputs, targets) -> dict:
    """Sequence exact match of categorical outputs (class probabilities or logits).

    Parameters
    ----------
    outputs, targets : lists of arrays [T][k], one pair per sequence
        One-hot target frames; an all-NaN frame has no target.

    Returns
    -------
    dict
        ``sequences``: the sequences with at least one target frame; ``num_exact``:
        those whose output argmax equals the target's class at every target frame;
        ``exact_match``: their ratio (NaN without sequences). A NaN output is wrong.
    """
    num_exact = count = 0
    for output_tk, target_tk in zip(outputs, targets, strict=True):
        target_tk = np.asarray(target_tk)
        judged_t = ~np.all(np.isnan(target_tk), axis=-1)
        if not judged_t.any():
            continue
        output_tk = np.asarray(output_tk)[judged_t]
        right_t = (np.argmax(output_tk, axis=-1) == np.nanargmax(target_tk[judged_t], axis=-1))
        num_exact += bool(np.all(right_t & ~np.any(np.isnan(output_tk), axis=-1)))
        count += 1
    return dict(exact_match=num_exact / count if count else float("nan"), num_exact=num_exact,
                sequences=count)
