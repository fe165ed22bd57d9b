"""Classical forecasters through statsmodels: ETS and ARIMA, chosen on the dev split.

The optional baselines ``ets`` and ``arima`` of ``sophia-eval`` (statsmodels is
the ``data`` extra: ``pip install -e '.[data]'``). Each channel is handled on its
own:

1. every candidate (:data:`ETS_CANDIDATES`, :data:`ARIMA_CANDIDATES`) is fitted
   by maximum likelihood to the training split's targets, its sequences joined
   end to end in list order (the last :data:`MAX_FIT_VALUES` values at most);
2. its fitted parameters are run, unchanged, over each dev sequence from a fresh
   start (:func:`one_step`), and the candidate with the least dev mean squared
   error is kept;
3. that one runs the same way over the evaluated split.

A state-space filter predicts frame t from the sequence's targets before t only,
and skips NaN targets, so the predictions are one step ahead on exactly the
frames the other baselines predict. Frames before a sequence's first non-NaN
target get the training mean, as the other baselines' do.

Each sequence starts afresh, without the training data's state: ARIMA with a
diffuse state for its differences and the stationary distribution of its ARMA
part (as ``SARIMAX.apply`` does), predicting from the frame after the first
target; ETS with its level at the sequence's first target and no trend,
predicting from the next frame, or, with a season of P frames, with its level
the mean of the first P targets and its seasonal profile their deviations from
it, predicting from frame P. No frame is predicted from its own target.

- :func:`require_statsmodels` -- import it, or raise an error naming the extra.
- :func:`fit` -- one candidate fitted to training values: a :class:`Fitted`.
- :func:`one_step` -- a fitted candidate's one-step predictions over a sequence.
- :func:`choose` -- fit every candidate, keep the best on dev, per channel.
- :func:`forecast` -- the chosen models' predictions [T][k] over a sequence.

Example
-------
>>> import numpy as np                                                 # doctest: +SKIP
>>> y = [np.cumsum(np.random.default_rng(0).normal(size=(300, 1)), axis=0)]  # doctest: +SKIP
>>> chosen = choose("arima", y, y, np.zeros(1))                       # doctest: +SKIP
>>> forecast(chosen, y[0], np.zeros(1)).shape                          # doctest: +SKIP
(300, 1)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

MAX_FIT_VALUES = 20_000
# (trend, damped_trend, seasonal): "season" means the --season period, tried when it is > 1.
ETS_CANDIDATES = ((False, False, None), (True, False, None), (True, True, None),
                  (False, False, "season"), (True, True, "season"))
# (p, d, q): a constant when d = 0.
ARIMA_CANDIDATES = tuple((p, d, q) for d in (0, 1) for p in (0, 1, 2, 3) for q in (0, 1, 2)
                         if p + q > 0 or d > 0)
KINDS = ("ets", "arima")


class MissingStatsmodels(ImportError):
    """statsmodels is not installed; the message names the extra that installs it."""


def require_statsmodels():
    """Import statsmodels' state-space models; raise :class:`MissingStatsmodels` if absent."""
    try:
        from statsmodels.tsa.statespace import exponential_smoothing, sarimax
    except ImportError as error:
        raise MissingStatsmodels("the ets and arima baselines need statsmodels: "
                                 "pip install -e '.[data]' (or pip install statsmodels)") from error
    return exponential_smoothing, sarimax


@dataclass
class Fitted:
    """One fitted candidate: ``kind`` 'ets' or 'arima', its ``spec`` (an entry of
    ETS_CANDIDATES with the season resolved, or ARIMA_CANDIDATES) and ``params``."""
    kind: str
    spec: tuple
    params: np.ndarray

    def describe(self) -> dict:
        if self.kind == "arima":
            return {"order": list(self.spec), "constant": self.spec[1] == 0,
                    "params": self.params.tolist()}
        trend, damped, season = self.spec
        return {"trend": trend, "damped_trend": damped, "seasonal": season,
                "params": self.params.tolist()}


def candidates(kind, season, n_values):
    """The specs tried for ``kind`` on ``n_values`` training values (seasonal ETS
    only when ``season > 1`` and at least two seasons are there)."""
    if kind == "arima":
        return ARIMA_CANDIDATES
    seasonal_ok = season > 1 and n_values >= 2 * season + 2
    return tuple((trend, damped, season if seasonal else None)
                 for trend, damped, seasonal in ETS_CANDIDATES if seasonal is None or seasonal_ok)


