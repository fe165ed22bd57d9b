"""bench/reproduce.py: the metrics on hand-made cases, and tiny runs end to end
(data -> train.py -> sophia-eval of the best model over whole test sequences -> report)."""
import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sophia.options import ModelOptions, TrainOptions
from sophia.workspace import RunOptions, Workspace, load_net, save_run_options

_PATH = Path(__file__).resolve().parents[1] / "bench" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce", _PATH)
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def test_metrics_on_hand_made_cases():
    target = np.array([0.5, 0.5, 0.5, 0.2])
    assert reproduce.count_wrong([0.5, 0.55, 0.47, 0.15], target) == 2    # 0.05 and 0.05 > 0.04
    one_hot = np.eye(4)[[0, 1, 2, 3]]
    output = np.array([[0.9, 0, 0, 0], [0, 0.2, 0.3, 0], [0, 0, 0.6, 0.5], [0.1, 0, 0, 0.2]])
    assert reproduce.count_misclassified(output, one_hot) == 1
    assert reproduce.binary_accuracy([0.7, 0.4, 0.2, 0.6], [1, 1, 0, 0]) == 0.5
    assert reproduce.mse([1.0, 3.0], [0.0, 0.0]) == 5.0


def test_largest_errors_name_the_marked_frames_and_values():
    inputs = [np.array([[0.3, -1], [0.9, 1], [0.2, 0], [-0.5, 1], [0.1, -1]]),
              np.array([[0.0, -1], [0.4, 1], [0.6, 1], [0.1, -1]]),
              np.array([[0.0, -1], [0.7, 1], [0.1, 0], [0.2, 1], [0.0, -1]])]
    cases = reproduce.largest_errors([0.55, 0.5, 0.6], [0.6, 0.75, 0.72], inputs, k=2)
    assert [c["sequence"] for c in cases] == [1, 2]                     # errors -0.25, -0.12
    assert cases[0] == dict(sequence=1, error=-0.25, target=0.75, length=4, marked_frames=[1, 2],
                            marked_values=[0.4, 0.6])
    assert cases[1]["marked_frames"] == [1, 3] and cases[1]["marked_values"] == [0.7, 0.2]


def test_long_lags_get_a_window_that_reaches_back_and_a_forget_gate_that_remembers():
    config = _PATH.parents[1] / "configs" / "adding.toml"
    assert reproduce._length_sets(config, 100) == []                  # the config is for T = 100
    sets = dict(s.split("=") for s in reproduce._length_sets(config, 500))
    step, window = int(sets["step_size"]), int(sets["window_size"])
    assert step >= 550 and window == step + 550                       # any target reaches its frame 1
    assert int(sets["frames_per_epoch"]) == 5 * 60000                 # same sequences per epoch
    kept = (1 / (1 + np.exp(-float(sets["forget_bias"])))) ** 500      # of a cell's content over T frames
    assert 0.45 < kept < 0.55
    sigmoid = lambda b: 1 / (1 + np.exp(-b))                          # noqa: E731
    leak = sigmoid(float(sets["input_bias"])) * np.sqrt(500)           # closed input gate over T frames
    assert leak == pytest.approx(sigmoid(-3.0) * np.sqrt(100), rel=0.01)


def test_adding_stops_by_a_training_streak_and_the_others_by_dev_loss(tmp_path):
    """Adding's default criterion is the 1997 paper's made stricter: 5000 training
    sequences in a row within 0.04 (the paper's 2000 with --criterion)."""
    args = reproduce.resolve(reproduce.build_parser().parse_args(
        ["adding", "--stop_at_criterion", "--work", str(tmp_path)]))
    assert (args.criterion_on, args.criterion) == ("train_streak", 5000)
    assert "target_train_streak=5000" in args.limits
    args = reproduce.resolve(reproduce.build_parser().parse_args(
        ["adding", "--stop_at_criterion", "--criterion", "2000", "--work", str(tmp_path)]))
    assert (args.criterion_on, args.criterion) == ("train_streak", 2000)
    assert "target_train_streak=2000" in args.limits
    args = reproduce.resolve(reproduce.build_parser().parse_args(
        ["multiplication", "--stop_at_criterion", "--work", str(tmp_path)]))
    assert (args.criterion_on, args.criterion) == ("dev_loss", 0.0139)
    assert "target_dev_loss=0.0139" in args.limits


def test_a_streak_over_recycled_sequences_is_flagged(tmp_path):
    args = argparse.Namespace(criterion=2000, criterion_on="train_streak", counts={"train": 20_000},
                              work=tmp_path)
    used = dict(to_criterion=37_035, to_best=37_035, total=37_035)
    text = reproduce._used_text(used, args)
    assert text.startswith("training sequences: 37,035 to 2000 training sequences in a row "
                           "with |error| <= 0.04")
    assert "more than the 20,000 training sequences" in text
    args.counts = {"train": 100_000}
    assert "NOTE" not in reproduce._used_text(used, args)


