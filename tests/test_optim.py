"""Optimizers: every force × update learns; Adam follows the paper; reset; clipping."""
import itertools

import numpy as np
import pytensor as th
import pytensor.tensor as tt
import pytest

from sophia.optim.updates import FORCES, UPDATES, Optimizer, clip_by_global_norm

MODE = "FAST_COMPILE"


def regression_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 4))
    y = x @ np.array([1.5, -2.0, 0.5, 1.0]) + 0.3
    return x, y


def compile_regression(force_type, update_type, **kwargs):
    x, y = regression_problem()
    v_w = th.shared(np.zeros(4), name="w")
    v_b = th.shared(np.zeros(()), name="b")
    s_loss = tt.mean(tt.sqr(tt.dot(x, v_w) + v_b - y))
    p_lr = tt.scalar("p_lr", dtype="float64")
    opt = Optimizer([v_w, v_b], tt.grad(s_loss, [v_w, v_b]), p_lr, force_type=force_type,
                    update_type=update_type, **kwargs)
    f_step = th.function([p_lr], s_loss, updates=opt.updates, mode=MODE)
    return f_step, opt, (v_w, v_b)


LEARNING_RATES = {"vanilla": 0.05, "rmsprop": 0.01, "adadelta": 1.0, "adam": 0.05, "amsgrad": 0.05}
EPSILONS = {"adadelta": 1e-3}   # Adadelta's first steps are ~sqrt(ε): 1e-6 needs thousands of steps


@pytest.mark.parametrize("force_type,update_type", list(itertools.product(FORCES, UPDATES)))
def test_every_force_and_update_lowers_the_loss(force_type, update_type):
    f_step, _, _ = compile_regression(force_type, update_type, update_mu=0.5,
                                      force_epsilon=EPSILONS.get(force_type, 1e-6))
    lr = LEARNING_RATES[force_type]
    first = f_step(lr)
    for _ in range(150):
        last = f_step(lr)
    assert last < 0.2 * first, (first, last)


def test_adam_follows_the_paper_update_rule():
    """Kingma & Ba (2015), Algorithm 1, on f(w) = Σ c·w² for a few steps."""
    c = np.array([1.0, 10.0, 0.1])
    v_w = th.shared(np.array([1.0, -2.0, 3.0]), name="w")
    p_lr = tt.scalar("p_lr", dtype="float64")
    b1, b2, eps = 0.8, 0.95, 1e-4
    opt = Optimizer([v_w], [tt.grad(tt.sum(c * v_w ** 2), v_w)], p_lr, force_type="adam",
                    update_type="sgd", adam_beta1=b1, adam_beta2=b2, force_epsilon=eps)
    f_step = th.function([p_lr], [], updates=opt.updates, mode=MODE)
    w, m, v = np.array([1.0, -2.0, 3.0]), np.zeros(3), np.zeros(3)
    for t in range(1, 6):
        g = 2 * c * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        w = w - 0.1 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        f_step(0.1)
        np.testing.assert_allclose(v_w.get_value(), w, rtol=1e-12)


def test_amsgrad_divides_by_the_largest_second_moment_so_far():
    """Reddi, Kale & Kumar (2018), AMSGrad with Adam's bias correction (PyTorch's rule), on
    gradients that shrink 100-fold after three steps: Adam's step grows then, AMSGrad's not."""
    v_w = th.shared(np.zeros(2), name="w")
    p_g, p_lr = tt.vector("p_g", dtype="float64"), tt.scalar("p_lr", dtype="float64")
    b1, b2, eps = 0.9, 0.99, 1e-8
    opt = Optimizer([v_w], [p_g], p_lr, force_type="amsgrad", update_type="sgd",
                    adam_beta1=b1, adam_beta2=b2, force_epsilon=eps)
    f_step = th.function([p_g, p_lr], [], updates=opt.updates, mode=MODE)
    w, m, v, v_max, steps = np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), []
    for t in range(1, 31):
        g = np.array([1.0, -0.5]) * (1.0 if t <= 3 else 0.01)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        v_max = np.maximum(v_max, v)
        step = 0.1 * (m / (1 - b1 ** t)) / (np.sqrt(v_max / (1 - b2 ** t)) + eps)
        w = w - step
        steps.append(np.abs(step).max())
        f_step(g, 0.1)
        np.testing.assert_allclose(v_w.get_value(), w, rtol=1e-12)
    assert max(steps[3:]) <= steps[2]        # shrinking gradients never enlarge the step
    assert {v.name for v in opt.v_state} == {"adam.t", "params.m", "params.v", "params.v_max"}


