"""Backend checks: each compile mode trains exactly like FAST_COMPILE.

JAX (the ``test`` extra installs it) runs in the default test run: it is the GPU
path, and the one backend whose tracing needs every shape concrete. The others are
slow; run them with ``pytest -m slow``. The default test run disables PyTensor's C
compiler (``tests/conftest.py``); to check the C backend too, run
``PYTENSOR_FLAGS=cxx=g++ pytest -m slow tests/test_modes.py``.
"""
import importlib.util

import numpy as np
import pytest
from pytensor.link.basic import PerformLinker

from sophia.graph import modes
from sophia.graph.modes import AUTO_FUSED, AUTO_LOOPED, compile_mode, resolve
from sophia.options import OptionError, TrainOptions
from tests.graph_support import make_net, make_window

MODES = ["FAST_RUN", "CVM", "NUMBA"]
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
NETS = {
    "lstm_fused": dict(unit_type="lstm", net_depth=2, learn_id_embedding=True),
    "gru_clock_bn": dict(unit_type="gru", batch_norm=True, learn_clock_params=True),
}


def train_three_steps(mode, net_options):
    net = make_net(dtype="float32", **net_options)
    options = TrainOptions(batch_size=3, window_size=5, step_size=3, compile_mode=mode)
    f_train_step, _, _ = net.compile_train_step(options)
    window = make_window(net, frames=5, batch=3)
    losses = [f_train_step(*window, np.float32(0.01))[0] for _ in range(3)]
    return np.array(losses), net.get_values()


@pytest.mark.slow
@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("mode", MODES)
def test_mode_trains_like_fast_compile(mode, net_name):
    ref_losses, ref_values = train_three_steps("FAST_COMPILE", NETS[net_name])
    losses, values = train_three_steps(mode, NETS[net_name])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for name, value in values.items():
        np.testing.assert_allclose(value, ref_values[name], rtol=1e-3, atol=1e-5, err_msg=name)


@needs_jax
@pytest.mark.parametrize("net_name", list(NETS))
def test_jax_trains_like_fast_compile(net_name):
    """Static window and batch sizes and parameter shapes let JAX trace the whole
    training graph (scan and its gradient included)."""
    ref_losses, ref_values = train_three_steps("FAST_COMPILE", NETS[net_name])
    losses, values = train_three_steps("JAX", NETS[net_name])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for name, value in values.items():
        np.testing.assert_allclose(value, ref_values[name], rtol=1e-3, atol=1e-5, err_msg=name)


@needs_jax
def test_jax_streams_frame_by_frame_like_fast_compile():
    """One-frame ``f_infer`` under JAX, with ID embedding and clock gates: the outputs of
    FAST_COMPILE's, and the same compiled function serves another number of streams."""
    outputs = {}
    for mode in ("FAST_COMPILE", "JAX"):
        net = make_net(dtype="float32", unit_type="gru", learn_clock_params=True, learn_id_embedding=True)
        x, t, ids, _ = make_window(net, frames=6, batch=3)
        f_infer, v_states = net.compile_infer(window_size=1, mode=mode)
        net.reset_states(v_states, batch_size=3)
        outputs[mode] = np.concatenate([np.asarray(f_infer(x[k:k + 1], t[k:k + 1], ids[k:k + 1]))
                                        for k in range(6)])
        net.reset_states(v_states, batch_size=2)
        assert np.asarray(f_infer(x[:1, :2], t[:1, :2], ids[:1, :2])).shape == (1, 2, net.options.target_dim)
    np.testing.assert_allclose(outputs["JAX"], outputs["FAST_COMPILE"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options,unroll,expected", [
    (dict(unit_type="lstm"), False, AUTO_FUSED),          # fused recurrence: thin graph around it
    (dict(unit_type="fc"), True, AUTO_FUSED),             # no recurrence at all
    (dict(unit_type="lstm"), True, AUTO_LOOPED),          # unrolled loop
    (dict(unit_type="rnn"), False, AUTO_LOOPED),           # the plain RNN unit: scan stays
])
def test_auto_mode_follows_the_graph(options, unroll, expected):
    net = make_net(**options)
    mode, _ = net.compile_plan("auto", training=True, unroll=unroll)
    looped = expected == AUTO_LOOPED
    assert resolve("auto", looped) == expected
    assert mode is compile_mode("auto", looped)
    assert (mode is compile_mode(AUTO_LOOPED)) == looped          # looped: the C backend as is
    assert isinstance(mode.linker, PerformLinker) != looped       # fused: Python code in order


def test_auto_mode_trains_a_fused_net_like_fast_compile():
    """``auto`` on a fused graph keeps only the merge rewrite: same numbers as FAST_COMPILE."""
    ref_losses, ref_values = train_three_steps("FAST_COMPILE", NETS["lstm_fused"])
    losses, values = train_three_steps("auto", NETS["lstm_fused"])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for name, value in values.items():
        np.testing.assert_allclose(value, ref_values[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(OptionError, match="compile_mode must be one of"):
        resolve("TURBO")


def test_without_a_blas_the_c_backend_keeps_plain_products_and_does_not_warn(caplog):
    """No BLAS to link: no Gemm (whose C code would warn and run a stand-in); the
    graph still computes the same numbers."""
    import logging

    import pytensor
    import pytensor.tensor as tt
    from pytensor.tensor.blas import Gemm

    x, w, b = tt.matrix("x"), tt.matrix("w"), tt.matrix("b")
    with pytensor.config.change_flags(blas__ldflags=""), caplog.at_level(logging.WARNING):
        f = pytensor.function([x, w, b], tt.dot(x, w) + 2 * b, mode=compile_mode("CVM"))
        rng = np.random.default_rng(0)
        args = [rng.standard_normal(s).astype(pytensor.config.floatX) for s in ((3, 4), (4, 5), (3, 5))]
        np.testing.assert_allclose(f(*args), args[0] @ args[1] + 2 * args[2], rtol=1e-5)
    assert not any(isinstance(node.op, Gemm) for node in f.maker.fgraph.toposort())
    assert not [r for r in caplog.records if "BLAS" in r.getMessage()]


def test_hessian_free_runs_under_jax_in_auto_where_jax_is_installed(monkeypatch):
    assert modes.hessian_free_mode("CVM") == "CVM"
    assert modes.hessian_free_mode("FAST_COMPILE") == "FAST_COMPILE"
    found = importlib.util.find_spec("jax") is not None
    assert modes.hessian_free_mode("auto") == ("JAX" if found else modes.AUTO_LOOPED)
    monkeypatch.setattr(modes.importlib.util, "find_spec", lambda name: None)
    assert modes.hessian_free_mode("auto") == modes.AUTO_LOOPED
