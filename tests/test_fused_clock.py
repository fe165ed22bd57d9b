"""The clock-gate Op of the fused graphs (sophia/graph/engines/fused_clock.py) against the graph
openness it replaces (TimeGate.openness): k, and the gradients of its parameters."""
import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from sophia.graph.clock import TimeGate
from sophia.graph.engines import native
from sophia.graph.engines.fused_clock import openness
from sophia.options import ModelOptions

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler")


def gate(dtype):
    """A gate of 7 units whose raw parameters include negative values and an open
    ratio above 1 (clipped), so every branch of the openness and its gradient runs."""
    options = ModelOptions(input_dim=1, target_dim=1, learn_clock_params=True, clock_period_lo=0.5,
                           clock_period_hi=1.5, clock_r_on=0.3, clock_leak=0.01)
    g = TimeGate("clock", 7, options, np.random.default_rng(0), dtype)
    g.v_tau_i.set_value((g.v_tau_i.get_value() * np.array([1, -1, 1, 1, -1, 1, 1])).astype(dtype))
    g.v_r_on_i.set_value(np.array([0.3, -0.4, 0.6, 1.3, 0.2, 0.9, 0.5], dtype))
    return g


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_the_op_computes_the_graph_openness_and_its_gradient(dtype, tol, training, row_blocks):
    g = gate(dtype)
    time, weights = tt.matrix(dtype=dtype), tt.tensor3(dtype=dtype)
    params = [g.v_tau_i, g.v_shift_i, g.v_r_on_i]
    results = []
    for k in (openness(g, time, training), g.openness(time, training)):
        f = th.function([time, weights], [k, *th.grad((k * weights).sum(), params)], mode="FAST_COMPILE")
        rng = np.random.default_rng(1)
        time_tb = rng.uniform(-2.0, 12.0, (9, 4)).astype(dtype)
        results.append(f(time_tb, rng.standard_normal((9, 4, 7)).astype(dtype)))
    if not training:                                 # some gates shut, some open
        assert 0 < (results[0][0] == 0).mean() < 1
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
