"""sophia-eval's ensembles: the combining rule of each output layout, against
independent computations, and several workspaces scored as one."""
import json

import numpy as np
import pytest

from model_workspaces import IDS, TARGET_DIM, write_workspace
from sophia.data.dataset import Dataset
from sophia.evaluation import EvalError
from sophia.evaluation.cli import main
from sophia.evaluation.ensemble import combine
from sophia.evaluation.evaluate import evaluate
from sophia.options import ModelOptions
from test_evaluation import TEST_ROWS, reference, write_dataset

TOL = 1e-5


def test_gaussian_members_combine_into_the_mixtures_mean_and_variance():
    rng = np.random.default_rng(0)
    mean_n, log_var_n = rng.normal(size=3), rng.normal(scale=0.5, size=3)
    members = np.stack([[[m, s]] for m, s in zip(mean_n, log_var_n)])       # [N][T=1][2]
    mean, log_var = combine(members, ModelOptions(target_dim=1, output_activation="gaussian"))[0]
    grid = np.linspace(-15, 15, 200_001)                  # the mixture's density, integrated
    sd_n = np.exp(0.5 * log_var_n)
    density = np.mean(np.exp(-0.5 * ((grid[:, None] - mean_n) / sd_n) ** 2) / (sd_n * np.sqrt(2 * np.pi)),
                      axis=1)
    step = grid[1] - grid[0]
    expected_mean = np.sum(grid * density) * step
    expected_var = np.sum((grid - expected_mean) ** 2 * density) * step
    assert mean == pytest.approx(expected_mean, abs=1e-6)
    assert np.exp(log_var) == pytest.approx(expected_var, rel=1e-6)


def test_point_probability_and_quantile_members_average_and_quantiles_stay_sorted():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(4, 5, 6))                   # [N][T][C*k]
    for activation in ("identity", "softmax"):
        np.testing.assert_allclose(combine(values, ModelOptions(output_activation=activation)),
                                   values.mean(axis=0))
    options = ModelOptions(target_dim=2, output_activation="quantile", quantiles=(0.1, 0.5, 0.9))
    levels = np.cumsum(np.abs(rng.normal(size=(4, 5, 3, 2))), axis=2).reshape(4, 5, 6)
    combined = combine(levels, options)
    np.testing.assert_allclose(combined, levels.mean(axis=0))
    assert (np.diff(combined.reshape(5, 3, 2), axis=1) >= 0).all()


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    spec = dict(unit_type="lstm", learn_id_embedding=True, id_embedding_dim=3, num_ids=len(IDS))
    gaussian = dict(unit_type="gru", output_activation="gaussian")
    return {"a": write_workspace(root / "a", seed=0, **spec), "b": write_workspace(root / "b", seed=3, **spec),
            "g1": write_workspace(root / "g1", seed=1, **gaussian),
            "g2": write_workspace(root / "g2", seed=2, **gaussian),
            "wide": write_workspace(root / "wide", seed=4, target_dim=TARGET_DIM + 1),
            "data": write_dataset(root / "data"), "root": root}


def read_outputs(out, dataset, width):
    return [np.fromfile(out / (s.path + ".output"), "<f4").reshape(s.length, width) for s in dataset.sequences]


def test_an_ensemble_is_scored_on_the_mean_of_its_members_outputs(members):
    out = members["root"] / "out_ab"
    assert main([members["a"], members["b"], "--data_dir", members["data"], "--out", str(out),
                 "--baselines", "persistence"]) == 0
    dataset = Dataset.open(members["data"], "test")
    expected = [(a + b) / 2 for a, b in zip(reference(members["a"], dataset, TEST_ROWS),
                                            reference(members["b"], dataset, TEST_ROWS))]
    for got_tk, expected_tk in zip(read_outputs(out, dataset, TARGET_DIM), expected):
        np.testing.assert_allclose(got_tk, expected_tk, atol=TOL, rtol=0)
    report = json.loads((out / "report.json").read_text())
    assert report["members"] == [members["a"], members["b"]] and report["workspace"] == members["a"]
    single = evaluate(members["a"], members["data"], baselines=(), mode="FAST_COMPILE")
    assert single["members"] == [members["a"]]
    assert report["overall"]["model"]["rmse"] != pytest.approx(single["overall"]["model"]["rmse"])


def test_a_gaussian_ensemble_reports_the_combined_interval(members):
    alone = [members["root"] / f"out_{n}" for n in ("g1", "g2")]
    for name, out in zip(("g1", "g2"), alone):
        evaluate(members[name], members["data"], baselines=(), out=out, mode="FAST_COMPILE")
    out = members["root"] / "out_g"
    report = evaluate([members["g1"], members["g2"]], members["data"], baselines=(), out=out,
                      mode="FAST_COMPILE")
    dataset = Dataset.open(members["data"], "test")
    width = 2 * TARGET_DIM
    options = ModelOptions(target_dim=TARGET_DIM, output_activation="gaussian")
    each = [read_outputs(o, dataset, width) for o in alone]
    for n, got_tK in enumerate(read_outputs(out, dataset, width)):
        np.testing.assert_allclose(got_tK, combine([e[n] for e in each], options), atol=TOL, rtol=1e-5)
    assert {"nll", "coverage"} <= set(report["overall"]["model"])


def test_members_that_disagree_are_refused_naming_the_field(members, capsys):
    with pytest.raises(EvalError, match=r"wide/options.json: target_dim is 3 but .*a/options.json has 2"):
        evaluate([members["a"], members["wide"]], members["data"], mode="FAST_COMPILE")
    with pytest.raises(EvalError, match="output_activation is 'gaussian'"):
        evaluate([members["a"], members["g1"]], members["data"], mode="FAST_COMPILE")
    assert main([members["a"], members["wide"], "--data_dir", members["data"]]) == 1
    assert "target_dim" in capsys.readouterr().err
