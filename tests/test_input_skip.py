"""``input_skip``: the linear path from input frames to outputs, its least-squares start
(sophia/training/linear_start.py), its gradient, served == offline, and the options
it refuses."""
import io
import os

import numpy as np
import pytest

from fake_models import running_server
from model_workspaces import INPUT_DIM, TARGET_DIM, OfflineModel, counter_times, write_workspace
from tests.graph_support import compile_cost, make_net, make_window
from tests.test_graph_gradients import directional_check
from sophia.data.dataset import Dataset
from sophia.data.writer import DatasetWriter
from sophia.graph.net import Net
from sophia.options import ModelOptions, OptionError, TrainOptions
from sophia.serving.client import SophiaClient
from sophia.serving.model import load_model
from sophia.training.linear_start import least_squares, start_linear
from sophia.training.trainer import Trainer
from sophia.workspace import Workspace

LEVELS = (0.1, 0.5, 0.9)
W_JK = np.array([[0.8, -0.5], [0.3, 0.0], [-1.2, 0.7]])
B_K = np.array([0.4, -1.0])


def linear_data(root, seed=0):
    """Input [T][3] ~ N(0, 1); target = x W + b + noise (std 0.1 and 0.3) with a squared
    term the linear fit cannot hold, NaN in element 1 on every 5th frame."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for split, n in (("train", 12), ("dev", 4), ("test", 2)):
            for i in range(n):
                x_tj = rng.normal(size=(int(rng.integers(20, 41)), 3))
                target_tk = x_tj @ W_JK + B_K + rng.normal(size=(len(x_tj), 2)) * [0.1, 0.3]
                target_tk[:, 0] += 0.2 * x_tj[:, 0] ** 2
                target_tk[::5, 1] = np.nan
                writer.add(split, f"{split}{i}", x_tj, target_tk)
    return str(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return linear_data(tmp_path_factory.mktemp("linear") / "data")


def numpy_fit(dataset, e):
    """np.linalg.lstsq of target element e on [input, 1] over its non-NaN frames."""
    x = np.concatenate([np.asarray(dataset.input(i), float) for i in range(len(dataset))])
    y = np.concatenate([np.asarray(dataset.target(i), float)[:, e] for i in range(len(dataset))])
    seen = ~np.isnan(y)
    design = np.concatenate([x[seen], np.ones((seen.sum(), 1))], axis=1)
    coef = np.linalg.lstsq(design, y[seen], rcond=None)[0]
    return coef[:-1], coef[-1], y[seen] - design @ coef


def infer(net, dataset):
    """f_infer's outputs over each sequence, from the initial state, concatenated [N][C·k]."""
    outputs = []
    for i in range(len(dataset)):
        x_tj = np.asarray(dataset.input(i), net.dtype)
        f_infer, v_states = net.compile_infer(window_size=len(x_tj), mode="FAST_COMPILE")
        net.reset_states(v_states, batch_size=1)
        outputs.append(f_infer(x_tj[:, None], np.arange(len(x_tj), dtype=net.dtype)[:, None],
                               np.zeros((len(x_tj), 1), np.int32))[:, 0])
    return np.concatenate(outputs)


def test_least_squares_matches_numpy_per_element_over_its_own_frames(data):
    train = Dataset.open(data, "train")
    w_jk, b_k, residuals = least_squares([(train.input(i), train.target(i)) for i in range(len(train))])
    for e in range(2):
        w_j, b, residual = numpy_fit(train, e)
        np.testing.assert_allclose(w_jk[:, e], w_j, rtol=1e-6, atol=1e-8)
        assert b_k[e] == pytest.approx(b, abs=1e-8)
        np.testing.assert_allclose(residuals[e], residual, atol=1e-7)
    assert len(residuals[1]) < len(residuals[0])                       # its NaN frames left out
    np.testing.assert_allclose(w_jk[:, 1], W_JK[:, 1], atol=0.1)        # and near the truth


def test_an_element_without_values_gets_zeros():
    x = np.random.default_rng(0).normal(size=(10, 2))
    target = np.stack([x[:, 0] * 2, np.full(10, np.nan)], axis=1)
    w_jk, b_k, residuals = least_squares([(x, target)])
    np.testing.assert_allclose(w_jk[:, 0], [2, 0], atol=1e-7)
    assert not w_jk[:, 1].any() and b_k[1] == 0 and len(residuals[1]) == 0


