"""Probabilistic outputs: the gaussian and quantile losses, their gradients, the
non-crossing quantile layout, served == offline, the baselines, sophia-eval's
metrics, and a tiny gaussian run that learns a heteroscedastic task."""
import io
import json
import math
import os

import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest
from pytensor.gradient import verify_grad

from fake_models import running_server
from tests.graph_support import compile_cost, make_net, make_window
from tests.test_graph_gradients import directional_check
from model_workspaces import INPUT_DIM, TARGET_DIM, OfflineModel, counter_times, write_workspace
from sophia.data.dataset import Dataset
from sophia.data.writer import DatasetWriter
from sophia.evaluation.evaluate import evaluate, format_table
from sophia.evaluation.inference import run_model
from sophia.evaluation.probabilistic import Z_80, central_interval, probabilistic_metrics
from sophia.graph import output_layout
from sophia.graph.net import Net
from sophia.optim.losses import masked_loss
from sophia.options import (ModelOptions, OptionError, TrainOptions, apply_overrides, from_dict,
                            split_overrides, to_dict, with_output_activation)
from sophia.serving.client import SophiaClient
from sophia.serving.ensemble import Ensemble, EnsembleError
from sophia.serving.model import load_model
from sophia.training.cli import parse_sets, read_config
from sophia.training.baselines import gaussian_baseline, quantile_baseline
from sophia.training.trainer import Trainer
from sophia.workspace import Workspace, load_model_options

LEVELS = (0.1, 0.5, 0.9)
NAN = np.nan


def gaussian_nll_np(out_tbK, target_tbk):
    k = target_tbk.shape[-1]
    mean, logvar = out_tbK[..., :k], out_tbK[..., k:]
    nll = 0.5 * (np.log(2 * np.pi) + logvar + (target_tbk - mean) ** 2 * np.exp(-logvar))
    return np.nansum(np.where(np.isnan(target_tbk), NAN, nll))


def pinball_np(out_tbK, target_tbk, levels):
    k = target_tbk.shape[-1]
    total = np.zeros_like(target_tbk)
    for c, tau in enumerate(levels):
        u = target_tbk - out_tbK[..., c * k:(c + 1) * k]
        total += np.maximum(tau * u, (tau - 1) * u)
    return np.nansum(total / len(levels))


def frames_with_targets(target_tbk):
    return int((~np.isnan(target_tbk)).any(axis=-1).sum())


# -- options ----------------------------------------------------------------------

def test_quantiles_parse_from_set_and_toml_lists_and_round_trip(tmp_path):
    model, train = split_overrides(parse_sets(["quantiles=0.05, 0.5,0.95", "loss_type=quantile"]))
    assert apply_overrides(ModelOptions(), model).quantiles == (0.05, 0.5, 0.95)
    (tmp_path / "q.toml").write_text('loss_type = "quantile"\nquantiles = [0.25, 0.75]\n')
    model, _ = split_overrides(read_config(tmp_path / "q.toml"))
    options = apply_overrides(ModelOptions(), model)
    assert options.quantiles == (0.25, 0.75)
    assert from_dict(ModelOptions, json.loads(json.dumps(to_dict(options)))) == options
    assert ModelOptions().quantiles == LEVELS
    assert apply_overrides(TrainOptions(), train).loss_type == "quantile"


@pytest.mark.parametrize("value, message", [
    ("", "at least one level"), ([], "at least one level"),
    ("0.5,0.1", "sorted and distinct"), ([0.1, 0.1], "sorted and distinct"),
    ("0,0.5", r"strictly inside \(0, 1\)"), ([0.5, 1.0], r"strictly inside \(0, 1\)"),
    ("0.1,x", "expects a list of numbers"), ([True, 0.5], "expects a list of numbers"),
    ("nan", "expects a list of numbers"), (0.5, "expects a list of numbers"),
])
def test_bad_quantiles_are_a_clear_option_error(value, message):
    with pytest.raises(OptionError, match=message) as error:
        apply_overrides(ModelOptions(), {"quantiles": value})
    assert "'quantiles'" in str(error.value)


