"""Categorical outputs end to end: target checks, epoch records, a tiny xent run that
learns, served and offline probabilities, and old workspaces that mean identity outputs."""
import io
import json
import re

import numpy as np
import pytest

from sophia.data.dataset import Dataset, DatasetError, check_targets
from sophia.data.writer import DatasetWriter
from sophia.options import ModelOptions, OptionError, TrainOptions, with_output_activation
from sophia.serving.model import load_model
from sophia.training.metrics import format_epoch_line
from sophia.training.baselines import categorical_baseline
from sophia.training.trainer import Trainer
from sophia.workspace import Workspace, load_model_options, load_net

PRIOR = np.array([0.6, 0.25, 0.15])
TINY = dict(batch_size=4, window_size=8, step_size=4, compile_mode="FAST_COMPILE", lr_init_val=0.05)


def previous_symbol_data(root, seed=0, counts=(("train", 24), ("dev", 8), ("test", 1))):
    """One-hot symbols drawn from PRIOR (and a constant input), 20-28 frames; the target
    of frame t is the symbol of frame t-1 (frame 0 has none): majority accuracy ~0.6, a
    net with memory gets ~1."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for split, n in counts:
            for i in range(n):
                length = int(rng.integers(20, 29))
                symbols = rng.choice(3, length, p=PRIOR)
                target_tk = np.full((length, 3), np.nan)
                target_tk[1:] = np.eye(3)[symbols[:-1]]
                input_tj = np.concatenate([np.eye(3)[symbols], np.ones((length, 1))], axis=1)
                writer.add(split, f"{split}{i}", input_tj, target_tk)
    return str(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return previous_symbol_data(tmp_path_factory.mktemp("data") / "prev")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A tiny LSTM trained with xent for a few epochs; returns (workspace, trainer, log)."""
    ws, out = str(tmp_path_factory.mktemp("ws") / "xent"), io.StringIO()
    trainer = Trainer(ModelOptions(net_width=8, net_depth=1),
                      TrainOptions(loss_type="xent", frames_per_epoch=1500, max_epochs=4, **TINY),
                      data, ws, out=out)
    result = trainer.run()
    return ws, trainer, out.getvalue(), result


def test_a_tiny_xent_run_learns_far_above_the_majority_class(trained):
    ws, trainer, log, result = trained
    records = Workspace(ws, create=False).read_metrics()
    last = records[-1]
    assert {"train_accuracy", "dev_accuracy", "baseline_accuracy", "baseline"} <= set(last)
    assert "dev_accuracy" in records[0] and "train_accuracy" not in records[0]   # epoch 0: no training
    assert last["baseline_accuracy"] == pytest.approx(0.6, abs=0.1)
    assert max(r["dev_accuracy"] for r in records) > last["baseline_accuracy"] + 0.25
    assert result.best_dev_loss < 0.5 * result.baseline
    assert "accuracy train" in log and "(majority" in log
    assert load_model_options(Workspace(ws, create=False)).output_activation == "softmax"


def test_the_baseline_is_the_entropy_of_the_training_prior(data):
    train, dev = Dataset.open(data, "train"), Dataset.open(data, "dev")
    t = np.concatenate([train.target(i) for i in range(len(train))]).astype(float)
    prior = np.nanmean(t, axis=0)
    entropy, majority = categorical_baseline(train, dev, "xent")
    assert entropy == pytest.approx(-(prior * np.log(prior)).sum())
    d = np.concatenate([dev.target(i) for i in range(len(dev))])
    d = d[~np.isnan(d).all(axis=1)]
    assert majority == pytest.approx(np.mean(d.argmax(axis=1) == prior.argmax()))
    q = np.nanmean(t, axis=0)
    bce_entropy, bce_majority = categorical_baseline(train, dev, "bce")
    assert bce_entropy == pytest.approx(-(q * np.log(q) + (1 - q) * np.log(1 - q)).sum())
    assert bce_majority == pytest.approx(np.mean(d == (q >= 0.5)))


