"""Hessian-free optimiser: Gauss–Newton products against explicit Jacobians, CG,
backtracking, the line search, the damping rule and the driver on a tiny net."""
from __future__ import annotations

import math
import re

import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from sophia.optim.hessian_free import (HessianFree, HFSettings, armijo_line_search, backtrack,
                                       build_net_graph, compile_functions, conjugate_gradient,
                                       curvature_slice, levenberg_marquardt, softmax_hessian_times)
from tests.graph_support import MODE, make_net, make_window

STEP = 3


@pytest.fixture(scope="module", ids=["lstm", "bidirectional"],
                params=[{}, pytest.param({"bidirectional": True}, marks=pytest.mark.slow)])
def tiny(request):
    """A tiny float64 LSTM net (unidirectional, and bidirectional: its backward direction
    through the per-sequence reversal), its HF graph and functions, and a window with NaN targets."""
    net = make_net("float64", **request.param)
    graph = build_net_graph(net, step_size=STEP)
    functions = compile_functions(graph, mode=MODE)
    f_out = th.function(graph.inputs, [graph.s_output_tbk.flatten(),
                                       tt.concatenate([h.flatten() for h in graph.s_hidden])],
                        mode=MODE, on_unused_input="ignore")
    window = make_window(net, frames=5, batch=2, nan_fraction=0.3)
    return net, graph, functions, f_out, window


def _jacobians(hf, f_out, window, h=1e-6):
    """Central finite differences of the outputs and hidden states w.r.t. the flat parameters."""
    theta = hf.get_flat()
    cols_o, cols_h = [], []
    for n in range(theta.size):
        e = np.zeros_like(theta)
        e[n] = h
        hf.set_flat(theta + e)
        plus = f_out(*window)
        hf.set_flat(theta - e)
        minus = f_out(*window)
        cols_o.append((plus[0] - minus[0]) / (2 * h))
        cols_h.append((plus[1] - minus[1]) / (2 * h))
    hf.set_flat(theta)
    return np.stack(cols_o, axis=1), np.stack(cols_h, axis=1)


@pytest.mark.parametrize("structural", [0.0, 0.7])
def test_gauss_newton_product_equals_explicit_jacobians(tiny, structural):
    net, graph, functions, f_out, window = tiny
    hf = HessianFree(graph.params, functions)
    j_o, j_h = _jacobians(hf, f_out, window)
    target_tbk = window[3][-STEP:]
    valid = ~np.isnan(target_tbk)
    n_frames = max(valid.any(axis=-1).sum(), 1)
    h_l = np.diag(2.0 * valid.ravel() / n_frames)             # masked_loss 'l2' per target frame
    g = j_o.T @ h_l @ j_o + structural * j_h.T @ j_h / n_frames
    v = np.random.default_rng(3).standard_normal(j_o.shape[1])
    gv = functions.f_gv(v, structural, *window)
    np.testing.assert_allclose(gv, g @ v, rtol=1e-5, atol=1e-8)


def _categorical_window(net, loss_type, frames=5, batch=3, seed=4):
    """A window whose targets fit ``loss_type``: one-hot frames (xent) or bits (bce), with
    NaN frames (xent) or NaN elements (bce)."""
    input_tbj, time_tb, id_tb, _ = make_window(net, frames=frames, batch=batch, seed=seed)
    rng = np.random.default_rng(seed)
    k = net.options.target_dim
    if loss_type == "xent":
        target = np.eye(k)[rng.integers(0, k, (frames, batch))]
        target[rng.random((frames, batch)) < 0.3] = np.nan
    else:
        target = rng.integers(0, 2, (frames, batch, k)).astype(float)
        target[rng.random(target.shape) < 0.3] = np.nan
    return input_tbj, time_tb, id_tb, target.astype(net.dtype)


def _output_hessian(loss_type, logit_tbk, target_tbk):
    """H_L of the loss per target frame w.r.t. the logits, written out: block-diagonal per
    frame, (diag(p) − p pᵀ)/n for xent, diag(p (1 − p))/n for bce, 0 off target."""
    k = logit_tbk.shape[-1]
    valid = ~np.isnan(target_tbk)
    n_frames = max(valid.any(axis=-1).sum(), 1)
    blocks = []
    for z, ok in zip(logit_tbk.reshape(-1, k), valid.reshape(-1, k)):
        if loss_type == "xent":
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            block = (np.diag(p) - np.outer(p, p)) * ok.any()
        else:
            p = 1 / (1 + np.exp(-z))
            block = np.diag(p * (1 - p) * ok)
        blocks.append(block / n_frames)
    h = np.zeros((len(blocks) * k,) * 2)
    for n, block in enumerate(blocks):
        h[n * k:(n + 1) * k, n * k:(n + 1) * k] = block
    return h


