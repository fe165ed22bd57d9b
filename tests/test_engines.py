"""Every engine against the scan graph: engine × unit × option set × {forward, gradient}.

Where an engine runs the layer, its outputs match scan's (1e-10 in float64, 1e-5 in
float32) and its gradients match central finite differences of its own cost. Where
it does not, :func:`sophia.graph.engines.choose` passes it over and names the option.
"""
import numpy as np
import pytest

from sophia.graph import engines
from sophia.graph.bidirectional import BidirectionalLayer
from sophia.graph.engines import onednn
from tests.graph_support import compile_cost, make_net, make_window

UNITS = ("rnn", "lstm", "gru")
OPTION_SETS = {
    "plain": {},
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "weight_norm": dict(weight_norm=True),
    "batch_norm": dict(batch_norm=True),
    "batch_norm_clock": dict(batch_norm=True, learn_clock_params=True),
    "peephole_batch_norm_clock": dict(peephole=True, batch_norm=True, learn_clock_params=True, weight_norm=True),
    "clock": dict(learn_clock_params=True),
    "layer_norm_clock": dict(layer_norm=True, learn_clock_params=True),
    "peephole_layer_norm_clock": dict(peephole=True, layer_norm=True, learn_clock_params=True, weight_norm=True),
    "residual_ids_deep": dict(net_depth=2, residual_gate=True, learn_id_embedding=True, id_embedding_dim=2),
    "zero_init_states": dict(learn_init_states=False),
    "bidirectional_deep": dict(bidirectional=True, net_depth=2),
}
DTYPE = {"scan": "float64", "fused": "float64", "onednn": "float32"}
FORWARD_TOL = {"float64": 1e-10, "float32": 1e-5}
FRAMES, STEP, BATCH = 6, 4, 3


def reset_heavy_time():
    time_tb = np.tile(np.arange(1.0, FRAMES + 1)[:, None], (1, BATCH))
    time_tb[0, 0] = 0.0                   # a reset at the window's first frame
    time_tb[2:, :] -= time_tb[2, :]       # every stream restarts mid-window
    time_tb[3, -1] = -1.0                 # a padding-like frame right after
    return time_tb


# scan's own gradients of these sets take seconds each, and the default run checks them
# elsewhere (tests/test_graph_gradients.py: scan's batch norm; tests/test_bidirectional.py:
# scan's bidirectional LSTM, GRU and deep layers): with `pytest -m slow`
SLOW_ON_SCAN = ("batch_norm_clock", "peephole_batch_norm_clock", "bidirectional_deep")
CASES = [pytest.param(engine, unit, name, id=f"{engine}-{unit}-{name}")
         for engine in engines.ENGINES for unit in UNITS for name, options in OPTION_SETS.items()
         if not (unit != "lstm" and "peephole" in options)]
GRADIENT_CASES = [pytest.param(*case.values, id=case.id,
                               marks=[pytest.mark.slow] if case.values[0] == "scan" and case.values[2] in SLOW_ON_SCAN else [])
                  for case in CASES]


@pytest.fixture(autouse=True)
def onednn_for_every_window(monkeypatch):
    """oneDNN's primitive for every window, however small (its engine otherwise runs
    small windows on the fused Ops' code); returns the list of its forward calls."""
    calls, forward = [], onednn.LSTM.forward
    monkeypatch.setattr(engines.onednn_lstm, "MIN_BATCH_X_WIDTH", 0)
    monkeypatch.setattr(engines.onednn_lstm, "MIN_FRAMES_PER_SEGMENT", 0)
    monkeypatch.setattr(onednn.LSTM, "forward", lambda self, *a: calls.append(a[0].shape) or forward(self, *a))
    return calls


def net_and_window(engine, unit, name):
    net = make_net(dtype=DTYPE[engine], unit_type=unit, **OPTION_SETS[name])
    for v in net.v_params.values():       # learned initial states well away from zero
        if v.name.endswith((".h0", ".c0")):
            v.set_value(np.linspace(-0.8, 0.9, v.get_value().size).astype(net.dtype))
    return net, make_window(net, frames=FRAMES, batch=BATCH, time_tb=reset_heavy_time())