def test_served_and_offline_outputs_are_probabilities_equal_to_f_infer(trained):
    ws = trained[0]
    net, _ = load_net(ws)
    f_infer, v_states = net.compile_infer(window_size=1, mode="FAST_COMPILE")
    net.reset_states(v_states, batch_size=2)
    model = load_model(ws, mode="FAST_COMPILE")
    session = model.new_session([0, 0])
    rng = np.random.default_rng(3)
    for t in range(5):
        input_bj = np.eye(4, dtype=np.float32)[rng.integers(0, 3, 2)]
        input_bj[:, 3] = 1.0
        served_bk = session.step(input_bj)
        offline_bk = f_infer(input_bj[None], np.full((1, 2), t, np.float32), np.zeros((1, 2), np.int32))[0]
        np.testing.assert_allclose(served_bk, offline_bk, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(served_bk.sum(axis=1), 1.0, rtol=1e-6)
        assert np.all(served_bk >= 0)


def test_format_epoch_line_shows_accuracies_only_when_present():
    line = format_epoch_line({"epoch": 1, "train_loss": 0.5, "dev_loss": 0.4, "baseline": 0.9,
                              "train_accuracy": 0.8, "dev_accuracy": 0.85, "baseline_accuracy": 0.6})
    assert line == ("epoch 1  train 0.5  dev 0.4  (baseline 0.9)  accuracy train 0.8 dev 0.85 "
                    "(majority 0.6)")
    assert "accuracy" not in format_epoch_line({"epoch": 1, "train_loss": 0.5, "dev_loss": 0.4})


def bad_data(root, target_tk, loss_type):
    """A dataset whose dev sequence 'bad' has ``target_tk`` (3 frames, k = 3)."""
    good = np.eye(3)[[0, 1, 2]] if loss_type == "xent" else np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1.0]])
    with DatasetWriter(root) as writer:
        writer.add("train", "good", np.zeros((3, 2)), good)
        writer.add("dev", "bad", np.zeros((3, 2)), target_tk)
        writer.add("test", "other", np.zeros((3, 2)), good)
    return str(root)


NAN = np.nan
BAD = {
    "xent not one-hot": ("xent", [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1]], 1),
    "xent two ones": ("xent", [[1, 0, 0], [0, 1, 0], [1, 0, 1]], 2),
    "xent all zero": ("xent", [[0, 0, 0], [0, 1, 0], [0, 0, 1]], 0),
    "xent partly NaN": ("xent", [[1, 0, 0], [NAN, 1, 0], [0, 0, 1]], 1),
    "bce not binary": ("bce", [[1, 0, 0], [0, 1, 0], [0, 0.3, NAN]], 2),
    "bce two": ("bce", [[2, 0, 0], [0, 1, 0], [0, 0, 1]], 0),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_targets_raise_naming_file_and_frame_when_the_trainer_opens_the_data(case, tmp_path):
    loss_type, target, frame = BAD[case]
    root = bad_data(tmp_path / "data", np.array(target, float), loss_type)
    with pytest.raises(DatasetError) as error:
        Trainer(ModelOptions(input_dim=2, target_dim=3, net_width=2, net_depth=1, unit_type="fc"),
                TrainOptions(loss_type=loss_type, **TINY), root, str(tmp_path / "ws"), out=io.StringIO())
    message = str(error.value)
    assert f"{root}/bad.target" in message and f"target frame {frame}" in message, message
    assert not (tmp_path / "ws").exists()                       # raised before anything was written
    check_targets(Dataset.open(root, "dev", 2, 3), "l2")              # regression losses take any target


def test_nan_frames_and_elements_are_allowed(tmp_path):
    root = bad_data(tmp_path / "xent", np.array([[NAN] * 3, [0, 1, 0], [NAN] * 3]), "xent")
    check_targets(Dataset.open(root, "dev", 2, 3), "xent")
    root = bad_data(tmp_path / "bce", np.array([[NAN, 1, 0], [0, 1, 0], [NAN] * 3]), "bce")
    check_targets(Dataset.open(root, "dev", 2, 3), "bce")