@pytest.mark.parametrize("loss_type, activation", [("xent", "softmax"), ("bce", "sigmoid")])
@pytest.mark.parametrize("structural", [0.0, 0.7])
def test_gauss_newton_product_of_a_matching_loss_equals_explicit_jacobians(loss_type, activation, structural):
    """xent and bce: G = Jᵀ H_L J with J the Jacobian of the logits, H_L the softmax's or
    the sigmoid's (a matching loss), and the structural term as for l2."""
    net = make_net("float64", target_dim=3, output_activation=activation)
    graph = build_net_graph(net, step_size=STEP, loss_type=loss_type)
    functions = compile_functions(graph, mode=MODE)
    f_out = th.function(graph.inputs, [graph.s_output_tbk.flatten(),
                                       tt.concatenate([h.flatten() for h in graph.s_hidden])],
                        mode=MODE, on_unused_input="ignore")
    window = _categorical_window(net, loss_type)
    hf = HessianFree(graph.params, functions)
    j_o, j_h = _jacobians(hf, f_out, window)
    target_tbk = window[3][-STEP:]
    logit_tbk = f_out(*window)[0].reshape(target_tbk.shape)
    n_frames = max((~np.isnan(target_tbk)).any(axis=-1).sum(), 1)
    g = j_o.T @ _output_hessian(loss_type, logit_tbk, target_tbk) @ j_o + structural * j_h.T @ j_h / n_frames
    v = np.random.default_rng(5).standard_normal(j_o.shape[1])
    np.testing.assert_allclose(functions.f_gv(v, structural, *window), g @ v, rtol=1e-5, atol=1e-8)
    # and the cost is the loss the trainer trains: cross-entropy on the logits
    cost, grad_j = functions.f_grad(*window)
    assert float(functions.f_cost(*window)) == pytest.approx(float(cost))
    theta, h = hf.get_flat(), 1e-6
    e = np.zeros_like(theta)
    e[0] = h
    hf.set_flat(theta + e)
    plus = float(functions.f_cost(*window))
    hf.set_flat(theta - e)
    minus = float(functions.f_cost(*window))
    hf.set_flat(theta)
    assert grad_j[0] == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-9)


def test_hf_steps_lower_a_cross_entropy_and_never_raise_it():
    net = make_net("float64", target_dim=3, output_activation="softmax")
    graph = build_net_graph(net, step_size=STEP, loss_type="xent")
    functions = compile_functions(graph, mode=MODE)
    hf = HessianFree(graph.params, functions, HFSettings(max_cg_iters=30, init_damping=0.1))
    window = _categorical_window(net, "xent", batch=6, seed=9)
    reports = [hf.step(window, curvature_slice(window, 0.5)) for _ in range(4)]
    accepted = [r for r in reports if r.accepted]
    assert accepted and all(r.loss_after <= r.loss_before for r in accepted)
    assert reports[-1].loss_after < 0.8 * reports[0].loss_before


@pytest.mark.parametrize("loss_type, activation, message", [
    ("huber", "identity", "supports loss_type l2 | xent | bce; got 'huber'"),
    ("xent", "identity", "loss_type 'xent' trains 'softmax' outputs, but this net's output_activation is 'identity'"),
    ("l2", "sigmoid", "loss_type 'l2' trains 'identity' outputs, but this net's output_activation is 'sigmoid'"),
])
def test_hf_graph_refuses_a_loss_without_its_output_hessian_or_activation(loss_type, activation, message):
    net = make_net("float64", output_activation=activation)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_net_graph(net, step_size=STEP, loss_type=loss_type)


def test_softmax_hessian_times_matches_the_hessian_of_cross_entropy():
    s_z, s_r = tt.vector(dtype="float64"), tt.vector(dtype="float64")
    t = np.array([0.2, 0.5, 0.3])
    s_xent = -tt.sum(t * tt.log(tt.special.softmax(s_z)))
    f_h = th.function([s_z], th.gradient.hessian(s_xent, s_z), mode=MODE)
    f_hr = th.function([s_z, s_r], softmax_hessian_times(tt.special.softmax(s_z), s_r), mode=MODE)
    z, r = np.array([0.3, -1.0, 2.0]), np.array([1.0, 2.0, -0.5])
    np.testing.assert_allclose(f_hr(z, r), f_h(z) @ r, rtol=1e-10)


