"""sophia-eval end to end on small real workspaces and tiny datasets.

The reference for the model's outputs is ``f_infer`` compiled over the whole
sequence on a net built separately (tests/model_workspaces.py), with the time
signal of the dataset and each sequence's ID row from ``ids.order``.
"""
import json
import os
import sys

import numpy as np
import pytest

from model_workspaces import IDS, INPUT_DIM, TARGET_DIM, OfflineModel, write_workspace
from sophia.data.dataset import Dataset
from sophia.data.writer import DatasetWriter
from sophia.evaluation import EvalError
from sophia.evaluation.cli import main
from sophia.evaluation.evaluate import evaluate
from sophia.evaluation.inference import id_indices, run_model
from sophia.evaluation.metrics import POINT_METRICS
from sophia.serving.model import load_model

TOL = 1e-5
# (split, path, length): IDs are the last component; zeta was never seen in training
SEQUENCES = [("train", "train/alpha", 20), ("train", "train/beta", 15), ("dev", "dev/alpha", 10),
             ("test", "test/gamma", 12), ("test", "test/zeta", 7), ("test", "test/alpha", 12)]
TEST_ROWS = [IDS.index("gamma"), len(IDS), IDS.index("alpha")]


def write_dataset(root, timed=False, input_dim=INPUT_DIM, seed=0):
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for split, path, length in SEQUENCES:
            target_tk = rng.normal(size=(length, TARGET_DIM))
            target_tk[::4, 1] = np.nan                     # sparse in one channel
            stamps = 50.0 + np.cumsum(rng.uniform(0.1, 1.5, length)) if timed else None
            writer.add(split, path, rng.normal(size=(length, input_dim)), target_tk, stamps)
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {"lstm": write_workspace(root / "lstm_ids", seed=0, unit_type="lstm",
                                    learn_id_embedding=True, id_embedding_dim=3, num_ids=len(IDS)),
            "gru": write_workspace(root / "gru_clock", seed=1, unit_type="gru",
                                   learn_clock_params=True, clock_period_lo=0.0,
                                   clock_period_hi=1.5, clock_r_on=0.4),
            "plain": write_dataset(root / "plain"), "timed": write_dataset(root / "timed", True),
            "root": root}


def reference(workspace, dataset, rows):
    """f_infer over each whole sequence: [T][k] per sequence."""
    offline = OfflineModel(workspace)
    outputs = []
    for i, row in enumerate(rows):
        input_t1j = np.asarray(dataset.input(i))[:, None]
        time_t1 = dataset.time_signal(i)[:, None]
        outputs.append(offline.infer(input_t1j, time_t1, [row])[:, 0])
    return outputs


@pytest.mark.parametrize("streams", [1, 3])
def test_outputs_equal_f_infer_over_whole_sequences(setup, streams):
    model = load_model(setup["lstm"], mode="FAST_COMPILE")
    dataset = Dataset.open(setup["plain"], "test")
    assert id_indices(dataset, IDS) == TEST_ROWS
    got = run_model(model, dataset, IDS, streams=streams)
    expected = reference(setup["lstm"], dataset, TEST_ROWS)
    for got_tk, expected_tk in zip(got, expected):
        assert got_tk.dtype == np.float32
        np.testing.assert_allclose(got_tk, expected_tk, atol=TOL, rtol=0)
    wrong_ids = reference(setup["lstm"], dataset, [0, 0, 0])
    assert np.abs(wrong_ids[0] - got[0]).max() > 1e-3        # the ID rows mattered


def test_timestamps_reach_the_clock_model(setup):
    model = load_model(setup["gru"], mode="FAST_COMPILE")
    dataset = Dataset.open(setup["timed"], "test")
    assert dataset.has_time
    got = run_model(model, dataset, [], streams=2)
    for got_tk, expected_tk in zip(got, reference(setup["gru"], dataset, [0, 0, 0])):
        np.testing.assert_allclose(got_tk, expected_tk, atol=TOL, rtol=0)
    counted = run_model(model, Dataset.open(setup["plain"], "test"), [], streams=2)
    assert np.abs(counted[0] - got[0]).max() > 1e-3          # not the frame counter