def test_the_streak_names_the_runs_own_tolerance(tmp_path):
    saved = RunOptions(ModelOptions(input_dim=8, target_dim=4), TrainOptions(streak_tolerance=0.3),
                       seed=1, data_dir=str(tmp_path))
    save_run_options(Workspace(tmp_path / "ws"), saved)
    args = argparse.Namespace(criterion=5000, criterion_on="train_streak", counts=None, work=tmp_path)
    text = reproduce._used_text(dict(to_criterion=9_113, to_best=9_113, total=9_113), args)
    assert "to 5000 training sequences in a row with |error| <= 0.3," in text


def test_tiny_adding_run_end_to_end(tmp_path, capsys):
    report = reproduce.main(["adding", "--T", "11", "--train", "32", "--dev", "8", "--test", "6",
                             "--max_epochs", "1", "--work", str(tmp_path), "--seed", "3",
                             "--set", "net_width=4", "--set", "batch_size=4",
                             "--set", "window_size=24", "--set", "step_size=12",
                             "--set", "frames_per_epoch=120", "--set", "compile_mode=FAST_COMPILE",
                             "--stop_at_criterion", "--criterion_on", "dev_max_error", "--criterion", "10"])
    assert report["test"] == 6 and 0 <= report["wrong"] <= 6
    assert json.loads((tmp_path / "report.json").read_text())["wrong"] == report["wrong"]
    out = capsys.readouterr().out
    assert "adding T=11: wrong" in out and "to the first dev max |error| <= 10," in out
    assert "stop: target_dev_max_error reached" in out        # every error of a unit interval is <= 10
    # training sequences: frames of epoch 1 (>= 120) over a mean length of 11..12
    assert report["sequences_total"] == pytest.approx(120 / 11.5, abs=3)
    assert report["sequences_to_criterion"] == report["sequences_to_best"] == report["sequences_total"]

    # sophia-eval's outputs (the serving step, 256 streams) == the net stepped alone
    eval_report, outputs, targets = reproduce.evaluate_split(tmp_path / "ws", tmp_path / "data")
    assert (tmp_path / "eval" / "report.json").exists() and eval_report["methods"] == ["model"]
    net, _ = load_net(tmp_path / "ws")
    f_step, v_states = net.compile_infer(window_size=1, mode="FAST_COMPILE")
    data = reproduce.Dataset.open(tmp_path / "data", "test")
    for i in (0, len(data) - 1):
        net.reset_states(v_states, batch_size=1)
        steps = [f_step(np.asarray(data.input(i))[t:t + 1, None], np.full((1, 1), t, np.float32),
                        np.zeros((1, 1), np.int32))[0, 0] for t in range(data.sequences[i].length)]
        np.testing.assert_allclose(outputs[i], np.array(steps), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(targets[i], data.target(i))
    last = reproduce.last_frames(outputs)[:, 0]
    assert report["wrong"] == reproduce.count_wrong(last, reproduce.last_frames(targets)[:, 0])
    error_n = last - reproduce.last_frames(targets)[:, 0]
    assert report["largest_errors"][0]["error"] == pytest.approx(error_n[np.argmax(np.abs(error_n))], abs=1e-5)
    assert len(report["largest_errors"][0]["marked_frames"]) == 2 and "largest test errors: " in out


def test_tiny_real_run_is_scored_by_sophia_eval(tmp_path, capsys, monkeypatch):
    """The real task: data with whole dev/test sequences, training, then sophia-eval's
    model and baselines (ARIMA and ETS through statsmodels) on the same frames."""
    pytest.importorskip("statsmodels.datasets", reason="the real series ship with statsmodels")
    from sophia.evaluation import classical
    monkeypatch.setattr(classical, "ARIMA_CANDIDATES", ((1, 0, 0),))
    monkeypatch.setattr(classical, "ETS_CANDIDATES", ((False, False, None),))
    report = reproduce.main(["real", "--series", "elnino", "--max_epochs", "1", "--work", str(tmp_path),
                             "--set", "net_width=4", "--set", "frames_per_epoch=200",
                             "--set", "compile_mode=FAST_COMPILE"])
    assert list(report["rmse"]) == ["model", "mean", "persistence", "seasonal", "ar", "ets", "arima"]
    eval_report = json.loads((tmp_path / "eval" / "report.json").read_text())
    (test_sequence,) = eval_report["sequences"]                       # --whole-eval
    assert report["scored"] == test_sequence["length"] - 12          # warmup = one season
    assert eval_report["warmup"] == 12 and eval_report["season"] == 12
    std = float(np.fromfile(tmp_path / "data" / "std.matrix", "<f4")[0])
    for method, rmse in report["rmse"].items():
        assert rmse == eval_report["overall"][method]["rmse"]
        assert report["rmse_series_units"][method] == pytest.approx(std * rmse)
    assert 0 <= report["coverage"] <= 1 and 0 <= report["coverage_tracked"] <= 1
    assert report["chosen"]["arima"][0]["chosen"]["order"] == [1, 0, 0]
    out = capsys.readouterr().out
    assert "real (elnino, level), test RMSE in the series' units over" in out and "arima" in out


def test_a_net_trained_on_elnino_beats_persistence(tmp_path):
    """End to end on a small real series: the configured net, briefly trained, predicts
    next month's sea temperature better than persistence on the test split."""
    pytest.importorskip("statsmodels.datasets", reason="the real series ship with statsmodels")
    report = reproduce.main(["real", "--series", "elnino", "--baselines", "persistence",
                             "--max_epochs", "6", "--work", str(tmp_path), "--seed", "1"])
    assert report["rmse"]["model"] < 0.9 * report["rmse"]["persistence"]


def test_temporal_order_with_xent_takes_its_config_and_its_own_work_directory(tmp_path):
    parser = reproduce.build_parser()
    args = reproduce.resolve(parser.parse_args(["temporal_order", "--variant", "6b", "--loss", "xent",
                                                "--stop_at_criterion", "--work", str(tmp_path)]))
    assert (args.loss, args.criterion_on, args.criterion) == ("xent", "dev_loss", 0.01)
    for variant, classes in (("6a", 4), ("6b", 8)):
        xent = reproduce.cli.read_config(_PATH.parents[1] / "configs" / f"temporal_order_{variant}_xent.toml")
        l2 = reproduce.cli.read_config(_PATH.parents[1] / "configs" / f"temporal_order_{variant}.toml")
        assert xent.pop("loss_type") == "xent" and xent == l2 and xent["target_dim"] == classes
    default = reproduce.resolve(parser.parse_args(["temporal_order", "--variant", "6b"]))
    assert default.work.name == "temporal_order-6b" and default.loss == "l2"
    assert reproduce.resolve(parser.parse_args(["temporal_order", "--loss", "xent"])).work.name \
        == "temporal_order-6a-xent"
    with pytest.raises(SystemExit):
        parser.parse_args(["temporal_order", "--loss", "l1"])


def test_tiny_arithmetic_run_end_to_end(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--train, --dev and --test do not apply"):
        reproduce.main(["arithmetic", "--train", "100", "--work", str(tmp_path)])
    report = reproduce.main(["arithmetic", "--max_epochs", "1", "--work", str(tmp_path),
                             "--set", "net_width=8", "--set", "net_depth=1", "--set", "frames_per_epoch=200",
                             "--set", "compile_mode=FAST_COMPILE"])
    assert report["test"] == 400 and 0 <= report["exact_match"] <= 1
    # greedy decoding through the serving step scores what the teacher-forced pass scores
    assert report["greedy_exact_match"] == pytest.approx(report["exact_match"])
    test = reproduce.split_expressions(tmp_path / "data", "test")
    train = reproduce.split_expressions(tmp_path / "data", "train")
    assert len(test) == 400 and len(train) == 3200 and not set(test) & set(train)
    values = [reproduce.arithmetic.value(e) for e in train]
    most = [v for v in set(values) if values.count(v) == max(map(values.count, set(values)))]
    assert report["majority_answer_exact_match"] in [
        pytest.approx(np.mean([reproduce.arithmetic.value(e) == v for e in test])) for v in most]
    assert "arithmetic: exact match on 400 held-out expressions" in capsys.readouterr().out


@pytest.mark.slow      # two arithmetic trainings (~40 s); tests/test_eval_ensemble.py covers the rule
def test_an_arithmetic_ensemble_decodes_greedily_what_its_mean_probability_scores(tmp_path, capsys):
    """Two seeds on one dataset: the greedy answers of sophia-generate's ensemble step
    (the mean of the members' probabilities fed back) score what sophia-eval's
    ensemble scores teacher-forced, and each member is scored alone beside it."""
    report = reproduce.main(["arithmetic", "--max_epochs", "8", "--members", "2", "--reads", "1",
                             "--work", str(tmp_path), "--set", "net_width=32", "--set", "net_depth=1",
                             "--set", "frames_per_epoch=20000", "--set", "step_size=16",
                             "--set", "window_size=32", "--set", "compile_mode=FAST_COMPILE"])
    assert report["exact_match"] > 0            # some answers right, so the two can differ
    assert report["greedy_exact_match"] == pytest.approx(report["exact_match"])
    assert [m["seed"] for m in report["members"]] == [0, 1]
    assert all(0 <= m["exact_match"] <= 1 for m in report["members"])
    assert (tmp_path / "ws_seed1" / "params.npz").exists()
    assert "ensemble of 2 (seeds 0, 1)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--members must be >= 1"):
        reproduce.main(["arithmetic", "--members", "0", "--work", str(tmp_path)])
