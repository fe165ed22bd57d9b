"""The norm Ops of the fused graphs (sophia/graph/engines/fused_norm.py) against the graph
LayerNorm and BatchNorm they replace: outputs, and gradients against finite differences
(layer norm) or the graph's own (batch norm; finite differences: tests/test_engines.py)."""
import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from sophia.graph.engines import native
from sophia.graph.engines.fused_norm import batch_norm, layer_norm
from sophia.graph.norms import BatchNorm, LayerNorm

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler")


def graphs(dtype):
    """(the Op's cost function, the graph LayerNorm's) of x [T][B][g], both with gradients
    of every input; gamma and beta are LayerNorm's shared variables, moved off 1 and 0."""
    norm = LayerNorm("ln", 6, dtype)
    rng = np.random.default_rng(0)
    norm.v_gamma_g.set_value(rng.uniform(0.5, 1.5, 6).astype(dtype))
    norm.v_beta_g.set_value(rng.uniform(-0.5, 0.5, 6).astype(dtype))
    x, weights = tt.tensor3(dtype=dtype), tt.tensor3(dtype=dtype)
    out = []
    for y in (layer_norm(x, norm.v_gamma_g, norm.v_beta_g), norm(x)):
        cost = (y * weights).sum()
        out.append(th.function([x, weights], [y, *th.grad(cost, [x, norm.v_gamma_g, norm.v_beta_g])],
                               mode="FAST_COMPILE"))
    return out, norm


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_the_op_computes_the_graph_layer_norm_and_its_gradient(dtype, tol, row_blocks):
    (f_op, f_graph), _ = graphs(dtype)
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((4, 3, 6)) + 1).astype(dtype)
    weights = rng.standard_normal((4, 3, 6)).astype(dtype)
    for got, want in zip(f_op(x, weights), f_graph(x, weights)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_the_op_gradient_matches_finite_differences():
    (f_op, _), norm = graphs("float64")
    rng = np.random.default_rng(2)
    x, weights = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 3, 6))
    _, dx, d_gamma, d_beta = f_op(x, weights)
    eps = 1e-6

    def cost(x_):
        return float((f_op(x_, weights)[0] * weights).sum())
    for index in [(0, 0, 0), (1, 2, 5), (0, 1, 3)]:
        bumped = [x.copy(), x.copy()]
        bumped[0][index] += eps
        bumped[1][index] -= eps
        assert abs((cost(bumped[0]) - cost(bumped[1])) / (2 * eps) - dx[index]) < 1e-7
    for v, grad in ((norm.v_gamma_g, d_gamma), (norm.v_beta_g, d_beta)):
        value = v.get_value()
        for k in (0, 4):
            costs = []
            for sign in (1, -1):
                bumped = value.copy()
                bumped[k] += sign * eps
                v.set_value(bumped)
                costs.append(cost(x))
            v.set_value(value)
            assert abs((costs[0] - costs[1]) / (2 * eps) - grad[k]) < 1e-7


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_the_batch_norm_op_computes_the_graph_batch_norm_and_its_gradient(dtype, tol, row_blocks):
    """Each frame normalised over its batch: y, the frame's statistics and the gradients
    of x, gamma and beta, as the graph BatchNorm of a training graph computes them."""
    norm = BatchNorm("bn", 6, 4, 0.1, dtype, with_beta=True)
    rng = np.random.default_rng(3)
    norm.v_gamma_g.set_value(rng.uniform(0.5, 1.5, 6).astype(dtype))
    norm.v_beta_g.set_value(rng.uniform(-0.5, 0.5, 6).astype(dtype))
    x, weights = tt.tensor3(dtype=dtype), tt.tensor3(dtype=dtype)
    x_value = (3 * rng.standard_normal((4, 5, 6)) + 1).astype(dtype)
    weights_value = rng.standard_normal((4, 5, 6)).astype(dtype)
    results = []
    for y, mean, var in (batch_norm(x, norm.v_gamma_g, norm.v_beta_g), norm(x, None, training=True)):
        grads = th.grad((y * weights).sum(), [x, norm.v_gamma_g, norm.v_beta_g])
        f = th.function([x, weights], [y, mean.reshape((4, 6)), var.reshape((4, 6)), *grads], mode="FAST_COMPILE")
        results.append(f(x_value, weights_value))
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