@pytest.mark.parametrize("activation", ["identity", "gaussian", "quantile"])
def test_a_linear_start_outputs_the_least_squares_fit_in_every_layout(data, activation):
    """Mean (or the value, or level 0 less its residual quantile) = the fit; the
    gaussian variance = the residuals' mean square; each quantile level = the fit plus
    the residuals' quantile at that level."""
    train = Dataset.open(data, "train")
    net = Net(ModelOptions(input_dim=3, target_dim=2, net_width=4, net_depth=1, input_skip=True,
                           output_activation=activation, quantiles=LEVELS), seed=1)
    start_linear(net, train)
    out_nK = infer(net, train)
    x = np.concatenate([np.asarray(train.input(i), float) for i in range(len(train))])
    for e in range(2):
        w_j, b, residual = numpy_fit(train, e)
        fit_n = x @ w_j + b
        if activation == "quantile":
            for c, level in enumerate(LEVELS):
                np.testing.assert_allclose(out_nK[:, c * 2 + e], fit_n + np.quantile(residual, level),
                                           atol=2e-5)
        else:
            np.testing.assert_allclose(out_nK[:, e], fit_n, atol=2e-5)
        if activation == "gaussian":
            np.testing.assert_allclose(out_nK[:, 2 + e], np.log(np.mean(residual ** 2)), atol=2e-5)


def test_a_linear_start_also_zeroes_a_weight_normed_output_layer(data):
    net = Net(ModelOptions(input_dim=3, target_dim=2, net_width=4, net_depth=1, input_skip=True,
                           weight_norm=True), seed=1)
    start_linear(net, Dataset.open(data, "train"))
    assert not net.get_values()["output.W_g"].any()
    with pytest.raises(ValueError, match="needs a net with input_skip"):
        start_linear(Net(ModelOptions(input_dim=3, target_dim=2, net_width=4)), Dataset.open(data, "train"))


@pytest.mark.parametrize("unit_type, loss_type", [("lstm", "l2"), ("gru", "gaussian"), ("fc", "gaussian")])
def test_gradients_through_the_skip_match_finite_differences(unit_type, loss_type):
    activation = "gaussian" if loss_type == "gaussian" else "identity"
    net = make_net(unit_type=unit_type, input_skip=True, output_activation=activation)
    window = make_window(net, frames=5, batch=3, nan_fraction=0.2)
    directional_check(net, compile_cost(net, window=5, step=4, loss_type=loss_type, batch=3), window)


def test_a_new_run_starts_at_the_fit_and_is_scored_there_at_epoch_0(data, tmp_path):
    ws = tmp_path / "ws"
    out = io.StringIO()
    trainer = Trainer(ModelOptions(net_width=4, net_depth=1, input_skip=True),
                      TrainOptions(batch_size=4, window_size=48, step_size=48, frames_per_epoch=400,
                                   max_epochs=1, compile_mode="FAST_COMPILE"), data, str(ws), out=out)
    trainer.run()
    dev = Dataset.open(data, "dev")
    start = Net(trainer.model_options, seed=5)      # any seed: the output layer's weights are 0
    start_linear(start, Dataset.open(data, "train"))
    error = infer(start, dev) - np.concatenate([np.asarray(dev.target(i)) for i in range(len(dev))])
    per_frame = np.nansum(error ** 2, axis=1)[~np.isnan(error).all(axis=1)]
    first = Workspace(ws, create=False).read_metrics()[0]
    assert first["epoch"] == 0
    assert first["dev_loss"] == pytest.approx(per_frame.mean(), rel=1e-4)
    assert "input_skip: starts at the least-squares fit" in out.getvalue()


def test_served_output_equals_offline_inference(short_module_dir):
    models = os.path.join(short_module_dir, "models")
    write_workspace(os.path.join(models, "skip"), seed=2, input_skip=True, output_activation="gaussian")
    assert np.abs(Workspace(os.path.join(models, "skip"), create=False)
                  .load_arrays("params")["input_skip"]).max() > 0.1
    frames = np.random.default_rng(3).normal(size=(10, 1, 2, INPUT_DIM)).astype(np.float32)
    with running_server(f"ipc://{short_module_dir}/skip.sock", models, loader=load_model) as server:
        with SophiaClient(server.endpoint, ["skip"], 2, [[0, 0]], timeout=30) as client:
            got = np.stack([client.step(frames[t]) for t in range(10)])
    expected = OfflineModel(os.path.join(models, "skip")).infer(frames[:, 0], counter_times(10, 2), [0, 0])
    assert got.shape == (10, 1, 2, 2 * TARGET_DIM)
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    (dict(vocab_size=5, input_dim=1), "input_skip is a linear map of real-vector input frames"),
    (dict(output_activation="softmax"), "softmax outputs .* class probabilities"),
    (dict(output_activation="sigmoid"), "sigmoid outputs"),
])
def test_options_it_does_not_fit_are_refused(overrides, message):
    with pytest.raises(OptionError, match=message):
        ModelOptions(**{"input_dim": 3, "target_dim": 2, "input_skip": True, **overrides}).validate()