def test_the_loss_sets_the_layout_and_quantiles_need_the_quantile_loss():
    assert with_output_activation(ModelOptions(), "gaussian").output_activation == "gaussian"
    assert with_output_activation(ModelOptions(quantiles=(0.2, 0.8)), "quantile").quantiles == (0.2, 0.8)
    with pytest.raises(OptionError, match="quantiles only apply to loss_type 'quantile'"):
        with_output_activation(ModelOptions(quantiles=(0.2, 0.8)), "gaussian")
    with pytest.raises(OptionError, match="does not fit loss_type"):
        with_output_activation(ModelOptions(output_activation="gaussian"), "quantile")
    with pytest.raises(OptionError, match="hessian_free"):
        apply_overrides(TrainOptions(), {"update_type": "hessian_free", "loss_type": "gaussian",
                                         "step_size": 64})


# -- losses -----------------------------------------------------------------------

def loss_function(loss_type, levels=LEVELS):
    y, t = tt.tensor3(dtype="float64"), tt.tensor3(dtype="float64")
    return th.function([y, t], masked_loss(y, t, loss_type, quantiles=levels), mode="FAST_COMPILE")


def random_case(channels, seed=0, k=2):
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(4, 3, k))
    target[0, 1] = NAN                        # a frame without targets
    target[2, 0, 1] = NAN                     # one element missing
    return rng.normal(size=(4, 3, channels * k)), target


def test_gaussian_nll_equals_numpy_with_nan_masked():
    out, target = random_case(2)
    total, frames = loss_function("gaussian")(out, target)
    assert float(total) == pytest.approx(gaussian_nll_np(out, target), rel=1e-12)
    assert frames == frames_with_targets(target) == 11
    # the constant is there: a standard normal at its mean scores ½ log 2π
    one, _ = loss_function("gaussian")(np.zeros((1, 1, 2)), np.zeros((1, 1, 1)))
    assert float(one) == pytest.approx(0.5 * math.log(2 * math.pi))


def test_pinball_equals_numpy_with_nan_masked():
    out, target = random_case(3, seed=1)
    total, frames = loss_function("quantile")(out, target)
    assert float(total) == pytest.approx(pinball_np(out, target, LEVELS), rel=1e-12)
    assert frames == 11
    half, _ = loss_function("quantile", (0.5,))(np.zeros((1, 1, 1)), np.full((1, 1, 1), -3.0))
    assert float(half) == pytest.approx(1.5)                  # half the absolute error


@pytest.mark.parametrize("loss_type, channels", [("gaussian", 2), ("quantile", 3)])
def test_loss_gradients_match_finite_differences(loss_type, channels):
    """Through the loss and, for quantile, the non-crossing activation; NaN targets masked."""
    out, target = random_case(channels, seed=2)
    options = ModelOptions(target_dim=2, output_activation=loss_type, quantiles=LEVELS)
    rng = np.random.default_rng(3)

    def cost(s_z):
        s_out = output_layout.activate(s_z, options) if loss_type == "quantile" else s_z
        return masked_loss(s_out, tt.constant(target), loss_type, quantiles=LEVELS)[0]

    # keep every target off a kink of the pinball loss by at least the FD step
    verify_grad(cost, [out + 0.01], rng=rng, eps=1e-7, abs_tol=1e-6, rel_tol=1e-6,
                mode="FAST_COMPILE")


@pytest.mark.parametrize("unit_type", ["fc", "lstm"])
@pytest.mark.parametrize("loss_type", ["gaussian", "quantile"])
def test_net_gradients_match_finite_differences(loss_type, unit_type):
    """Through a small net, its wider output layer, the activation and the loss (float64)."""
    net = make_net(unit_type=unit_type, output_activation=loss_type)
    window = make_window(net, frames=4, batch=3, nan_fraction=0.3)
    directional_check(net, compile_cost(net, window=4, step=3, loss_type=loss_type, batch=3), window)


# -- layout -----------------------------------------------------------------------

def test_layout_widths_names_and_point_channel():
    g = ModelOptions(target_dim=3, output_activation="gaussian")
    q = ModelOptions(target_dim=3, output_activation="quantile", quantiles=(0.05, 0.3, 0.6, 0.95))
    assert (output_layout.num_channels(g), output_layout.channel_names(g)) == (2, ["mean", "log_variance"])
    assert output_layout.num_channels(q) == 4 and output_layout.point_channel(q) == 2   # 0.6
    assert output_layout.num_channels(ModelOptions(target_dim=3)) == 1
    assert Net(ModelOptions(input_dim=1, target_dim=3, net_width=2, net_depth=1,
                            output_activation="quantile", quantiles=(0.05, 0.3, 0.6, 0.95))).output_width == 12


