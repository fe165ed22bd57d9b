"""oneDNN's LSTM windows (sophia/graph/engines/onednn_lstm.py) compute what the fused Ops compute.

The fused Ops are themselves checked against scan and finite differences in float64
(tests/test_fused.py, tests/test_graph_gradients.py); oneDNN runs float32 only, so it
is compared with them in float32, gradients and carried states included.
"""
import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from sophia.graph.engines import fused, onednn, onednn_lstm
from sophia.options import TrainOptions
from tests.graph_support import MODE, compile_cost, make_net, make_window

pytestmark = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN: {onednn.UNAVAILABLE_REASON}")

F32 = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture(params=["onednn", "fused"])
def engine(request, monkeypatch):
    """Which code every window runs, whatever its size: oneDNN's primitives or the
    fused Ops' code that :func:`onednn_lstm.runs_on_onednn` falls back to. Returns
    the list of oneDNN forward calls made, to check which one ran."""
    on = request.param == "onednn"
    monkeypatch.setattr(onednn_lstm, "MIN_BATCH_X_WIDTH", 0 if on else 10 ** 9)
    monkeypatch.setattr(onednn_lstm, "MIN_FRAMES_PER_SEGMENT", 0 if on else 10 ** 9)
    calls, forward = [], onednn.LSTM.forward
    monkeypatch.setattr(onednn.LSTM, "forward", lambda self, *a: calls.append(a[0].shape) or forward(self, *a))
    yield calls
    assert bool(calls) == on


def onednn_ops(f):
    return [node.op for node in f.maker.fgraph.toposort()
            if isinstance(node.op, (onednn_lstm.OneDNNLSTM, onednn_lstm.OneDNNLSTMGrad))]


def resets(frames, batch):
    """Resets at frame 0 in one stream, mid-window in two others at different frames,
    twice in a row in the last, none in the second."""
    time_tb = np.tile(np.arange(1.0, frames + 1)[:, None], (1, batch))
    time_tb[0, 0] = 0.0
    time_tb[4:, 2] -= time_tb[4, 2]
    time_tb[6:, 3] -= time_tb[6, 3] + 1.0
    time_tb[7, 3] = 0.0
    return time_tb.astype(np.float32)


def test_segments_split_at_resets_and_after_the_carry_frame():
    reset = resets(10, 4) <= 0
    assert onednn_lstm.segments(reset, carry=4) == [(0, 4), (4, 5), (5, 6), (6, 7), (7, 10)]
    assert onednn_lstm.segments(np.zeros((5, 2), bool), carry=4) == [(0, 5)]
    assert onednn_lstm.segments(np.zeros((5, 2), bool), carry=-1) == [(0, 5)]
    assert onednn_lstm.segments(np.ones((3, 2), bool), carry=0) == [(0, 1), (1, 2), (2, 3)]


def test_small_or_reset_heavy_windows_fall_back_to_the_fused_code():
    assert onednn_lstm.runs_on_onednn(batch=64, width=256, steps=128, n_segments=2)
    assert onednn_lstm.runs_on_onednn(batch=64, width=256, steps=128, n_segments=16)
    assert not onednn_lstm.runs_on_onednn(batch=64, width=256, steps=128, n_segments=17)
    assert not onednn_lstm.runs_on_onednn(batch=16, width=32, steps=32, n_segments=1)


