"""Recurrent batch norm on the fused engine (sophia/graph/engines/fused_bn.py) against the
scan graph: inference on population statistics, in windows and frame by frame, and the
population updates of training steps. The training forward and gradients are in the
equivalence table (tests/test_engines.py)."""
import numpy as np
import pytest

from sophia.graph.engines import native
from sophia.options import TrainOptions
from tests.graph_support import MODE, compile_cost, make_net, make_window
from tests.test_engines import reset_heavy_time

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler")

NETS = {
    "lstm": dict(unit_type="lstm"),
    "lstm_peephole_clock": dict(unit_type="lstm", peephole=True, learn_clock_params=True),
    "gru": dict(unit_type="gru"),
    "gru_clock_deep": dict(unit_type="gru", learn_clock_params=True, net_depth=2),
}
TOL = {"float64": 1e-10, "float32": 1e-5}


def bn_net(name, dtype):
    """A batch-normalised net whose population statistics differ per time step."""
    net = make_net(dtype=dtype, batch_norm=True, batch_norm_steps=4, **NETS[name])
    rng = np.random.default_rng(5)
    for v in net.v_buffers.values():
        value = v.get_value()
        v.set_value((value + rng.uniform(0.1, 0.6, value.shape)).astype(dtype))
    return net


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(NETS))
def test_inference_on_population_statistics_matches_scan(name, dtype):
    """Windows whose time steps run past batch_norm_steps (clipped), with resets and padding."""
    net = bn_net(name, dtype)
    time_tb = reset_heavy_time() + np.array([0.0, 2.0, 5.0])
    window = make_window(net, frames=6, batch=3, time_tb=time_tb)
    got, want = (compile_cost(net, 6, 4, batch=3, training=False, with_grads=False, engine=engine)(*window)
                 for engine in ("fused", "scan"))
    np.testing.assert_allclose(got[3], want[3], rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("name", ["lstm_peephole_clock", "gru_clock_deep"])
def test_one_frame_serving_equals_the_scan_window(name):
    """f_infer on the fused engine, fed frame by frame, gives the scan window's outputs."""
    net = bn_net(name, "float64")
    x, time_tb, ids, target = make_window(net, frames=6, batch=3, time_tb=reset_heavy_time())
    want = compile_cost(net, 6, 6, batch=3, training=False, with_grads=False, engine="scan")(x, time_tb, ids, target)[3]
    f_infer, v_states = net.compile_infer(window_size=1, engine="fused")
    assert [c.engine for c in net.choose_engines("auto", training=False, prefer="fused")] == ["fused"] * net.options.net_depth
    net.reset_states(v_states, batch_size=3)
    got = np.concatenate([np.asarray(f_infer(x[k:k + 1], time_tb[k:k + 1], ids[k:k + 1])) for k in range(6)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["lstm_peephole_clock", "gru_clock_deep"])
def test_train_steps_update_the_population_like_scan(name):
    """Population statistics, parameters and stored states after three BPTT(5; 3) steps
    whose windows reach time steps past batch_norm_steps."""
    results = []
    for engine in ("fused", "scan"):
        net = make_net(batch_norm=True, batch_norm_steps=4, batch_norm_momentum=0.3, **NETS[name])
        options = TrainOptions(batch_size=3, window_size=5, step_size=3, compile_mode=MODE)
        f_train, v_states, _ = net.compile_train_step(options, engine=engine)
        for seed in range(3):
            x, _, ids, target = make_window(net, frames=5, batch=3, seed=seed)
            time_tb = np.tile(np.arange(5.0)[:, None] + 2 * seed, (1, 3))
            time_tb[3, 1] = 0.0                                   # a reset in one stream
            f_train(x, time_tb, ids, target, 0.05)
        results.append({**{k: v.get_value() for k, v in net.v_buffers.items()}, **net.get_values(),
                        **{f"state{n}": v.get_value() for n, v in enumerate(v_states)}})
    fused, scan = results
    assert any(k.endswith("pop_mean") for k in fused) and fused.keys() == scan.keys()
    for key in fused:
        np.testing.assert_allclose(fused[key], scan[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert np.ptp(fused["layer0.norm_h.pop_mean"], axis=0).max() > 1e-3    # the statistics moved per step