def test_served_quantiles_never_cross_even_with_adversarial_weights(tmp_path):
    """Huge weights, and an output bias that pushes the second level far below the first,
    served frame by frame through the serving step."""
    path = write_workspace(tmp_path / "adversarial", seed=5, unit_type="rnn", net_depth=1,
                           output_activation="quantile", quantiles=[0.05, 0.2, 0.5, 0.8, 0.95])
    rng = np.random.default_rng(0)
    ws = Workspace(path, create=False)
    values = {n: rng.normal(scale=40.0, size=v.shape).astype("float32")
              for n, v in ws.load_arrays("params").items()}
    bias = [n for n in values if n.startswith("output") and values[n].ndim == 1][0]
    values[bias][TARGET_DIM:2 * TARGET_DIM] = -1e4     # the second level's raw value
    ws.save_arrays("params", values)
    session = load_model(path, mode="FAST_COMPILE").new_session([0, 0, 0, 0])
    q_tbck = np.stack([session.step(rng.normal(scale=50.0, size=(4, INPUT_DIM)).astype("float32"))
                       for _ in range(30)]).reshape(30, 4, 5, TARGET_DIM)
    assert np.all(np.isfinite(q_tbck))
    assert np.all(np.diff(q_tbck, axis=2) >= 0)
    assert np.any(np.diff(q_tbck, axis=2) == 0)         # saturated softplus: equal, never crossed
    assert np.any(np.diff(q_tbck, axis=2) > 100)        # and the increments are live


# -- serving ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(short_module_dir):
    models = os.path.join(short_module_dir, "models")
    paths = {"gauss": write_workspace(os.path.join(models, "gauss"), seed=3, output_activation="gaussian"),
             "quant": write_workspace(os.path.join(models, "quant"), seed=4, unit_type="gru",
                                      output_activation="quantile", quantiles=[0.1, 0.5, 0.9])}
    return models, paths


@pytest.mark.parametrize("name, channels", [("gauss", 2), ("quant", 3)])
def test_served_output_equals_offline_inference_with_every_channel(served, short_module_dir,
                                                                    name, channels):
    models, paths = served
    frames = np.random.default_rng(7).normal(size=(12, 1, 2, INPUT_DIM)).astype(np.float32)
    with running_server(f"ipc://{short_module_dir}/{name}.sock", models, loader=load_model) as server:
        with SophiaClient(server.endpoint, [name], 2, [[0, 0]], timeout=30) as client:
            got = np.stack([client.step(frames[t]) for t in range(12)])
    assert got.shape == (12, 1, 2, TARGET_DIM * channels)
    expected = OfflineModel(paths[name]).infer(frames[:, 0], counter_times(12, 2), [0, 0])
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-5, rtol=0)
    if name == "quant":
        assert np.all(np.diff(got.reshape(12, 2, 3, TARGET_DIM), axis=2) >= 0)


def test_models_of_other_layouts_do_not_form_an_ensemble(served):
    _, paths = served
    gauss = load_model(paths["gauss"], mode="FAST_COMPILE")
    quant = load_model(paths["quant"], mode="FAST_COMPILE")
    assert (gauss.output_dim, quant.output_dim) == (2 * TARGET_DIM, 3 * TARGET_DIM)
    with pytest.raises(EnsembleError, match="differ in output layout"):
        Ensemble(["gauss", "quant"], [gauss, quant], [[0], [0]])


def test_an_old_workspace_without_the_layout_loads_with_one_channel(tmp_path):
    path = write_workspace(tmp_path / "old", seed=0)
    saved = json.loads((tmp_path / "old" / "options.json").read_text())
    for name in ("output_activation", "quantiles"):
        del saved["model"][name]
    Workspace(path, create=False).save_json("options", saved)
    options = load_model_options(Workspace(path, create=False))
    assert (options.output_activation, options.quantiles) == ("identity", LEVELS)
    model = load_model(path, mode="FAST_COMPILE")
    assert (model.channels, model.output_dim) == (1, TARGET_DIM)


# -- baselines and sophia-eval --------------------------------------------------------

