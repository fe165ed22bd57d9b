"""Regularisation: dropout, decoupled weight decay and input noise.

Each changes training as its option says (mask statistics, the exact shrink of the
weights, the noise's spread), works with every recurrence engine, leaves the
evaluation and inference graphs untouched (served output still equals offline
evaluation), is rejected out of range or with Hessian-free, and keeps ``--resume`` exact.
"""
import contextlib
import dataclasses
import io

import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from model_workspaces import OfflineModel
from sophia.data.dataset import Dataset
from sophia.data.make import make_dataset
from sophia.evaluation.inference import id_indices, run_model
from sophia.graph import engines
from sophia.graph.engines import onednn
from sophia.graph.net import Net
from sophia.graph.noise import Noise, generator_state, set_generator_state, shared_generator
from sophia.optim.updates import Optimizer
from sophia.options import ModelOptions, OptionError, TrainOptions, apply_overrides
from sophia.serving.model import load_model
from sophia.training.cli import main
from sophia.training.trainer import Trainer
from sophia.workspace import Workspace
from train_support import sets

MODE = "FAST_COMPILE"
REGULARISED = dict(dropout=0.3, input_noise=0.2, weight_decay=0.05)


def small_net(dtype="float32", seed=0, **overrides) -> Net:
    options = ModelOptions(input_dim=3, target_dim=2, net_width=6, net_depth=2, init_scale=0.5)
    return Net(dataclasses.replace(options, **overrides), seed=seed, dtype=dtype)


def window(net, frames=5, batch=3, seed=1, targets=True):
    rng = np.random.default_rng(seed)
    time_tb = np.tile(np.arange(frames, dtype=net.dtype)[:, None], (1, batch))
    target = rng.standard_normal((frames, batch, net.options.target_dim))
    if not targets:
        target[:] = np.nan
    return (rng.standard_normal((frames, batch, net.options.input_dim)).astype(net.dtype), time_tb,
            np.zeros((frames, batch), np.int32), target.astype(net.dtype))


def compile_forward(net, *, noise=None, dropout=0.0, input_noise=0.0, engine=None, grads=False,
                    step=3):
    """``f(input, time, id, target) -> [loss per frame, output, *next states, *grads]`` from
    zero states, training graph, no updates at all (so the generator does not move on
    and every call draws the same noise)."""
    ports = net.ports()
    v_states = net.new_states(1, "test")
    choices = net.choose_engines("auto", training=True, prefer=engine)
    fwd = net.forward(ports, v_states, carry_frame=step - 1, training=True, choices=choices,
                      noise=noise, dropout=dropout, input_noise=input_noise)
    loss_sum, n_frames = net.loss(fwd, ports, step, "l2")
    outputs = [loss_sum / n_frames, fwd.s_output_tbk] + fwd.s_next_states
    outputs += net.grads(loss_sum, n_frames) if grads else []
    f = th.function(ports.inputs(), outputs, mode=MODE, on_unused_input="ignore")

    def run(*args):
        net.reset_states(v_states, batch_size=args[0].shape[1])
        return f(*args)
    return run


# -- options -----------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"dropout": 1.0}, "option 'dropout' must be >= 0.0 and < 1.0; got 1.0"),
    ({"dropout": -0.1}, "option 'dropout' must be >= 0.0 and < 1.0; got -0.1"),
    ({"weight_decay": -0.01}, "option 'weight_decay' must be >= 0.0; got -0.01"),
    ({"input_noise": -0.5}, "option 'input_noise' must be >= 0.0; got -0.5"),
    ({"weight_decay": 100.0, "lr_init_val": 0.01},
     r"lr_init_val \* weight_decay must be < 1 \(each step scales the weights by 1 - lr \* weight_decay\)"),
    ({"dropout": "half"}, "option 'dropout' expects a float, got 'half'"),
    *[({"update_type": "hessian_free", "window_size": 8, "step_size": 8, name: 0.1},
       f"update_type 'hessian_free' does not use {name}: leave them at their defaults")
      for name in ("dropout", "weight_decay", "input_noise")],
])
def test_out_of_range_or_unused_values_are_option_errors(overrides, message):
    with pytest.raises(OptionError, match=message):
        apply_overrides(TrainOptions(), overrides)