@pytest.mark.parametrize("carry", [2, 5, 9])
def test_op_outputs_and_gradients_equal_the_fused_op(carry, engine):
    """Every frame's h, the carried states and the gradients of all inputs, with resets
    at frame 0 and mid-window, a learned-like nonzero initial state and stored state."""
    rng = np.random.default_rng(carry)
    frames, batch, j, i = 10, 4, 5, 3
    shapes = dict(x=(frames, batch, j), W_x=(j, 4 * i), W_h=(i, 4 * i), b=(4 * i,), h0=(i,), c0=(i,),
                  h=(batch, i), c=(batch, i))
    values = {k: rng.normal(scale=0.7, size=s).astype(np.float32) for k, s in shapes.items()}
    sym = {k: tt.tensor(dtype="float32", shape=(None,) * len(s), name=k) for k, s in shapes.items()}
    s_time = tt.matrix(dtype="float32")
    weights = [rng.normal(size=s).astype(np.float32) for s in ((frames, batch, i), (batch, i), (batch, i))]

    def build(use_onednn):
        s = sym
        if use_onednn:
            outputs = onednn_lstm.OneDNNLSTM(carry)(s["x"], s_time, s["W_x"], s["W_h"], s["b"], s["h0"],
                                                   s["c0"], s["h"], s["c"])[:3]
        else:
            xw = tt.dot(s["x"].reshape((-1, j)), s["W_x"]).reshape((frames, batch, 4 * i))
            h_tbi, c_tbi, _ = fused.LSTMRecurrence()(xw, s_time, s["W_h"], s["b"], s["h0"], s["c0"], s["h"], s["c"])
            outputs = [h_tbi, h_tbi[carry], c_tbi[carry]]
        cost = sum((o * w).sum() for o, w in zip(outputs, weights))
        grads = tt.grad(cost, list(sym.values()))
        return th.function(list(sym.values()) + [s_time], outputs + grads, mode=MODE)

    f_onednn, f_fused = build(True), build(False)
    assert onednn_ops(f_onednn) and not onednn_ops(f_fused)
    args = list(values.values()) + [resets(frames, batch)]
    names = ["h_tbi", "h_carry", "c_carry"] + [f"d_{k}" for k in sym]
    for name, a, b in zip(names, f_onednn(*args), f_fused(*args)):
        np.testing.assert_allclose(a, b, **F32, err_msg=name)


def test_training_graph_uses_onednn_and_evaluation_the_fused_ops():
    net = make_net(dtype="float32", unit_type="lstm", net_depth=2)
    assert onednn_ops(compile_cost(net, window=6, step=4, batch=3))
    evaluation = compile_cost(net, window=6, step=4, batch=3, training=False)
    assert not onednn_ops(evaluation) and any(
        isinstance(node.op, fused._Recurrence) for node in evaluation.maker.fgraph.toposort())


@pytest.mark.parametrize("options", [
    dict(unit_type="gru"), dict(unit_type="lstm", peephole=True), dict(unit_type="lstm", layer_norm=True),
    dict(unit_type="lstm", batch_norm=True), dict(unit_type="lstm", learn_clock_params=True),
])
def test_layers_onednn_cannot_run_keep_their_path(options):
    net = make_net(dtype="float32", **options)
    assert all(onednn_lstm.supports(layer, unroll=False, training=True) for layer in net.layers)
    assert not onednn_ops(compile_cost(net, window=4, step=2, with_grads=False))


def test_float64_nets_keep_the_fused_ops():
    net = make_net(dtype="float64", unit_type="lstm")
    assert onednn_lstm.supports(net.layers[0], unroll=False, training=True) == "float64"


def test_train_steps_equal_the_fused_train_steps(engine):
    """Parameters, Adam's state and stored states after three BPTT(9; 5) steps of a
    two-layer LSTM with residual gates, ID embedding and learned initial states,
    on windows with resets: oneDNN against the fused Ops, both float32."""
    config = dict(unit_type="lstm", net_depth=2, net_width=4, residual_gate=True, learn_id_embedding=True,
                  id_embedding_dim=2, learn_init_states=True, weight_norm=True)
    results = []
    for use_onednn in (True, False):
        net = make_net(dtype="float32", **config)
        options = TrainOptions(batch_size=4, window_size=9, step_size=5, compile_mode=MODE, force_type="adam")
        f_train, v_states, _ = net.compile_train_step(options, engine="onednn" if use_onednn else "fused")
        assert bool(onednn_ops(f_train)) == use_onednn
        for seed in range(3):
            window = make_window(net, frames=9, batch=4, seed=seed, time_tb=resets(9, 4) + 9 * seed)
            f_train(*window, np.float32(0.01))
        results.append([v.get_value() for v in v_states] + list(net.get_values().values()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