def _spd(n=20, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n))
    return q.T @ q + 0.5 * np.eye(n), rng.standard_normal(n)


def test_cg_solves_a_positive_definite_system():
    a, b = _spd()
    result = conjugate_gradient(lambda v: a @ v, b, np.zeros(20), max_iters=100, epsilon=1e-12)
    np.testing.assert_allclose(result.x, np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(result.phis, result.phis[1:]))


def test_cg_with_a_diagonal_preconditioner_solves_it_too():
    a, b = _spd(seed=1)
    result = conjugate_gradient(lambda v: a @ v, b, np.ones(20), max_iters=100, epsilon=1e-12,
                                precond_diag=np.diag(a).copy())
    np.testing.assert_allclose(result.x, np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)


def test_cg_keeps_iterates_at_geometric_iterations_and_the_last():
    a, b = _spd(n=200, seed=2)
    result = conjugate_gradient(lambda v: a @ v, b, np.zeros(200), max_iters=30)
    kept = [i for i, _ in result.iterates]
    expected = sorted({math.ceil(1.3 ** j) for j in range(20) if 1.3 ** j <= 31} | {result.iterations})
    assert kept == [i for i in expected if i <= result.iterations]


def test_cg_stops_on_relative_progress():
    a = np.diag(np.linspace(1.0, 1e4, 400))
    b = np.ones(400)
    result = conjugate_gradient(lambda v: a @ v, b, np.zeros(400), max_iters=250, epsilon=5e-4)
    phis = result.phis

    def progress_stalled(i):
        k = max(10, int(0.1 * i))
        return i > k and phis[i] < 0 and (phis[i] - phis[i - k]) / phis[i] < k * 5e-4

    assert result.iterations < 250
    assert [i for i in range(1, result.iterations + 1) if progress_stalled(i)] == [result.iterations]


class _Quadratic:
    """HFFunctions of f(θ) = ½ θᵀAθ − bᵀθ on one shared vector: G = A exactly."""

    def __init__(self, a, b, v_theta):
        self.a, self.b, self.v_theta = a, b, v_theta

    def f_cost(self, *batch):
        theta = self.v_theta.get_value()
        return 0.5 * theta @ self.a @ theta - self.b @ theta

    def f_grad(self, *batch):
        return self.f_cost(), self.a @ self.v_theta.get_value() - self.b

    def f_gv(self, v_j, structural, *batch):
        return self.a @ v_j


def test_step_on_an_exact_quadratic_has_rho_one_and_seeds_cg_with_the_decayed_direction(monkeypatch):
    import sophia.optim.hessian_free as hf_module
    a, b = _spd(seed=5)
    v_theta = th.shared(np.zeros(20))
    hf = HessianFree([v_theta], _Quadratic(a, b, v_theta), HFSettings(max_cg_iters=3, init_damping=1.0))
    first = hf.step((), ())
    assert first.rho == pytest.approx(1.0) and first.next_damping == pytest.approx(2 / 3)
    assert first.alpha == 1.0 and first.loss_after < first.loss_before
    seeds, real_cg = [], hf_module.conjugate_gradient
    np.testing.assert_allclose(hf.direction_j, real_cg(lambda v: a @ v + v, b, np.zeros(20), 3).x)  # the last CG iterate
    monkeypatch.setattr(hf_module, "conjugate_gradient", lambda apply_a, b, x0, *args: seeds.append(x0) or real_cg(apply_a, b, x0, *args))
    direction_j = hf.direction_j.copy()
    hf.step((), ())
    np.testing.assert_allclose(seeds[0], 0.95 * direction_j)


def test_backtrack_returns_the_best_kept_iterate_not_the_last():
    a, b = _spd(seed=4)
    result = conjugate_gradient(lambda v: a @ v, b, np.zeros(20), max_iters=20, epsilon=1e-12)
    x_star = result.iterates[2][1]                   # an objective that prefers an early iterate
    chosen, x, f = backtrack(result.iterates, lambda x: float(np.sum((x - x_star) ** 2)))
    assert chosen == result.iterates[2][0] != result.iterations
    assert f == min(np.sum((x - x_star) ** 2) for _, x in result.iterates)


