"""Interval tracking (sophia/evaluation/tracking.py): the rule by hand, its long-run
coverage under a wrong or drifting spread, and sophia-eval's ``coverage_tracked``
against a loop written here from the documented rule."""
import json
import math

import numpy as np
import pytest

from model_workspaces import write_workspace
from sophia.data.dataset import Dataset
from sophia.evaluation import EvalError
from sophia.evaluation.cli import main
from sophia.evaluation.evaluate import evaluate
from sophia.evaluation.probabilistic import Z_80
from sophia.evaluation.tracking import IntervalTracker, tracked_bounds, tracked_inside
from sophia.options import ModelOptions
from test_evaluation import write_dataset

GAUSSIAN = ModelOptions(target_dim=1, output_activation="gaussian")


def test_the_scale_follows_misses_and_hits_by_hand():
    # interval [-1, 1] about 0 every frame; step 0.5, miss rate 0.2
    lower, center, upper = (np.full((4, 1), v) for v in (-1.0, 0.0, 1.0))
    targets = np.array([[2.0], [np.nan], [0.5], [-1.3]])
    lo, hi = tracked_bounds(lower, center, upper, targets, miss_rate=0.2, step=0.5)
    s1 = math.exp(0.5 * 0.8)                  # frame 0 missed (2 > 1)
    s3 = s1 * math.exp(-0.5 * 0.2)            # frame 1 NaN: unchanged; frame 2 inside
    np.testing.assert_allclose(hi[:, 0], [1.0, s1, s1, s3])
    np.testing.assert_allclose(lo[:, 0], [-1.0, -s1, -s1, -s3])


def test_an_asymmetric_interval_scales_about_its_centre():
    tracker = IntervalTracker(target_dim=2, miss_rate=0.2, step=1.0)
    tracker.interval([0.0, 0.0], [1.0, 2.0], [4.0, 3.0])
    tracker.observe([10.0, np.nan])           # element 0 missed, element 1 not seen
    lower, upper = tracker.interval([0.0, 0.0], [1.0, 2.0], [4.0, 3.0])
    s = math.exp(0.8)
    np.testing.assert_allclose(lower, [1.0 - s * 1.0, 0.0])
    np.testing.assert_allclose(upper, [1.0 + s * 3.0, 3.0])


@pytest.mark.parametrize("model_sd, data_sd", [(1.0, 2.0), (3.0, 1.0)])
def test_a_wrong_spread_is_tracked_to_the_nominal_coverage(model_sd, data_sd):
    rng = np.random.default_rng(0)
    y = rng.normal(scale=data_sd, size=(20_000, 1))
    output = np.concatenate([np.zeros_like(y), np.full_like(y, 2 * math.log(model_sd))], axis=1)
    raw = np.mean(np.abs(y) <= Z_80 * model_sd)
    tracked = np.mean(tracked_inside(output, y, GAUSSIAN, step=0.1))
    assert abs(raw - 0.8) > 0.15              # 0.48 (too narrow) or 0.9998 (too wide)
    assert tracked == pytest.approx(0.8, abs=0.01)


def test_a_spread_that_changes_midway_is_followed():
    rng = np.random.default_rng(1)
    y = np.concatenate([rng.normal(size=10_000), rng.normal(scale=4.0, size=10_000)])[:, None]
    output = np.zeros((len(y), 2))            # mean 0, variance 1 throughout
    inside = tracked_inside(output, y, GAUSSIAN, step=0.1)
    assert np.mean(inside[:10_000]) == pytest.approx(0.8, abs=0.02)
    assert np.mean(inside[10_000:]) == pytest.approx(0.8, abs=0.02)   # raw: 0.25


