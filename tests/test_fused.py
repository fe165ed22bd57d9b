"""The fused recurrence Ops (sophia/graph/engines/fused.py) compute what the scan path computes."""
import numpy as np
import pytensor.tensor as tt
import pytest
from pytensor.gradient import verify_grad

from sophia.graph.engines import fused, native
from sophia.options import TrainOptions
from tests.graph_support import MODE, compile_cost, make_net, make_window

FUSED_CONFIGS = {
    "lstm": dict(unit_type="lstm"),
    "gru": dict(unit_type="gru"),
    "lstm_deep_residual_embedding": dict(unit_type="lstm", net_depth=2, residual_gate=True,
                                         learn_id_embedding=True, id_embedding_dim=2),
    "gru_deep_weight_norm": dict(unit_type="gru", net_depth=2, weight_norm=True),
    "lstm_no_learned_init": dict(unit_type="lstm", learn_init_states=False),
}


def fused_ops(f):
    return [node.op for node in f.maker.fgraph.toposort()
            if isinstance(node.op, (fused._Recurrence, fused._RecurrenceGrad))]


def reset_heavy_time(frames, batch):
    """Resets at frame 0 in one stream, mid-window in all, twice in a row in one."""
    time_tb = np.tile(np.arange(1.0, frames + 1)[:, None], (1, batch))
    time_tb[0, 0] = 0.0
    time_tb[2:, :] -= time_tb[2, :]       # every stream restarts at frame 2
    time_tb[3, -1] = -1.0                 # a padding-like frame right after
    return time_tb


