"""The baselines a model is judged against: small pure functions of the targets.

Every baseline predicts sequence by sequence, one step ahead, from the targets of
the same sequence *before* the frame it predicts (never from the frame itself),
so it sees what a causal forecaster would. Arrays are float [T][k] (time-major,
``k`` target channels); NaN in a target means "no target at that frame".

- :func:`train_mean` -- the per-channel mean of the training targets.
- :func:`mean_forecast` -- that mean at every frame.
- :func:`seasonal_naive` -- the last target at or before frame ``t - season``;
  :func:`persistence` is the case ``season = 1``.
- :func:`lagged` -- the lag features AR uses (a missing lag: the last
  target before it, else the training mean).
- :func:`fit_ar`, :func:`ar_forecast`, :func:`choose_ar_order` -- AR(p) per
  channel by least squares, p chosen on the dev split.

Wherever a rule has no value to use (no earlier target in the sequence), the
prediction falls back to the training mean (docs/EVALUATION.md).

Example
-------
>>> import numpy as np
>>> y_tk = np.array([[1.0], [np.nan], [3.0], [4.0]])
>>> persistence(y_tk, np.array([0.5]))[:, 0].tolist()
[0.5, 1.0, 1.0, 3.0]
"""
from __future__ import annotations

import numpy as np


def train_mean(targets) -> np.ndarray:
    """Per-channel mean [k] of the non-NaN values of ``targets`` (a list of [T][k]);
    0 for a channel with none."""
    stacked_tk = np.concatenate([np.asarray(t, np.float64) for t in targets])
    seen_k = np.sum(~np.isnan(stacked_tk), axis=0)
    total_k = np.nansum(stacked_tk, axis=0)
    return np.where(seen_k > 0, total_k / np.maximum(seen_k, 1), 0.0)


def mean_forecast(target_tk, mean_k) -> np.ndarray:
    """The training mean ``mean_k`` at every frame: float64 [T][k]."""
    return np.broadcast_to(np.asarray(mean_k, np.float64), np.shape(target_tk)).copy()


def _last_known_index(target_tk) -> np.ndarray:
    """[T][k]: the largest u <= t with a non-NaN target[u], or -1 if none."""
    target_tk = np.asarray(target_tk)
    frame_tk = np.where(np.isnan(target_tk), -1, np.arange(len(target_tk))[:, None])
    return np.maximum.accumulate(frame_tk, axis=0) if len(target_tk) else frame_tk


def seasonal_naive(target_tk, season, fallback_k) -> np.ndarray:
    """Seasonal naive: at frame t, the last non-NaN target at or before frame
    ``t - season`` of the same sequence; ``fallback_k`` where there is none.

    With dense targets this is ``target[t - season]``. Returns float64 [T][k].
    Raises ValueError for ``season < 1``.
    """
    if season < 1:
        raise ValueError(f"season must be >= 1, got {season}")
    target_tk = np.asarray(target_tk, np.float64)
    prediction_tk = mean_forecast(target_tk, fallback_k)
    if len(target_tk) > season:
        source_tk = _last_known_index(target_tk)[:-season]
        known = source_tk >= 0
        channel_tk = np.broadcast_to(np.arange(target_tk.shape[1]), source_tk.shape)
        prediction_tk[season:][known] = target_tk[source_tk[known], channel_tk[known]]
    return prediction_tk


def persistence(target_tk, fallback_k) -> np.ndarray:
    """Persistence: the last non-NaN target before frame t (``seasonal_naive``
    with season 1); ``fallback_k`` where the sequence has none yet."""
    return seasonal_naive(target_tk, 1, fallback_k)


def lagged(target_tk, order, fill_k) -> tuple[np.ndarray, np.ndarray]:
    """Lag features of AR(``order``) and where they are all observed.

    Returns ``(lags_tkp, observed_tk)``: ``lags_tkp[t, c, l-1]`` is the last
    non-NaN ``target[u, c]`` with ``u <= t - l`` (``seasonal_naive`` with season
    l), ``fill_k[c]`` if there is none; ``observed_tk[t, c]`` is True where
    every ``target[t - l, c]``, l = 1 .. order, exists and is not NaN.
    """
    target_tk = np.asarray(target_tk, np.float64)
    lags_tkp = np.stack([seasonal_naive(target_tk, lag, fill_k) for lag in range(1, order + 1)],
                        axis=2)
    present_tk = ~np.isnan(target_tk)
    observed_tk = np.ones(target_tk.shape, bool)
    for lag in range(1, order + 1):
        observed_tk[:lag] = False
        observed_tk[lag:] &= present_tk[:-lag]
    return lags_tkp, observed_tk


def fit_ar(targets, order, mean_k) -> np.ndarray:
    """AR(``order``) per channel by least squares, with an intercept.

    ``y[t] = a0 + a1 y[t-1] + ... + ap y[t-p]`` is fitted to the non-NaN targets
    of ``targets`` (a list of [T][k], one per sequence) whose ``order`` previous
    targets in the same sequence are all observed. A channel with no such frame
    (sparse targets) is fitted to all its non-NaN targets instead, the missing
    lags filled as :func:`lagged` fills them (``mean_k`` as the last resort); a
    channel without targets predicts ``mean_k``. Returns the coefficients
    [k][order + 1] (intercept first).
    """
    width = len(mean_k)
    features = [lagged(t, order, mean_k) + (np.asarray(t, np.float64),) for t in targets]
    coef_kq = np.zeros((width, order + 1))
    for c in range(width):
        for strict in (True, False):
            rows, values = [], []
            for lags_tkp, observed_tk, target_tk in features:
                use = ~np.isnan(target_tk[:, c]) & (observed_tk[:, c] if strict else True)
                rows.append(lags_tkp[use, c])
                values.append(target_tk[use, c])
            y_n = np.concatenate(values)
            if len(y_n):
                break
        if len(y_n) == 0:
            coef_kq[c, 0] = mean_k[c]
            continue
        design_nq = np.hstack([np.ones((len(y_n), 1)), np.concatenate(rows)])
        coef_kq[c] = np.linalg.lstsq(design_nq, y_n, rcond=None)[0]
    return coef_kq


def ar_forecast(target_tk, coef_kq, mean_k) -> np.ndarray:
    """One-step AR predictions [T][k] with coefficients from :func:`fit_ar`; a missing
    lag is filled as :func:`lagged` fills it."""
    order = coef_kq.shape[1] - 1
    lags_tkp, _ = lagged(target_tk, order, mean_k)
    return coef_kq[:, 0] + np.einsum("tkp,kp->tk", lags_tkp, coef_kq[:, 1:])


def choose_ar_order(train_targets, dev_targets, max_order, mean_k):
    """Fit AR(p) on the training targets for p = 1 .. ``max_order`` and keep the
    p with the least mean squared error on the dev targets (the smaller p on a tie).

    Returns ``(order, coef_kq, dev_mse)``, ``dev_mse`` a list over p = 1 .. max_order.
    Raises ValueError for ``max_order < 1``.
    """
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    best, dev_mse = None, []
    for order in range(1, max_order + 1):
        coef_kq = fit_ar(train_targets, order, mean_k)
        errors = [ar_forecast(t, coef_kq, mean_k) - np.asarray(t, np.float64) for t in dev_targets]
        flat = np.concatenate([e.ravel() for e in errors])
        flat = flat[~np.isnan(flat)]
        mse = float(np.mean(flat ** 2)) if flat.size else float("nan")
        dev_mse.append(mse)
        if best is None or mse < best[2]:
            best = (order, coef_kq, mse)
    return best[0], best[1], dev_mse
