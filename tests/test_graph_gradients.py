"""Finite-difference checks (float64) of the gradient of every layer and unit option."""
import numpy as np
import pytest

from tests.graph_support import compile_cost, make_net, make_window

CONFIGS = {
    "fc": dict(unit_type="fc"),
    "lstm": dict(unit_type="lstm"),
    "lstm_peephole": dict(unit_type="lstm", peephole=True),
    "gru": dict(unit_type="gru"),
    "lstm_weight_norm": dict(unit_type="lstm", weight_norm=True),
    "gru_layer_norm": dict(unit_type="gru", layer_norm=True),
    "lstm_layer_norm": dict(unit_type="lstm", layer_norm=True, peephole=True),
    "lstm_batch_norm": dict(unit_type="lstm", batch_norm=True),
    "gru_batch_norm": dict(unit_type="gru", batch_norm=True),
    "fc_batch_norm_residual": dict(unit_type="fc", batch_norm=True, residual_gate=True, net_depth=2),
    "lstm_residual": dict(unit_type="lstm", residual_gate=True, net_depth=2),
    "lstm_no_learned_init": dict(unit_type="lstm", learn_init_states=False),
    "lstm_id_embedding": dict(unit_type="lstm", learn_id_embedding=True, id_embedding_dim=2),
    "lstm_clock": dict(unit_type="lstm", learn_clock_params=True),
    "gru_clock": dict(unit_type="gru", learn_clock_params=True),
}


def directional_check(net, f, window, eps=1e-6):
    """For each parameter, compare grad·d with the central difference along a random d."""
    rng = np.random.default_rng(7)
    result = f(*window)
    grads = dict(zip(net.v_params, result[4:]))
    for name, v in net.v_params.items():
        value = v.get_value()
        d = rng.standard_normal(value.shape)
        v.set_value(value + eps * d)
        plus = f(*window)[0]
        v.set_value(value - eps * d)
        minus = f(*window)[0]
        v.set_value(value)
        numeric = (plus - minus) / (2 * eps)
        analytic = float(np.sum(grads[name] * d))
        assert np.isfinite(analytic), name
        assert abs(numeric - analytic) <= 1e-6 + 1e-5 * abs(numeric), (name, numeric, analytic)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_matches_finite_differences(name):
    net = make_net(**CONFIGS[name])
    window = make_window(net, frames=5, batch=3)
    f = compile_cost(net, window=5, step=4, batch=3)
    directional_check(net, f, window)


@pytest.mark.parametrize("loss_type", ["l1", "huber"])
def test_loss_gradients_match_finite_differences(loss_type):
    net = make_net(unit_type="fc")
    window = make_window(net, frames=4, batch=2)
    directional_check(net, compile_cost(net, window=4, step=4, loss_type=loss_type), window)


def categorical_window(net, frames, batch, loss_type, seed=3):
    """A window whose targets are one-hot frames (xent) or {0, 1} elements (bce), some NaN."""
    rng = np.random.default_rng(seed)
    x, time_tb, ids, _ = make_window(net, frames=frames, batch=batch)
    k = net.options.target_dim
    if loss_type == "xent":
        target = np.eye(k)[rng.integers(0, k, (frames, batch))]
        target[rng.random((frames, batch)) < 0.3] = np.nan           # whole frames without target
    else:
        target = (rng.random((frames, batch, k)) < 0.5).astype(float)
        target[rng.random(target.shape) < 0.3] = np.nan               # single elements
    return x, time_tb, ids, target.astype(net.dtype)


@pytest.mark.parametrize("loss_type,activation", [("xent", "softmax"), ("bce", "sigmoid")])
@pytest.mark.parametrize("unit_type", ["fc", "lstm"])
def test_categorical_loss_gradients_match_finite_differences(loss_type, activation, unit_type):
    net = make_net(unit_type=unit_type, target_dim=3, output_activation=activation)
    window = categorical_window(net, frames=4, batch=3, loss_type=loss_type)
    directional_check(net, compile_cost(net, window=4, step=3, loss_type=loss_type, batch=3), window)