@pytest.mark.parametrize("name", list(FUSED_CONFIGS))
def test_fused_outputs_and_gradients_equal_scan(name):
    net = make_net(**FUSED_CONFIGS[name])
    for v in net.v_params.values():        # learned initial states well away from zero
        if v.name.endswith((".h0", ".c0")):
            v.set_value(np.linspace(-0.8, 0.9, v.get_value().size))
    window = make_window(net, frames=6, batch=3, time_tb=reset_heavy_time(6, 3))
    f_fused = compile_cost(net, window=6, step=4, batch=3, engine="fused")
    f_scan = compile_cost(net, window=6, step=4, batch=3, engine="scan")
    assert fused_ops(f_fused) and not fused_ops(f_scan)
    for a, b in zip(f_fused(*window), f_scan(*window)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_fused_train_step_equals_scan_train_step():
    """Parameters, optimizer state and stored states after three BPTT(5; 3) steps."""
    results = []
    for use_fused in (True, False):
        net = make_net(unit_type="lstm", net_depth=2)
        options = TrainOptions(batch_size=3, window_size=5, step_size=3, compile_mode=MODE)
        f_train, v_states, _ = net.compile_train_step(options, engine="fused" if use_fused else "scan")
        assert bool(fused_ops(f_train)) == use_fused
        for seed in range(3):
            f_train(*make_window(net, frames=5, batch=3, seed=seed), 0.01)
        results.append([v.get_value() for v in v_states] + list(net.get_values().values()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("unit", ["lstm", "gru"])
def test_batch_norm_runs_on_the_batch_norm_ops(unit):
    """Training graphs: the input path's Op and the recurrence's, both with gradients;
    inference graphs: the recurrence's Op on population statistics, and no scan."""
    net = make_net(unit_type=unit, batch_norm=True)
    assert all(fused.supports(layer, training=training, unroll=False) == ""
               for layer in net.layers for training in (True, False))
    prefix = f"{unit.upper()}BatchNormRecurrence"
    for training, expected in ((True, {prefix, prefix + "Grad", "BatchNormFrames", "BatchNormFramesGrad"}),
                               (False, {prefix})):
        f = compile_cost(net, window=4, step=2, engine="fused", training=training, with_grads=training)
        names = {type(node.op).__name__ for node in f.maker.fgraph.toposort()}
        assert expected <= names and "Scan" not in names and (training or "BatchNormFrames" not in names)


@pytest.mark.parametrize("options", [
    dict(unit_type="lstm", peephole=True), dict(unit_type="lstm", layer_norm=True),
    dict(unit_type="gru", layer_norm=True), dict(unit_type="gru", learn_clock_params=True),
])
def test_unit_options_run_on_the_options_ops(options):
    net = make_net(**options)
    assert all(fused.supports(layer, training=True, unroll=False) == "" for layer in net.layers)
    f = compile_cost(net, window=4, step=2, engine="fused")
    names = {type(node.op).__name__ for node in f.maker.fgraph.toposort()}
    unit = options["unit_type"].upper()
    assert {f"{unit}OptionsRecurrence", f"{unit}OptionsRecurrenceGrad"} <= names


def test_unrolled_graphs_are_not_fused():
    net = make_net(unit_type="gru")
    assert fused.supports(net.layers[0], training=True, unroll=False) == ""
    assert fused.supports(net.layers[0], training=True, unroll=True) == "unroll_scan"


def _op_inputs(op, rng, steps=5, batch=3, width=2):
    gates = 4 * width if isinstance(op, fused.LSTMRecurrence) else 3 * width
    n = op.n_states
    return ([rng.standard_normal((steps, batch, gates)), 0.7 * rng.standard_normal((width, gates)),
             rng.standard_normal(gates)]
            + [rng.standard_normal(width) for _ in range(n)]
            + [rng.standard_normal((batch, width)) for _ in range(n)])


@pytest.mark.parametrize("op", [fused.LSTMRecurrence(), fused.GRURecurrence()])
def test_fused_gradient_matches_finite_differences(op):
    """Of every state sequence (c of an LSTM too), w.r.t. every differentiable input."""
    rng = np.random.default_rng(0)
    time_tb = reset_heavy_time(5, 3)

    def every_state(xa, W, *rest):
        states = op(xa, tt.constant(time_tb), W, *rest)[:op.n_states]
        return tt.concatenate([s.flatten() for s in states])

    verify_grad(every_state, _op_inputs(op, rng), rng=rng, eps=1e-7, abs_tol=1e-7, rel_tol=1e-6, mode=MODE)


def test_float32_graph_stays_float32():
    net = make_net(dtype="float32", unit_type="lstm", net_depth=2)
    options = TrainOptions(batch_size=3, window_size=5, step_size=3, compile_mode=MODE)
    f_train, v_states, _ = net.compile_train_step(options)
    loss, n_frames, norm, _ = f_train(*make_window(net, frames=5, batch=3), np.float32(0.01))
    assert np.isfinite(loss) and np.isfinite(norm) and n_frames == 9
    assert all(v.get_value().dtype == np.float32 for v in v_states)
    assert all(value.dtype == np.float32 for value in net.get_values().values())


@pytest.mark.skipif(not native.available(), reason="no C compiler")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", [fused.LSTMRecurrence(), fused.GRURecurrence()])
def test_native_kernels_equal_the_numpy_fallback(op, dtype, monkeypatch):
    """The native cell kernels and the numpy code used without a C compiler: forward and gradient,
    with resets and every output gradient given (float32: the kernels' tanh is a rational
    approximation within 3e-7)."""
    rng = np.random.default_rng(1)
    n = op.n_states
    inputs = _op_inputs(op, rng, steps=6, batch=3, width=9)
    inputs = [x.astype(dtype) for x in inputs[:1]] + [reset_heavy_time(6, 3).astype(dtype)] + \
        [x.astype(dtype) for x in inputs[1:]]
    d_states = [rng.standard_normal((6, 3, 9)).astype(dtype) for _ in range(n)]

    def run():
        node = op.make_node(*[tt.as_tensor_variable(x) for x in inputs])
        out = [[None] for _ in node.outputs]
        op.perform(node, inputs, out)
        grad_op = op.grad_op((True,) * n)
        grad_inputs = inputs[1:] + [o[0] for o in out] + d_states
        grad_node = grad_op.make_node(*[tt.as_tensor_variable(x) for x in grad_inputs])
        grads = [[None] for _ in grad_node.outputs]
        grad_op.perform(grad_node, grad_inputs, grads)
        return [o[0] for o in out + grads]

    with_native = run()
    monkeypatch.setattr(native, "available", lambda: False)
    without = run()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    for a, b in zip(with_native, without):
        assert a.dtype == b.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, **tol)
