"""sophia.evaluation.baselines and .metrics: against hand computations on tiny series."""
import numpy as np
import pytest

from sophia.evaluation import baselines as bl
from sophia.evaluation.metrics import mase_scale, point_metrics

NAN = np.nan


def col(*values):
    return np.array(values, np.float64)[:, None]


def test_train_mean_skips_nan_and_pools_sequences():
    assert bl.train_mean([col(1, NAN, 3), col(5)]).tolist() == [3.0]
    two = bl.train_mean([np.array([[1.0, NAN], [3.0, NAN]])])
    assert two.tolist() == [2.0, 0.0]            # a channel without targets: 0


def test_mean_forecast():
    assert bl.mean_forecast(col(9, 8, NAN), [2.5])[:, 0].tolist() == [2.5, 2.5, 2.5]


def test_persistence_is_the_last_target_before_the_frame():
    got = bl.persistence(col(1, NAN, 3, 4), [0.5])[:, 0]
    assert got.tolist() == [0.5, 1.0, 1.0, 3.0]   # frame 0 has none: the fallback


def test_seasonal_naive_by_hand():
    y = col(1, 2, NAN, 4, 5)
    assert bl.seasonal_naive(y, 2, [0.0])[:, 0].tolist() == [0, 0, 1, 2, 2]
    assert bl.seasonal_naive(y, 1, [0.0]).tolist() == bl.persistence(y, [0.0]).tolist()
    assert bl.seasonal_naive(col(1, 2), 5, [7.0])[:, 0].tolist() == [7, 7]
    with pytest.raises(ValueError, match="season"):
        bl.seasonal_naive(y, 0, [0.0])


def test_seasonal_naive_channels_are_independent():
    y_tk = np.array([[1.0, 10.0], [NAN, 20.0], [3.0, NAN]])
    got = bl.seasonal_naive(y_tk, 1, [0.0, -1.0])
    np.testing.assert_array_equal(got, [[0, -1], [1, 10], [1, 20]])


def test_lagged_fills_and_marks_unobserved_lags():
    lags_tkp, observed_tk = bl.lagged(col(1, NAN, 3, 4), 2, [9.0])
    np.testing.assert_array_equal(lags_tkp[:, 0], [[9, 9], [1, 9], [1, 1], [3, 1]])
    assert observed_tk[:, 0].tolist() == [False, False, False, False]
    _, observed_tk = bl.lagged(col(1, 2, 3, 4), 2, [9.0])
    assert observed_tk[:, 0].tolist() == [False, False, True, True]


def test_fit_ar_recovers_an_exact_ar1_and_forecasts_by_hand():
    y = [1.0]
    for _ in range(12):
        y.append(0.5 + 0.8 * y[-1])
    y = col(*y)
    coef_kq = bl.fit_ar([y[:7], y[7:]], 1, np.array([0.0]))
    np.testing.assert_allclose(coef_kq, [[0.5, 0.8]], atol=1e-12)
    got = bl.ar_forecast(col(2, NAN, 4), coef_kq, [1.0])[:, 0]
    np.testing.assert_allclose(got, [0.5 + 0.8 * 1, 0.5 + 0.8 * 2, 0.5 + 0.8 * 2])


def test_fit_ar_on_sparse_targets_falls_back_to_filled_lags():
    y = col(1, NAN, 2, NAN, 3, NAN, 4)             # no frame has an observed previous target
    coef_kq = bl.fit_ar([y], 1, np.array([0.0]))
    np.testing.assert_allclose(bl.ar_forecast(y, coef_kq, [0.0])[2::2, 0], [2, 3, 4], atol=1e-9)


def test_choose_ar_order_prefers_the_order_that_fits_dev():
    rng = np.random.default_rng(0)
    y = np.zeros(400)
    for t in range(2, 400):
        y[t] = 1.2 * y[t - 1] - 0.6 * y[t - 2] + rng.normal(scale=0.1)
    order, coef_kq, dev_mse = bl.choose_ar_order([col(*y[:300])], [col(*y[300:])], 4,
                                                 np.array([0.0]))
    assert order >= 2 and dev_mse[1] < 0.8 * dev_mse[0] and len(dev_mse) == 4
    np.testing.assert_allclose(coef_kq[0, 1:3], [1.2, -0.6], atol=0.1)
    with pytest.raises(ValueError, match="max_order"):
        bl.choose_ar_order([col(1, 2)], [col(1)], 0, np.array([0.0]))


def test_point_metrics_against_numpy():
    target_tk = np.array([[1.0, NAN], [2.0, 0.0], [NAN, 1.0], [4.0, 3.0]])
    prediction_tk = np.array([[1.5, 99.0], [2.0, -0.03], [99.0, 1.0], [3.0, 3.05]])
    seen = ~np.isnan(target_tk)
    error = prediction_tk[seen] - target_tk[seen]
    m = point_metrics(prediction_tk, target_tk, scale=0.5, tolerance=0.04)
    assert m["count"] == 6
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(error)))
    assert m["mase"] == pytest.approx(np.mean(np.abs(error)) / 0.5)
    assert m["max_abs_error"] == pytest.approx(1.0)
    assert m["num_wrong"] == 3                     # 0.5, 1.0 and 0.05 exceed 0.04; 0.03 does not


def test_point_metrics_without_targets_and_with_nan_predictions():
    m = point_metrics(col(1.0), col(NAN), scale=1.0, tolerance=0.1)
    assert m["count"] == 0 and m["num_wrong"] == 0 and np.isnan(m["rmse"])
    m = point_metrics(col(NAN, 1.0), col(0.0, 1.0), scale=1.0, tolerance=0.1)
    assert m["num_wrong"] == 1 and np.isnan(m["mae"])


def test_mase_scale_is_the_in_sample_seasonal_naive_mae():
    train = [col(1, 2, 4, NAN, 5), col(10, 13)]
    # season 1: |2-1|, |4-2|, |5-4| (the last target before the NaN), |13-10|
    assert mase_scale(train, 1) == pytest.approx((1 + 2 + 1 + 3) / 4)
    # season 2: |4-1|, |5-4| (frame 2 is the last at or before 4-2); the second is too short
    assert mase_scale(train, 2) == pytest.approx(2.0)
    assert np.isnan(mase_scale([col(1)], 1))
    m = point_metrics(col(2.0), col(1.0), scale=mase_scale(train, 1), tolerance=0.0)
    assert m["mase"] == pytest.approx(1.0 / 1.75)