def supported(net, engine):
    """Whether ``engine`` runs every layer (a bidirectional layer: its forward direction,
    whose engine its backward direction shares)."""
    return all(not engines.ENGINES[engine].supports(
                   layer.forward if isinstance(layer, BidirectionalLayer) else layer,
                   training=True, unroll=False)
               for layer in net.layers)


@pytest.mark.parametrize("engine, unit, name", CASES)
def test_forward_matches_scan_or_the_engine_is_passed_over(engine, unit, name, onednn_for_every_window):
    net, window = net_and_window(engine, unit, name)
    if engine == "onednn" and not onednn.available():
        pytest.skip(f"oneDNN unavailable: {onednn.UNAVAILABLE_REASON}")
    if not supported(net, engine):
        for choice in net.choose_engines("auto", training=True, prefer=engine):
            assert choice.engine != engine and choice.reason
        return
    assert [c.engine for c in net.choose_engines("auto", training=True, prefer=engine)] == [engine] * len(net.layers)
    got = compile_cost(net, FRAMES, STEP, batch=BATCH, engine=engine, with_grads=False)(*window)
    want = compile_cost(net, FRAMES, STEP, batch=BATCH, engine="scan", with_grads=False)(*window)
    assert bool(onednn_for_every_window) == (engine == "onednn")
    tol = FORWARD_TOL[net.dtype]
    np.testing.assert_allclose(got[3], want[3], rtol=tol, atol=tol, err_msg="outputs")
    np.testing.assert_allclose(got[0], want[0], rtol=tol, atol=tol, err_msg="loss")


@pytest.mark.parametrize("engine, unit, name", GRADIENT_CASES)
def test_gradient_matches_finite_differences(engine, unit, name):
    net, window = net_and_window(engine, unit, name)
    if engine == "onednn" and not onednn.available():
        pytest.skip(f"oneDNN unavailable: {onednn.UNAVAILABLE_REASON}")
    if not supported(net, engine):
        pytest.skip(f"{engine} does not run this layer (the forward test checks that it is passed over)")
    f = compile_cost(net, FRAMES, STEP, batch=BATCH, engine=engine)
    grads = dict(zip(net.v_params, f(*window)[4:]))
    float32 = net.dtype == "float32"
    eps, tol = (1e-2, 3e-3) if float32 else (1e-6, 1e-6)
    rng = np.random.default_rng(0)
    for pname, v in net.v_params.items():
        value = v.get_value()
        for index in [tuple(rng.integers(0, d) for d in value.shape) for _ in range(2)]:
            bumped = []
            for sign in (1, -1):
                x = value.copy()
                x[index] += sign * eps
                v.set_value(x)
                bumped.append(float(f(*window)[0]))
            v.set_value(value)
            numeric = (bumped[0] - bumped[1]) / (2 * eps)
            analytic = float(grads[pname][index])
            assert abs(numeric - analytic) <= tol * max(1.0, abs(numeric)), (pname, index, numeric, analytic)


BLOCKED = [("lstm", "plain"), ("gru", "plain"), ("lstm", "peephole"), ("lstm", "peephole_layer_norm_clock"),
           ("gru", "layer_norm_clock"), ("gru", "clock")]


@pytest.mark.parametrize("unit, name", BLOCKED, ids=[f"{u}-{n}" for u, n in BLOCKED])
def test_fused_windows_run_as_row_blocks_equal_scan(unit, name, row_blocks, monkeypatch):
    """The fused Ops run their streams in blocks of batch rows side by side
    (``window.by_rows``): as one block or three, outputs and every parameter's gradient
    equal scan's, with resets mid-window."""
    from sophia.graph.engines import blocks
    spans_seen, run = [], blocks.run
    monkeypatch.setattr(blocks, "run", lambda call, spans, **kw: spans_seen.append(len(spans)) or run(call, spans, **kw))
    net, window = net_and_window("fused", unit, name)
    got = compile_cost(net, FRAMES, STEP, batch=BATCH, engine="fused")(*window)
    want = compile_cost(net, FRAMES, STEP, batch=BATCH, engine="scan")(*window)
    assert (max(spans_seen, default=1) == 3) == (row_blocks == 3)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-10, atol=1e-10, err_msg="outputs")
    for pname, g, w in zip(net.v_params, got[4:], want[4:]):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10, err_msg=pname)