def test_output_activation_follows_the_loss_and_old_workspaces_mean_identity(trained, tmp_path):
    assert with_output_activation(ModelOptions(), "bce").output_activation == "sigmoid"
    assert with_output_activation(ModelOptions(), "huber").output_activation == "identity"
    with pytest.raises(OptionError, match="does not fit loss_type"):
        with_output_activation(ModelOptions(output_activation="softmax"), "l2")
    ws = Workspace(tmp_path / "old")
    saved = json.loads((Workspace(trained[0], create=False).file("options", ".json")).read_text())
    del saved["model"]["output_activation"]                     # a workspace from before 0.2.0
    ws.save_json("options", saved)
    assert load_model_options(ws).output_activation == "identity"


def test_sophia_data_check_with_a_loss_type_names_the_bad_target_frame(tmp_path, capsys):
    from sophia.data.cli import main
    loss_type, target, frame = BAD["xent not one-hot"]
    root = bad_data(tmp_path / "data", np.array(target, float), loss_type)
    assert main(["check", root, "--input_dim", "2", "--target_dim", "3"]) == 0
    capsys.readouterr()
    assert main(["check", root, "--input_dim", "2", "--target_dim", "3", "--loss_type", "xent"]) == 1
    err = capsys.readouterr().err
    assert f"{root}/bad.target" in err and f"target frame {frame}" in err, err


# -- label smoothing -----------------------------------------------------------------------
def test_a_smoothed_step_descends_the_smoothed_targets_and_reports_the_plain_loss():
    """One SGD step with label_smoothing ε moves the weights as a plain xent step on the
    targets (1 − ε)·one-hot + ε/k does; the loss it reports is the plain cross-entropy."""
    from graph_support import make_net, make_window

    epsilon, lr, k = 0.3, np.float32(0.5), 2
    rng = np.random.default_rng(4)
    x, time, ids, _ = make_window(make_net("float32"), frames=5, batch=2)
    one_hot = np.eye(k, dtype="float32")[rng.integers(0, k, (5, 2))]
    one_hot[:2] = np.nan                                            # frames without a target
    smoothed = (1 - epsilon) * one_hot + epsilon / k
    window = dict(batch_size=2, window_size=5, step_size=5, compile_mode="FAST_COMPILE",
                  loss_type="xent", force_type="vanilla", update_type="sgd")
    results = {}
    for name, eps, target in [("smoothing", epsilon, one_hot), ("by hand", 0.0, smoothed),
                              ("plain", 0.0, one_hot)]:
        net = make_net("float32", output_activation="softmax")
        f_train_step, _, _ = net.compile_train_step(TrainOptions(label_smoothing=eps, **window))
        loss_sum = f_train_step(x, time, ids, target, lr)[0]
        results[name] = loss_sum, {p: v.get_value() for p, v in net.v_params.items()}
    for p, value in results["smoothing"][1].items():
        np.testing.assert_allclose(value, results["by hand"][1][p], rtol=1e-5, atol=1e-6, err_msg=p)
    assert results["smoothing"][0] == pytest.approx(results["plain"][0], rel=1e-6)
    assert not np.allclose(results["smoothing"][1]["output.W"], results["plain"][1]["output.W"])


@pytest.mark.parametrize("overrides, message", [
    (dict(loss_type="l2", label_smoothing=0.1),
     "label_smoothing (0.1) smooths one-hot targets and needs loss_type xent; got 'l2'"),
    (dict(loss_type="xent", label_smoothing=1.0), "option 'label_smoothing' must be >= 0.0 and < 1.0; got 1.0"),
    (dict(loss_type="xent", label_smoothing=-0.1), "option 'label_smoothing' must be >= 0.0 and < 1.0; got -0.1"),
])
def test_label_smoothing_outside_xent_or_its_range_is_an_error(overrides, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        TrainOptions(**overrides).validate()