def test_the_defaults_are_off_and_values_in_range_pass():
    o = TrainOptions()
    assert (o.dropout, o.weight_decay, o.input_noise) == (0.0, 0.0, 0.0)
    o = apply_overrides(TrainOptions(), {"dropout": "0.5", "weight_decay": "0.1", "input_noise": "0.05"})
    assert (o.dropout, o.weight_decay, o.input_noise) == (0.5, 0.1, 0.05)


# -- the noise ----------------------------------------------------------------------
def test_dropout_zeroes_a_share_rate_and_scales_the_rest_by_1_over_1_minus_rate():
    rate = 0.3
    noise = Noise(shared_generator(seed=4))
    x = tt.tensor3("x", dtype="float32")
    f = th.function([x], noise.dropout(x, rate), updates=noise.updates, mode=MODE)
    ones = np.ones((50, 20, 40), np.float32)                      # 40,000 elements: SE of the share 0.0023
    first, second = f(ones), f(ones)
    for out in (first, second):
        assert abs(np.mean(out == 0) - rate) < 0.012
        np.testing.assert_allclose(out[out != 0], 1 / (1 - rate), rtol=1e-6)
        assert abs(out.mean() - 1.0) < 0.03                       # the expectation is kept
    assert np.mean((first == 0) != (second == 0)) > 0.3           # a new mask every call
    assert Noise(shared_generator(0)).dropout(x, 0.0) is x        # rate 0: nothing drawn


def test_input_noise_is_gaussian_with_the_given_std():
    noise = Noise(shared_generator(seed=5))
    x = tt.matrix("x", dtype="float32")
    f = th.function([x], noise.gaussian(x, 0.25), updates=noise.updates, mode=MODE)
    base = np.full((200, 100), 3.0, np.float32)
    deviation = f(base) - base
    assert abs(deviation.mean()) < 0.005 and abs(deviation.std() - 0.25) < 0.005
    assert not np.array_equal(f(base), f(base))


def test_the_generator_state_round_trips_through_json_and_replays_the_same_draws():
    import json
    v_rng = shared_generator(seed=6)
    noise = Noise(v_rng)
    x = tt.vector("x", dtype="float32")
    f = th.function([x], noise.dropout(x, 0.5), updates=noise.updates, mode=MODE)
    ones = np.ones(64, np.float32)
    f(ones)
    saved = json.loads(json.dumps(generator_state(v_rng)))
    expected = [f(ones) for _ in range(3)]
    set_generator_state(v_rng, saved)
    np.testing.assert_array_equal([f(ones) for _ in range(3)], expected)
    np.testing.assert_array_equal(Noise(shared_generator(6)).v_rng.get_value().random(3),
                                  shared_generator(6).get_value().random(3))   # seeded: reproducible
    with pytest.raises(ValueError):
        set_generator_state(v_rng, {"bit_generator": "MT19937", "state": {}})


# -- where the net applies it --------------------------------------------------------
def test_dropout_leaves_the_recurrent_path_and_input_noise_reaches_the_first_layer():
    """The stored states of layer 0 (h, c) do not see dropout, which acts after it; those
    of layer 1 do (its input was dropped); input noise changes layer 0's states too."""
    net = small_net(dtype="float64")
    args = window(net)
    plain = compile_forward(net)(*args)
    dropped = compile_forward(net, noise=Noise(shared_generator(1)), dropout=0.5)(*args)
    noisy = compile_forward(net, noise=Noise(shared_generator(1)), input_noise=0.5)(*args)
    for n in (2, 3):                                              # layer 0: h, c
        np.testing.assert_array_equal(dropped[n], plain[n])
        assert np.abs(noisy[n] - plain[n]).max() > 1e-3
    for n in (4, 5):                                              # layer 1: h, c
        assert np.abs(dropped[n] - plain[n]).max() > 1e-3
    assert np.abs(dropped[1] - plain[1]).max() > 1e-3