def _quiet(call):
    """``call()`` with statsmodels' convergence and estimation warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return call()


def fit(kind, spec, values_t) -> Fitted:
    """Fit one candidate by maximum likelihood to ``values_t`` (float [T], NaN = missing).

    Raises whatever statsmodels raises for a model it cannot fit
    (:func:`choose` skips those)."""
    ets, sarimax = require_statsmodels()
    values_t = np.asarray(values_t, np.float64)
    if kind == "arima":
        model = sarimax.SARIMAX(values_t, order=spec, trend="c" if spec[1] == 0 else "n")
        result = _quiet(lambda: model.fit(disp=False))
        return Fitted(kind, tuple(spec), np.asarray(result.params))
    trend, damped, season = spec
    # The initial states are concentrated out of the likelihood (found by least squares for
    # each trial of the smoothing parameters), so only those are searched over.
    model = ets.ExponentialSmoothing(values_t, trend=trend, damped_trend=damped, seasonal=season,
                                     initialization_method="concentrated")
    result = _quiet(lambda: model.fit(disp=False))
    return Fitted(kind, tuple(spec), np.asarray(result.params))


def one_step(fitted: Fitted, values_t) -> np.ndarray:
    """One-step-ahead predictions [T] of ``fitted`` over ``values_t`` from a fresh
    start (module docstring); NaN where it has nothing to predict from yet."""
    ets, sarimax = require_statsmodels()
    values_t = np.asarray(values_t, np.float64)
    seen = np.flatnonzero(~np.isnan(values_t))
    prediction_t = np.full(len(values_t), np.nan)
    if len(seen) == 0:
        return prediction_t
    if fitted.kind == "arima":
        order = fitted.spec
        model = sarimax.SARIMAX(values_t, order=order, trend="c" if order[1] == 0 else "n")
        start = seen[0] + 1
        result = _quiet(lambda: model.filter(fitted.params))
        prediction_t[start:] = np.asarray(result.predict(), np.float64)[start:]
        return prediction_t
    trend, damped, season = fitted.spec
    start = seen[0] + (season or 1)             # the values that set the initial states
    if start >= len(values_t):
        return prediction_t
    first = values_t[seen[0]:start]
    level = float(np.nanmean(first))
    profile = np.nan_to_num(first - level)[::-1] if season else None   # the latest first
    model = ets.ExponentialSmoothing(
        values_t[start:], trend=trend, damped_trend=damped, seasonal=season,
        initialization_method="known", initial_level=level,
        initial_trend=0.0 if trend else None, initial_seasonal=profile)
    result = _quiet(lambda: model.filter(fitted.params))
    prediction_t[start:] = np.asarray(result.predict(), np.float64)
    return prediction_t


def _mse(fitted, sequences, mean) -> float:
    """Dev MSE of what :func:`forecast` would predict: every non-NaN target counts."""
    total, count = 0.0, 0
    for values_t in sequences:
        prediction_t = one_step(fitted, values_t)
        error_t = np.where(np.isnan(prediction_t), mean, prediction_t) - values_t
        error_t = error_t[~np.isnan(error_t)]
        total, count = total + float(np.sum(error_t ** 2)), count + error_t.size
    return total / count if count else float("nan")


def choose(kind, train_targets, dev_targets, mean_k, season: int = 1):
    """Fit every candidate of ``kind`` per channel; keep the least dev MSE.

    Parameters
    ----------
    kind : {'ets', 'arima'}
    train_targets, dev_targets : list of ndarray
        Targets [T][k] per sequence (NaN = no target).
    mean_k : ndarray [k]
        The training mean (a channel without training targets keeps it: None).
    season : int
        The ``--season`` period of the seasonal ETS candidates.

    Returns
    -------
    list
        Per channel, ``(Fitted or None, dev_mse)``: ``dev_mse`` maps each spec
        tried (as a string) to its dev MSE (NaN where fitting failed). Ties go
        to the earlier candidate.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    require_statsmodels()
    chosen = []
    for c in range(len(mean_k)):
        values_t = np.concatenate([np.asarray(t, np.float64)[:, c] for t in train_targets])
        values_t = values_t[-MAX_FIT_VALUES:]
        dev = [np.asarray(t, np.float64)[:, c] for t in dev_targets]
        best, dev_mse = None, {}
        if np.sum(~np.isnan(values_t)) >= 4:
            for spec in candidates(kind, season, len(values_t)):
                try:
                    fitted = fit(kind, spec, values_t)
                    mse = _mse(fitted, dev, mean_k[c])
                except (ValueError, np.linalg.LinAlgError):
                    fitted, mse = None, float("nan")
                dev_mse[str(list(spec))] = mse
                if fitted is not None and np.isfinite(mse) and (best is None or mse < best[1]):
                    best = (fitted, mse)
        chosen.append((best[0] if best else None, dev_mse))
    return chosen


def forecast(chosen, target_tk, mean_k) -> np.ndarray:
    """Predictions [T][k] of :func:`choose`'s models over one sequence; the
    training mean where a model has nothing to predict from (or none was chosen)."""
    target_tk = np.asarray(target_tk, np.float64)
    prediction_tk = np.broadcast_to(np.asarray(mean_k, np.float64), target_tk.shape).copy()
    for c, (fitted, _) in enumerate(chosen):
        if fitted is not None:
            predicted_t = one_step(fitted, target_tk[:, c])
            known = ~np.isnan(predicted_t)
            prediction_tk[known, c] = predicted_t[known]
    return prediction_tk