def test_cli_writes_outputs_and_report(setup, capsys):
    out = setup["root"] / "out_cli"
    assert main([setup["lstm"], "--data_dir", setup["plain"], "--split", "test",
                 "--out", str(out), "--season", "2", "--max_ar", "3", "--tolerance", "0.5"]) == 0
    printed = capsys.readouterr().out
    for method in ("model", "mean", "persistence", "seasonal", "ar"):
        assert f"\n{method} " in printed
    dataset = Dataset.open(setup["plain"], "test")
    expected = reference(setup["lstm"], dataset, TEST_ROWS)
    for s, expected_tk in zip(dataset.sequences, expected):
        got_tk = np.fromfile(out / (s.path + ".output"), "<f4").reshape(s.length, TARGET_DIM)
        np.testing.assert_allclose(got_tk, expected_tk, atol=TOL, rtol=0)
    report = json.loads((out / "report.json").read_text())
    assert {"format", "workspace", "data_dir", "split", "input_dim", "target_dim", "season",
            "max_ar", "tolerance", "mase_scale", "methods", "metrics", "baselines", "overall",
            "sequences"} <= set(report)
    assert report["methods"] == ["model", "mean", "persistence", "seasonal", "ar"]
    assert report["season"] == 2 and report["tolerance"] == 0.5
    assert 1 <= report["baselines"]["ar"]["order"] <= 3
    assert len(report["baselines"]["ar"]["dev_mse"]) == 3
    targets = np.concatenate([np.asarray(dataset.target(i)) for i in range(len(dataset))])
    seen = ~np.isnan(targets)
    error = np.concatenate(expected)[seen] - targets[seen]
    overall = report["overall"]["model"]
    assert set(overall) == set(POINT_METRICS)
    assert overall["count"] == seen.sum() == sum(
        s["metrics"]["model"]["count"] for s in report["sequences"])
    assert overall["rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2)), rel=1e-5)
    assert overall["mase"] == pytest.approx(overall["mae"] / report["mase_scale"])
    assert overall["num_wrong"] == int(np.sum(np.abs(error) > 0.5))
    assert [s["id_index"] for s in report["sequences"]] == TEST_ROWS
    assert [s["output"] for s in report["sequences"]] == [s.path + ".output"
                                                          for s in dataset.sequences]


def test_plot_is_written(setup):
    pytest.importorskip("matplotlib")
    out = setup["root"] / "out_plot"
    report = evaluate(setup["gru"], setup["timed"], "test", baselines=("persistence",),
                      out=out, plot=True, mode="FAST_COMPILE")
    assert report["methods"] == ["model", "persistence"]
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(setup, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    assert main([setup["gru"], "--data_dir", setup["plain"], "--plot",
                 "--out", str(setup["root"] / "no_plot")]) == 1
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert not (setup["root"] / "no_plot").exists()


def error_of(args, capsys):
    status = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def test_bad_workspace_and_split(setup, capsys):
    missing = str(setup["root"] / "nowhere")
    status, err = error_of([missing, "--data_dir", setup["plain"]], capsys)
    assert status == 1 and "nowhere" in err
    status, err = error_of([setup["gru"], "--data_dir", setup["plain"], "--split", "valid",
                            "--out", str(setup["root"] / "o1")], capsys)
    assert status == 1 and "valid.list" in err


def test_dims_that_do_not_match_the_model(setup, capsys):
    wide = write_dataset(setup["root"] / "wide", input_dim=INPUT_DIM + 1)
    status, err = error_of([setup["gru"], "--data_dir", wide, "--out",
                            str(setup["root"] / "o2")], capsys)
    assert status == 1 and "options.json" in err and f"input_dim {INPUT_DIM + 1}" in err


def test_dev_split_is_needed_only_for_ar(setup, capsys):
    no_dev = setup["root"] / "no_dev"
    write_dataset(no_dev)
    os.remove(no_dev / "dev.list")
    status, err = error_of([setup["gru"], "--data_dir", str(no_dev), "--out",
                            str(setup["root"] / "o3")], capsys)
    assert status == 1 and "dev.list" in err
    with pytest.raises(EvalError, match="season"):
        evaluate(setup["gru"], str(no_dev), season=0)


@pytest.mark.parametrize("args, message", [
    (["--baselines", "mean,prophet"], "prophet"),
    (["--season", "0"], "--season"),
    (["--tolerance", "-1"], "--tolerance"),
    (["--warmup", "-1"], "--warmup"),
])
def test_bad_options_exit_2(setup, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([setup["gru"], "--data_dir", setup["plain"], *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_classical_baselines_and_warmup(setup, monkeypatch):
    """ets and arima run on the same frames as the others; --warmup leaves the first
    frames of every sequence out of every method's score."""
    pytest.importorskip("statsmodels.tsa.statespace.sarimax")
    from sophia.evaluation import classical
    monkeypatch.setattr(classical, "ARIMA_CANDIDATES", ((1, 0, 0), (0, 1, 1)))
    monkeypatch.setattr(classical, "ETS_CANDIDATES", ((False, False, None),))
    out = setup["root"] / "out_classical"
    report = evaluate(setup["gru"], setup["plain"], "test", baselines=("persistence", "ets", "arima"),
                      out=out, mode="FAST_COMPILE", warmup=3)
    assert report["methods"] == ["model", "persistence", "ets", "arima"] and report["warmup"] == 3
    for channel in report["baselines"]["arima"]:
        assert channel["chosen"]["order"] in ([1, 0, 0], [0, 1, 1])
        assert set(channel["dev_mse"]) == {"[1, 0, 0]", "[0, 1, 1]"}
    dataset = Dataset.open(setup["plain"], "test")
    targets = [np.asarray(dataset.target(i)) for i in range(len(dataset))]
    counted = sum(int(np.sum(~np.isnan(t[3:]))) for t in targets)
    for method in report["methods"]:
        assert report["overall"][method]["count"] == counted
    everything = evaluate(setup["gru"], setup["plain"], "test", baselines=("persistence",),
                          mode="FAST_COMPILE")
    assert everything["overall"]["model"]["count"] == sum(int(np.sum(~np.isnan(t))) for t in targets)


def test_classical_baselines_without_statsmodels(setup, monkeypatch, capsys):
    for name in ("statsmodels", "statsmodels.tsa", "statsmodels.tsa.statespace"):
        monkeypatch.setitem(sys.modules, name, None)
    status, err = error_of([setup["gru"], "--data_dir", setup["plain"], "--baselines", "ar,arima",
                            "--out", str(setup["root"] / "o4")], capsys)
    assert status == 1 and "--baselines arima" in err and "pip install -e '.[data]'" in err