def test_dropout_before_the_linear_output_layer_keeps_its_expected_output():
    """Inverted dropout: averaged over many streams with the same input, the outputs of a
    one-layer net equal the undropped ones (the output layer is linear in the dropped h)."""
    net = small_net(dtype="float64", net_depth=1, net_width=16)
    frames, batch = 4, 4000
    x, time_tb, id_tb, target = window(net, frames=frames, batch=1)
    args = (np.repeat(x, batch, axis=1), np.repeat(time_tb, batch, axis=1),
            np.repeat(id_tb, batch, axis=1), np.repeat(target, batch, axis=1))
    want = compile_forward(net)(*args)[1][:, 0]
    got = compile_forward(net, noise=Noise(shared_generator(2)), dropout=0.4)(*args)[1]
    assert got.std(axis=1).min() > 1e-3                          # the streams were dropped differently
    standard_error = got.std(axis=1) / np.sqrt(batch)
    assert np.all(np.abs(got.mean(axis=1) - want) < 5 * standard_error)


@pytest.fixture
def onednn_for_every_window(monkeypatch):
    """oneDNN's primitive for every window, however small (as in tests/test_engines.py)."""
    monkeypatch.setattr(engines.onednn_lstm, "MIN_BATCH_X_WIDTH", 0)
    monkeypatch.setattr(engines.onednn_lstm, "MIN_FRAMES_PER_SEGMENT", 0)