def heteroscedastic(root, seed=0, counts=(("train", 40), ("dev", 8), ("test", 8))):
    """Input [x, n]: x ~ U(-1, 1), n ∈ {0, 1}; target x + σ_n ε with σ_0 = 0.1, σ_1 = 1.
    Sequences of 40-60 frames, every 7th target NaN. Returns the root."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for split, n in counts:
            for i in range(n):
                length = int(rng.integers(40, 61))
                x, noisy = rng.uniform(-1, 1, length), rng.integers(0, 2, length)
                sigma = np.where(noisy, 1.0, 0.1)
                target = (x + sigma * rng.normal(size=length))[:, None]
                target[::7] = NAN
                writer.add(split, f"{split}{i}", np.stack([x, noisy], axis=1), target)
    return str(root)


@pytest.fixture(scope="module")
def hetero_data(tmp_path_factory):
    return heteroscedastic(tmp_path_factory.mktemp("hetero") / "data")


def split_targets(root, split):
    ds = Dataset.open(root, split)
    return np.concatenate([np.asarray(ds.target(i), float) for i in range(len(ds))])


def test_gaussian_and_quantile_baselines_equal_numpy(hetero_data):
    train, dev = Dataset.open(hetero_data, "train"), Dataset.open(hetero_data, "dev")
    t, d = split_targets(hetero_data, "train"), split_targets(hetero_data, "dev")
    mean, var = np.nanmean(t), np.nanvar(t)
    d = d[~np.isnan(d)]
    expected = np.mean(0.5 * (np.log(2 * np.pi * var) + (d - mean) ** 2 / var))
    assert gaussian_baseline(train, dev) == pytest.approx(expected, rel=1e-9)
    q = np.nanquantile(t, LEVELS)
    u = d[:, None] - q[None]
    expected = np.mean(np.maximum(np.array(LEVELS) * u, (np.array(LEVELS) - 1) * u))
    assert quantile_baseline(train, dev, LEVELS) == pytest.approx(expected, rel=1e-9)


def test_probabilistic_metrics_by_hand():
    g = ModelOptions(target_dim=1, output_activation="gaussian")
    out = np.array([[0.0, 0.0], [1.0, math.log(4.0)], [0.0, 0.0]])        # μ, s per frame
    target = np.array([[1.0], [1.0 + 2 * Z_80 + 0.01], [NAN]])
    m = probabilistic_metrics(out, target, g)
    nll = [0.5 * (math.log(2 * math.pi) + 1.0), 0.5 * (math.log(2 * math.pi * 4) + (2 * Z_80 + 0.01) ** 2 / 4)]
    assert m["nll"] == pytest.approx(np.mean(nll)) and m["coverage"] == 0.5
    q = ModelOptions(target_dim=1, output_activation="quantile", quantiles=(0.25, 0.75))
    assert central_interval(q) == (0.25, 0.75)                 # no 0.1 and 0.9: the outermost levels
    m = probabilistic_metrics(np.array([[0.0, 2.0]]), np.array([[3.0]]), q)
    assert m["pinball"] == pytest.approx((0.25 * 3 + 0.75 * 1) / 2) and m["coverage"] == 0.0


@pytest.fixture(scope="module")
def gaussian_run(hetero_data, tmp_path_factory):
    ws = str(tmp_path_factory.mktemp("ws") / "gauss")
    trainer = Trainer(ModelOptions(unit_type="fc", net_width=16, net_depth=1),
                      TrainOptions(loss_type="gaussian", batch_size=8, window_size=10, step_size=10,
                                   frames_per_epoch=4000, max_epochs=6, lr_init_val=0.02,
                                   compile_mode="FAST_COMPILE"),
                      hetero_data, ws, out=io.StringIO())
    return ws, trainer.run()


def test_a_gaussian_model_learns_the_noise_level(gaussian_run, hetero_data):
    ws, result = gaussian_run
    assert load_model_options(Workspace(ws, create=False)).output_activation == "gaussian"
    assert result.best_dev_loss < result.baseline - 0.5             # nats per target frame
    model = load_model(ws, mode="FAST_COMPILE")
    test = Dataset.open(hetero_data, "test")
    outputs = np.concatenate(run_model(model, test, []))
    inputs = np.concatenate([np.asarray(test.input(i)) for i in range(len(test))])
    targets = np.concatenate([np.asarray(test.target(i)) for i in range(len(test))])[:, 0]
    sigma = np.exp(0.5 * outputs[:, 1])
    quiet, noisy = sigma[inputs[:, 1] == 0], sigma[inputs[:, 1] == 1]
    assert np.median(quiet) < 0.25 and 0.6 < np.median(noisy) < 1.5      # true: 0.1 and 1.0
    # far better than the same means with the best constant variance
    seen = ~np.isnan(targets)
    residual = targets[seen] - outputs[seen, 0]
    constant = np.mean(0.5 * (np.log(2 * np.pi * np.mean(residual ** 2)) + 1.0))
    model_nll = probabilistic_metrics(outputs, targets[:, None], model.net.options)["nll"]
    assert model_nll < constant - 0.4


def test_sophia_eval_reports_nll_and_coverage_and_plots_the_band(gaussian_run, hetero_data, tmp_path):
    ws, _ = gaussian_run
    out = tmp_path / "eval"
    report = evaluate(ws, hetero_data, "test", baselines=("mean", "persistence"), out=str(out),
                      plot=True, mode="FAST_COMPILE")
    assert report["output_activation"] == "gaussian" and report["channels"] == ["mean", "log_variance"]
    assert report["output_dim"] == 2 and report["interval"] == {"lower": 0.1, "upper": 0.9,
                                                             "track_step": 0.1}
    assert {"nll", "coverage", "coverage_tracked"} <= set(report["metrics"])
    model = report["overall"]["model"]
    assert 0.68 < model["coverage"] < 0.92                     # nominal 0.8
    assert 0.68 < model["coverage_tracked"] < 0.92
    assert model["rmse"] < report["overall"]["mean"]["rmse"]
    assert all("coverage" in s["metrics"]["model"] for s in report["sequences"])
    assert "nll" not in report["overall"]["mean"]
    first = report["sequences"][0]
    written = np.fromfile(out / first["output"], "<f4").reshape(first["length"], 2)   # every channel
    assert np.isfinite(written).all()
    assert (out / "predictions.png").stat().st_size > 0
    table = format_table(report)
    assert "NLL" in table and "cover[0.1,0.9]" in table and "tracked" in table


@pytest.fixture(scope="module")
def quantile_run(hetero_data, tmp_path_factory):
    ws = str(tmp_path_factory.mktemp("ws") / "quant")
    trainer = Trainer(ModelOptions(unit_type="fc", net_width=16, net_depth=1),
                      TrainOptions(loss_type="quantile", batch_size=8, window_size=10, step_size=10,
                                   frames_per_epoch=4000, max_epochs=6, lr_init_val=0.02,
                                   compile_mode="FAST_COMPILE"),
                      hetero_data, ws, out=io.StringIO())
    return ws, trainer.run()


def test_a_quantile_model_learns_and_sophia_eval_scores_its_interval(quantile_run, hetero_data):
    ws, result = quantile_run
    assert result.best_dev_loss < 0.7 * result.baseline
    report = evaluate(ws, hetero_data, "test", baselines=("mean",), mode="FAST_COMPILE")
    assert report["channels"] == ["q0.1", "q0.5", "q0.9"] and report["output_dim"] == 3
    model = report["overall"]["model"]
    assert 0.68 < model["coverage"] < 0.92                     # nominal 0.8
    # the report's figures are those of the outputs sophia-eval writes, by hand
    loaded = load_model(ws, mode="FAST_COMPILE")
    test = Dataset.open(hetero_data, "test")
    outputs = np.concatenate(run_model(loaded, test, []))
    targets = np.concatenate([np.asarray(test.target(i)) for i in range(len(test))])[:, 0]
    seen = ~np.isnan(targets)
    u = targets[seen, None] - outputs[seen]
    assert model["pinball"] == pytest.approx(np.mean(np.maximum(np.array(LEVELS) * u, (np.array(LEVELS) - 1) * u)))
    assert model["coverage"] == pytest.approx(np.mean((outputs[seen, 0] <= targets[seen])
                                                      & (targets[seen] <= outputs[seen, 2])))
    assert model["rmse"] == pytest.approx(np.sqrt(np.mean((outputs[seen, 1] - targets[seen]) ** 2)))
    # the noisy frames get the wider interval
    inputs = np.concatenate([np.asarray(test.input(i)) for i in range(len(test))])
    width = outputs[:, 2] - outputs[:, 0]
    assert np.median(width[inputs[:, 1] == 1]) > 4 * np.median(width[inputs[:, 1] == 0])


def test_a_warm_start_cannot_change_the_output_layer(hetero_data, tmp_path):
    point = write_workspace(tmp_path / "point", input_dim=2, target_dim=1, unit_type="fc",
                            net_depth=1)
    loaded = load_model_options(Workspace(point, create=False))
    with pytest.raises(OptionError, match="'identity' outputs, but loss_type 'gaussian'"):
        Trainer(loaded, TrainOptions(loss_type="gaussian", compile_mode="FAST_COMPILE"), hetero_data,
                str(tmp_path / "warm"), init_from=point, out=io.StringIO())