def test_quantile_outputs_scale_about_the_median_or_the_middle():
    # levels 0.1 -> 0, 0.5 -> 2, 0.9 -> 3; frame 0 (5 > 3) misses, so frame 1's interval
    # is e^0.8 = 2.2255 times as far from the centre: lower 2 - 2.2255 * 2 = -2.45 about
    # the median, 1.5 - 2.2255 * 1.5 = -1.84 about the middle of [0, 3]
    y = np.array([[5.0], [-2.2]])
    levels = {0.1: 0.0, 0.5: 2.0, 0.9: 3.0}
    for quantiles, second_inside in (((0.1, 0.5, 0.9), True), ((0.1, 0.9), False)):
        options = ModelOptions(target_dim=1, output_activation="quantile", quantiles=quantiles)
        output = np.array([[levels[q] for q in quantiles]] * 2)
        assert list(tracked_inside(output, y, options, step=1.0)) == [False, second_inside]


def test_step_zero_is_the_models_own_interval():
    rng = np.random.default_rng(2)
    y = rng.normal(scale=2.0, size=(500, 1))
    output = np.zeros((500, 2))
    np.testing.assert_array_equal(tracked_inside(output, y, GAUSSIAN, step=0.0), np.abs(y[:, 0]) <= Z_80)


@pytest.mark.parametrize("kwargs, message", [
    (dict(miss_rate=0.0), "miss_rate"), (dict(miss_rate=0.2, step=-0.1), "step"),
    (dict(miss_rate=0.2, step=float("nan")), "step"), (dict(miss_rate=0.2, step="x"), "step")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IntervalTracker(1, **kwargs)


def test_observe_needs_an_interval_first():
    with pytest.raises(RuntimeError, match="interval"):
        IntervalTracker(1, 0.2).observe([0.0])


@pytest.fixture(scope="module")
def gaussian_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    return {"ws": write_workspace(root / "g", seed=1, unit_type="gru", output_activation="gaussian"),
            "data": write_dataset(root / "data"), "root": root}


def test_sophia_eval_reports_the_tracked_coverage_of_every_sequence(gaussian_eval):
    out = gaussian_eval["root"] / "out"
    assert main([gaussian_eval["ws"], "--data_dir", gaussian_eval["data"], "--out", str(out),
                 "--baselines", "", "--warmup", "2", "--track_step", "0.7"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "coverage_tracked" in report["metrics"] and report["interval"]["track_step"] == 0.7
    dataset = Dataset.open(gaussian_eval["data"], "test")
    inside_all = []
    for s, entry in zip(dataset.sequences, report["sequences"]):
        output = np.fromfile(out / entry["output"], "<f4").reshape(s.length, 4).astype(np.float64)
        target = np.asarray(dataset.target(dataset.sequences.index(s)), np.float64)
        inside = []
        for j in range(target.shape[1]):      # the documented rule, one element at a time
            log_scale = 0.0
            for t in range(2, s.length):      # from the first scored frame
                mean, sd = output[t, j], math.exp(0.5 * output[t, 2 + j])
                half = math.exp(log_scale) * Z_80 * sd
                if math.isnan(target[t, j]):
                    continue
                miss = abs(target[t, j] - mean) > half
                inside.append(not miss)
                log_scale += 0.7 * (miss - 0.2)
        assert entry["metrics"]["model"]["coverage_tracked"] == pytest.approx(np.mean(inside))
        inside_all += inside
    assert report["overall"]["model"]["coverage_tracked"] == pytest.approx(np.mean(inside_all))


def test_sophia_eval_without_tracking_and_with_a_bad_step(gaussian_eval, capsys):
    report = evaluate(gaussian_eval["ws"], gaussian_eval["data"], baselines=(), track_step=0.0,
                      mode="FAST_COMPILE")
    assert "coverage_tracked" not in report["metrics"]
    assert "coverage_tracked" not in report["overall"]["model"]
    with pytest.raises(EvalError, match="--track_step"):
        evaluate(gaussian_eval["ws"], gaussian_eval["data"], baselines=(), track_step=-1.0)
    with pytest.raises(SystemExit) as exit_info:
        main([gaussian_eval["ws"], "--data_dir", gaussian_eval["data"], "--track_step", "-1"])
    assert exit_info.value.code == 2 and "--track_step" in capsys.readouterr().err