@pytest.mark.parametrize("engine", list(engines.ENGINES))
def test_every_engine_with_dropout_and_input_noise_equals_scan(engine, onednn_for_every_window):
    """Dropout and input noise act between layers, outside the recurrence: with the same
    generator state every engine computes scan's loss, outputs and gradients."""
    if engine == "onednn" and not onednn.available():
        pytest.skip(f"oneDNN unavailable: {onednn.UNAVAILABLE_REASON}")
    net = small_net(unit_type="lstm", learn_id_embedding=True, num_ids=2, id_embedding_dim=2)
    assert [c.engine for c in net.choose_engines("auto", training=True, prefer=engine)] == [engine] * 2
    args = window(net, frames=6, batch=3)
    regularised = dict(dropout=0.5, input_noise=0.3, grads=True)
    got = compile_forward(net, noise=Noise(shared_generator(3)), engine=engine, **regularised)(*args)
    want = compile_forward(net, noise=Noise(shared_generator(3)), engine="scan", **regularised)(*args)
    plain = compile_forward(net, engine="scan")(*args)
    assert abs(float(want[0]) - float(plain[0])) > 1e-3          # the noise took part
    for name, g, w in zip(["loss", "output", "h0", "c0", "h1", "c1", *net.v_params], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_f_train_step_draws_anew_every_step_and_the_evaluation_graphs_never():
    net = small_net()
    o = TrainOptions(batch_size=3, window_size=5, step_size=3, compile_mode=MODE)
    x, time_tb, id_tb, target = window(net)
    zero = np.float32(0.0)                                        # lr 0: the parameters stay
    losses = {}
    for name, options in (("plain", o), ("regularised", dataclasses.replace(o, **REGULARISED))):
        f_train_step, v_states, _ = net.compile_train_step(options)
        losses[name] = []
        for _ in range(3):
            net.reset_states(v_states)
            losses[name].append(float(f_train_step(x, time_tb, id_tb, target, zero)[0]))
    assert len(set(losses["plain"])) == 1
    assert len(set(losses["regularised"])) == 3 and losses["plain"][0] not in losses["regularised"]

    evaluated, inferred = [], []
    for options in (o, dataclasses.replace(o, **REGULARISED)):
        f_fwd, v_eval = net.compile_fwd_propagate(dataclasses.replace(options, step_size=o.window_size))
        f_infer, v_infer = net.compile_infer(window_size=5, mode=MODE)
        for _ in range(2):
            net.reset_states(v_eval)
            evaluated.append(f_fwd(x, time_tb, id_tb, target))
            net.reset_states(v_infer, batch_size=3)
            inferred.append(f_infer(x, time_tb, id_tb))
    for e, i in zip(evaluated[1:], inferred[1:]):
        np.testing.assert_array_equal(np.array(e, float), np.array(evaluated[0], float))
        np.testing.assert_array_equal(i, inferred[0])


# -- weight decay ------------------------------------------------------------------------
@pytest.mark.parametrize("force_type, update_type", [("vanilla", "sgd"), ("adam", "sgd"),
                                                     ("rmsprop", "momentum")])
def test_without_a_gradient_weights_shrink_by_1_minus_lr_wd_per_step_and_nothing_else_moves(
        force_type, update_type):
    net = small_net(weight_norm=True, layer_norm=True, peephole=True, learn_id_embedding=True,
                    num_ids=2, residual_gate=True, net_width=3, input_dim=3)
    lr, wd, steps = 0.1, 0.3, 3
    o = TrainOptions(batch_size=3, window_size=5, step_size=3, compile_mode=MODE, force_type=force_type,
                     update_type=update_type, weight_decay=wd, lr_init_val=lr)
    f_train_step, _, _ = net.compile_train_step(o)
    before = {name: v.get_value() for name, v in net.v_params.items()}
    args = window(net, targets=False)                             # every target NaN: no gradient
    for _ in range(steps):
        assert f_train_step(*args, np.float32(lr))[2] == 0        # the gradient norm
    decayed = {name for name, value in before.items() if value.ndim >= 2}
    assert {"layer0.W_x_V", "layer0.W_h_V", "layer1.W_x_V", "output.W_V", "id_embedding"} <= decayed
    assert not decayed & {"layer0.b", "layer0.W_x_g", "layer0.h0", "layer0.c0", "layer0.peep",
                          "layer0.res_k", "output.b"}
    for name, v in net.v_params.items():
        want = before[name] * np.float32(1 - lr * wd) ** steps if name in decayed else before[name]
        np.testing.assert_allclose(v.get_value(), want, rtol=2e-6, atol=0, err_msg=name)


def test_weight_decay_is_decoupled_from_adam_as_in_adamw():
    """Loshchilov & Hutter 2019, Algorithm 2 (η = 1): the decay is applied to the weights
    beside Adam's step, never through the gradient or the moments; a bias is not decayed."""
    c = np.array([[1.0, 10.0, 0.1], [2.0, 0.5, 3.0]])
    v_W = th.shared(np.array([[1.0, -2.0, 3.0], [0.5, 0.2, -1.0]]), name="W")
    v_b = th.shared(np.array([0.7, -0.3]), name="b")
    p_lr = tt.scalar("p_lr", dtype="float64")
    b1, b2, eps, lr, wd = 0.9, 0.99, 1e-8, 0.05, 0.2
    s_cost = tt.sum(c * v_W ** 2) + tt.sum(v_b ** 2)
    opt = Optimizer([v_W, v_b], tt.grad(s_cost, [v_W, v_b]), p_lr, force_type="adam", update_type="sgd",
                    adam_beta1=b1, adam_beta2=b2, force_epsilon=eps, weight_decay=wd)
    f_step = th.function([p_lr], [], updates=opt.updates, mode=MODE)
    params = [v_W.get_value(), v_b.get_value()]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    for t in range(1, 6):
        grads = [2 * c * params[0], 2 * params[1]]
        for n, (g, (m, v)) in enumerate(zip(grads, moments)):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
            moments[n] = [m, v]
            step = lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            params[n] = params[n] - step - (lr * wd * params[n] if n == 0 else 0.0)
        f_step(lr)
        np.testing.assert_allclose(v_W.get_value(), params[0], rtol=1e-12)
        np.testing.assert_allclose(v_b.get_value(), params[1], rtol=1e-12)


# -- training runs -----------------------------------------------------------------------
RUN = dict(net_width=8, net_depth=2, batch_size=4, window_size=8, step_size=4, compile_mode=MODE,
           frames_per_epoch=600, max_epochs=3, lr_init_val=0.02, lr_lower_bound=0, **REGULARISED)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "adding"
    make_dataset("adding", out, seed=3, counts={"train": 24, "dev": 6, "test": 1}, T=12)
    return str(out)


@pytest.fixture(scope="module")
def regularised_run(data_dir, tmp_path_factory):
    """A 3-epoch run with dropout, input noise and weight decay; returns its workspace."""
    ws = str(tmp_path_factory.mktemp("ws") / "alone")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--data_dir", data_dir, "--save_to", ws, "--seed", "4", *sets(**RUN)]) == 0
    return ws


def test_a_regularised_run_stopped_and_resumed_ends_as_the_run_left_alone(regularised_run, data_dir,
                                                                          tmp_path):
    """The noise generator's state is in the checkpoint: the resumed run draws the same
    masks and noise as the run left alone (without it, its losses would differ)."""
    ws = str(tmp_path / "stopped")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--data_dir", data_dir, "--save_to", ws, "--seed", "4",
                     *sets(**{**RUN, "max_epochs": 1})]) == 0
        assert main(["--resume", ws, "--set", f"max_epochs={RUN['max_epochs']}"]) == 0
    fields = ("epoch", "train_loss", "dev_loss", "lr")
    want = [[r.get(k) for k in fields] for r in Workspace(regularised_run, create=False).read_metrics()]
    have = [[r.get(k) for k in fields] for r in Workspace(ws, create=False).read_metrics()]
    assert len(have) == len(want) == RUN["max_epochs"] + 1
    assert min(r[2] for r in want[1:]) < 0.1 * want[0][2]       # it learns with all three on
    np.testing.assert_allclose(np.array(have, float), np.array(want, float), rtol=0, atol=1e-6)
    a, b = (Workspace(w, create=False).load_arrays("params") for w in (regularised_run, ws))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)


