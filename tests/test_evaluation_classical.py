"""sophia.evaluation.classical: ETS and ARIMA baselines against hand recursions and
statsmodels itself, on tiny series (skipped without statsmodels)."""
import sys

import numpy as np
import pytest

from sophia.evaluation import classical

NAN = np.nan


def series(n=160, seed=0):
    """A random walk plus a little noise: level changes that ETS and ARIMA follow."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=n)) + 0.3 * rng.normal(size=n)


@pytest.fixture
def statsmodels():
    return pytest.importorskip("statsmodels.tsa.statespace.sarimax",
                               reason="the ets and arima baselines need statsmodels")


def test_simple_exponential_smoothing_by_hand(statsmodels):
    """ETS(A,N,N) from a fresh start: level = the first target, then
    prediction[t] = level[t-1], level[t] = level[t-1] + alpha (y[t] - level[t-1])."""
    y = series()
    fitted = classical.fit("ets", (False, False, None), y[:120])
    alpha = fitted.params[0]
    assert 0 < alpha <= 1
    new = y[120:].copy()
    level, expected = new[0], [NAN]
    for value in new[1:]:
        expected.append(level)
        level += alpha * (value - level)
    np.testing.assert_allclose(classical.one_step(fitted, new), expected, rtol=0, atol=1e-8)
    new[5] = NAN                                        # a missing target: the level carries on
    got = classical.one_step(fitted, new)
    np.testing.assert_allclose(got[:6], expected[:6], rtol=0, atol=1e-8)
    assert got[6] == pytest.approx(got[5], abs=1e-8) and np.isfinite(got).sum() == len(new) - 1


def test_holt_trend_by_hand(statsmodels):
    """ETS(A,A,N): trend 0 at the start; error-correction recursions with statsmodels'
    smoothing_level alpha and smoothing_trend beta."""
    y = series() + 0.2 * np.arange(160)
    fitted = classical.fit("ets", (True, False, None), y[:120])
    alpha, beta = fitted.params[:2]
    new = y[120:]
    level, trend, expected = new[0], 0.0, [NAN]
    for value in new[1:]:
        forecast = level + trend
        expected.append(forecast)
        error = value - forecast
        level, trend = forecast + alpha * error, trend + beta * error
    np.testing.assert_allclose(classical.one_step(fitted, new), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("order", [(1, 0, 0), (1, 1, 1)])
def test_arima_equals_statsmodels_apply(statsmodels, order):
    """The fitted ARIMA's parameters, run over a new sequence, are statsmodels' own
    one-step predictions of that sequence (SARIMAX.fit().apply(...).predict())."""
    y = series(seed=1)
    fitted = classical.fit("arima", order, y[:120])
    reference = statsmodels.SARIMAX(y[:120], order=order, trend="c" if order[1] == 0 else "n")
    result = classical._quiet(lambda: reference.fit(disp=False))
    np.testing.assert_allclose(fitted.params, result.params, rtol=1e-6)
    expected = result.apply(y[120:]).predict()
    got = classical.one_step(fitted, y[120:])
    assert np.isnan(got[0])                              # nothing before frame 0
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-8, atol=1e-8)


def test_ar1_process_chooses_an_arima_that_forecasts_like_the_truth(statsmodels, monkeypatch):
    monkeypatch.setattr(classical, "ARIMA_CANDIDATES", ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    rng = np.random.default_rng(2)
    y = np.zeros(500)
    for t in range(1, 500):
        y[t] = 2.0 + 0.7 * (y[t - 1] - 2.0) + rng.normal(scale=0.5)
    (fitted, dev_mse), = classical.choose("arima", [y[:300, None]], [y[300:400, None]], np.zeros(1))
    assert fitted.spec == (1, 0, 0) and set(dev_mse) == {"[1, 0, 0]", "[0, 1, 0]", "[0, 0, 1]"}
    prediction = classical.forecast([(fitted, dev_mse)], y[400:, None], np.array([-9.0]))[:, 0]
    assert prediction[0] == -9.0                         # the training-mean fallback
    truth = 2.0 + 0.7 * (y[400:-1] - 2.0)
    np.testing.assert_allclose(prediction[1:], truth, atol=0.1)


def test_seasonal_ets_is_tried_only_with_two_seasons(statsmodels):
    specs = classical.candidates("ets", 12, 30)
    assert (False, False, 12) in specs and (True, True, 12) in specs
    assert all(s[2] is None for s in classical.candidates("ets", 12, 20))
    assert all(s[2] is None for s in classical.candidates("ets", 1, 300))


def test_a_channel_without_training_targets_keeps_the_mean(statsmodels, monkeypatch):
    monkeypatch.setattr(classical, "ARIMA_CANDIDATES", ((1, 0, 0),))
    y = series(80)
    train = [np.column_stack([y, np.full(80, NAN)])]
    chosen = classical.choose("arima", train, train, np.array([0.0, 5.0]))
    assert chosen[0][0] is not None and chosen[1] == (None, {})
    prediction = classical.forecast(chosen, train[0], np.array([0.0, 5.0]))
    assert (prediction[:, 1] == 5.0).all() and np.isfinite(prediction[:, 0]).all()


def block_statsmodels(monkeypatch):
    """Make ``import statsmodels...`` fail, even where it was imported before."""
    for name in ("statsmodels", "statsmodels.tsa", "statsmodels.tsa.statespace"):
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_statsmodels_names_the_extra(monkeypatch):
    block_statsmodels(monkeypatch)
    with pytest.raises(classical.MissingStatsmodels, match=r"pip install -e '\.\[data\]'"):
        classical.require_statsmodels()


def test_seasonal_ets_starts_from_the_first_season(statsmodels):
    """With a season of P frames: level = the mean of the first P targets, profile = their
    deviations; with the smoothing all but off, the first season repeats, and frames
    before P have nothing to be predicted from."""
    first = np.array([1.0, 5.0, 2.0, 0.0])
    fitted = classical.Fitted("ets", (False, False, 4), np.array([1e-9, 1e-9]))
    got = classical.one_step(fitted, np.tile(first, 4) + 0.01)
    assert np.isnan(got[:4]).all()
    np.testing.assert_allclose(got[4:], np.tile(first, 3) + 0.01, atol=1e-6)