def test_backtrack_never_chooses_an_iterate_whose_objective_is_nan():
    """A far-out CG iterate can overflow the loss (NaN); NaN compares false with
    everything, so kept first it would stay the best. It counts as +inf instead."""
    values = {1: math.nan, 2: 3.0, 4: 2.0, 6: math.nan}
    iterates = [(i, np.array([float(i)])) for i in values]
    assert backtrack(iterates, lambda x: values[int(x[0])])[0] == 4
    i, _, f = backtrack([(1, np.zeros(1))], lambda x: math.nan)
    assert (i, f) == (1, math.inf)                 # all NaN: rho is then -inf and λ grows


def test_armijo_line_search_shrinks_until_sufficient_decrease():
    f = lambda alpha: (alpha - 0.1) ** 2            # slope at 0: −0.2, f0 = 0.01
    alpha, f_alpha = armijo_line_search(f, 0.01, -0.2)
    assert alpha == pytest.approx(0.8 ** 8)          # f ≤ f0 + 0.01 α slope ⇔ α ≤ 0.198: 0.8⁸
    assert f_alpha <= 0.01 + 1e-2 * alpha * -0.2
    assert armijo_line_search(f, 0.01, -0.2, max_steps=3) == (0.0, 0.01)
    assert armijo_line_search(f, 0.01, 0.5) == (0.0, 0.01)   # not a descent direction


def test_levenberg_marquardt_on_scripted_rhos():
    s, lam, seen = HFSettings(), 1.0, []
    for rho in [0.9, 0.1, 0.5, float("nan"), float("-inf")]:
        lam = levenberg_marquardt(lam, rho, s)
        seen.append(lam)
    np.testing.assert_allclose(seen, [2 / 3, 1.0, 1.0, 1.5, 2.25])


def test_every_curvature_product_of_a_step_is_taken_at_the_steps_parameters(tiny):
    """CG's products and the reduction ratio's model use G at θ, the parameters the step
    started from, though backtracking evaluates the loss elsewhere in between."""
    net, graph, functions, _, _ = tiny
    start = {n: v.get_value().copy() for n, v in net.v_params.items()}
    seen = []

    class Recording:
        f_cost, f_grad = functions.f_cost, functions.f_grad

        def f_gv(self, *args):
            seen.append(hf.get_flat())
            return functions.f_gv(*args)

    hf = HessianFree(graph.params, Recording(), HFSettings(max_cg_iters=10, init_damping=0.1))
    window = make_window(net, frames=5, batch=5, seed=7)
    theta = hf.get_flat()
    hf.step(window, curvature_slice(window, 0.4))
    assert len(seen) > 2
    for point in seen:
        np.testing.assert_array_equal(point, theta)
    for n, v in net.v_params.items():
        v.set_value(start[n])


def test_hf_steps_never_increase_the_objective(tiny):
    net, graph, functions, _, _ = tiny
    start = {n: v.get_value().copy() for n, v in net.v_params.items()}
    hf = HessianFree(graph.params, functions, HFSettings(max_cg_iters=30, init_damping=0.1))
    window = make_window(net, frames=5, batch=5, seed=7)
    reports = [hf.step(window, curvature_slice(window, 0.4)) for _ in range(4)]
    accepted = [r for r in reports if r.accepted]
    assert accepted, reports
    for r in accepted:
        assert r.loss_after <= r.loss_before
    assert float(functions.f_cost(*window)) == pytest.approx(reports[-1].loss_after)
    assert reports[-1].loss_after < reports[0].loss_before
    for n, v in net.v_params.items():                # leave the shared net as the next test found it
        v.set_value(start[n])


def test_state_round_trip_and_rollback_reset(tiny):
    _, graph, functions, _, _ = tiny
    hf = HessianFree(graph.params, functions, HFSettings(init_damping=2.0))
    hf.damping, hf.direction_j = 0.5, np.arange(hf.direction_j.size, dtype=float)
    other = HessianFree(graph.params, functions, HFSettings(init_damping=2.0))
    other.load_state(hf.state_dict())
    assert other.damping == 0.5 and np.array_equal(other.direction_j, hf.direction_j)
    with pytest.raises(ValueError):
        other.load_state({"hf.damping": 1.0, "hf.direction_j": np.zeros(3)})
    other.rollback_reset()
    assert other.damping == 2.0 and not other.direction_j.any()


def test_curvature_slice_takes_the_first_streams():
    window = tuple(np.zeros((4, 10, 2)) for _ in range(4))
    assert curvature_slice(window, 0.2)[0].shape == (4, 2, 2)
    assert curvature_slice(window, 0.01)[3].shape == (4, 1, 2)