def test_a_regularised_model_serves_what_offline_inference_and_evaluation_give(regularised_run, data_dir):
    """Served frame by frame (sophia-eval's path) == f_infer over whole sequences, twice
    the same; and its dev loss is the trainer's deterministic dev evaluation."""
    ws = Workspace(regularised_run, create=False)
    dev = Dataset.open(data_dir, "dev")
    ids = ws.read_ids_order()
    served = run_model(load_model(regularised_run, mode=MODE), dev, ids, streams=2)
    again = run_model(load_model(regularised_run, mode=MODE), dev, ids, streams=3)
    offline = OfflineModel(regularised_run)
    rows = id_indices(dev, ids)
    squared, frames = 0.0, 0
    for i, (got_tk, again_tk) in enumerate(zip(served, again)):
        want_tk = offline.infer(np.asarray(dev.input(i))[:, None], dev.time_signal(i)[:, None], [rows[i]])[:, 0]
        np.testing.assert_allclose(got_tk, want_tk, rtol=0, atol=1e-5)
        np.testing.assert_allclose(again_tk, got_tk, rtol=0, atol=1e-5)
        target_tk = np.asarray(dev.target(i))
        valid = ~np.isnan(target_tk)
        squared += float(np.sum((got_tk[valid] - target_tk[valid]) ** 2))
        frames += int(valid.any(axis=1).sum())
    trainer = Trainer.resume(regularised_run, out=io.StringIO(), progress=io.StringIO())
    trainer.compile()
    trainer.net.set_values(ws.load_arrays("params"))
    dev_loss = trainer.evaluate(trainer.dev_set)
    assert dev_loss == trainer.evaluate(trainer.dev_set)
    assert dev_loss == pytest.approx(squared / frames, rel=1e-4)