def test_reset_clears_all_optimizer_state():
    f_step, opt, _ = compile_regression("adam", "momentum")
    f_step(0.01)
    assert any(np.any(v.get_value() != 0) for v in opt.v_state)
    opt.compile_reset(MODE)()
    assert all(np.all(v.get_value() == 0) for v in opt.v_state)
    assert {v.name for v in opt.v_state} == {"adam.t", "params.m", "params.v", "params.velocity"}


def test_gradient_norm_clipping_scales_to_the_limit():
    g1, g2 = tt.vector(), tt.vector()
    clipped, norm = clip_by_global_norm([g1, g2], max_norm=1.0)
    f = th.function([g1, g2], clipped + [norm], mode=MODE)
    a, b, n = f(np.array([3.0, 0.0]), np.array([4.0]))
    assert n == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a, b]), [0.6, 0.0, 0.8])
    a, b, _ = f(np.array([0.3, 0.0]), np.array([0.4]))     # under the limit: unchanged
    np.testing.assert_allclose(np.concatenate([a, b]), [0.3, 0.0, 0.4])


def test_float32_parameters_stay_float32():
    v_w = th.shared(np.ones(3, "float32"), name="w")
    p_lr = tt.scalar("p_lr", dtype="float32")
    opt = Optimizer([v_w], [tt.grad(tt.sum(v_w ** 2), v_w)], p_lr, force_type="adadelta",
                    update_type="nesterov", grad_norm_clip=1.0)
    assert all(expr.dtype == "float32" for expr in opt.updates.values())


def test_unknown_force_is_a_clear_error():
    with pytest.raises(ValueError, match="force_type must be one of"):
        compile_regression("sgdx", "sgd")


def test_ema_is_the_bias_corrected_running_average_of_the_parameters():
    """a ← d·a + (1 − d)·p after each step, read as a / (1 − dᵗ); reset restarts it."""
    d = 0.8
    f_step, opt, (v_w, v_b) = compile_regression("adam", "sgd", ema_decay=d)
    np.testing.assert_array_equal(opt.averaged_values()[0], v_w.get_value())   # before a step
    raw, history = np.zeros(5), []
    for t in range(1, 7):
        f_step(0.05)
        p = np.concatenate([v_w.get_value(), [v_b.get_value()]])
        history.append(p)
        raw = d * raw + (1 - d) * p
        w_avg, b_avg = opt.averaged_values()
        np.testing.assert_allclose(np.concatenate([w_avg, [b_avg]]), raw / (1 - d ** t), rtol=1e-12)
    assert b_avg.shape == () and not np.allclose(w_avg, v_w.get_value())       # lags the live weights
    weights = d ** np.arange(5, -1, -1)                                          # an average of the path
    np.testing.assert_allclose(w_avg, (weights[:, None] * np.array(history)[:, :4]).sum(0) / weights.sum())
    opt.compile_reset(MODE)()
    f_step(0.05)
    np.testing.assert_allclose(opt.averaged_values()[0], v_w.get_value(), rtol=1e-12)


def test_ema_decay_outside_0_1_is_a_clear_error():
    with pytest.raises(ValueError, match="ema_decay must be in"):
        compile_regression("adam", "sgd", ema_decay=1.0)
