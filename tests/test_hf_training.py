"""update_type = "hessian_free" through the trainer: its options, the batches HF sees,
a rollback, a real run on a tiny adding problem, and --resume of one."""
import dataclasses
import importlib.util
import io
from dataclasses import fields

import numpy as np
import pytest

from sophia.data.make import make_dataset
from sophia.optim.hessian_free import HessianFree, HFSettings
from sophia.options import (ModelOptions, OptionError, TrainOptions, apply_overrides,
                            option_names)
from sophia.training import hf_training
from sophia.training.cli import main
from sophia.training.iterator import Window
from sophia.training.trainer import Trainer, check_batch_norm
from sophia.workspace import PARAMS, Workspace, load_run_options
from train_support import sets

HF = dict(update_type="hessian_free", window_size=8, step_size=8)
# A tiny tanh RNN on adding sequences of 12 or 13 frames: whole sequences fit a window.
RUN = dict(unit_type="rnn", init_type="sparse", orthogonal_recurrent=False, net_width=6,
           net_depth=1, batch_size=8, window_size=13, step_size=13, update_type="hessian_free",
           compile_mode="FAST_COMPILE", frames_per_epoch=300, max_epochs=3, max_retry=0,
           hf_max_cg_iters=40, hf_init_damping=0.1)



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "adding"
    make_dataset("adding", out, seed=1, counts={"train": 40, "dev": 10, "test": 1}, T=12)
    return str(out)


# -- options ------------------------------------------------------------------------
def test_hf_settings_are_the_hf_options_one_to_one_with_the_papers_defaults():
    assert [f"hf_{f.name}" for f in fields(HFSettings)] == [
        n for n in option_names(TrainOptions) if n.startswith("hf_")]
    s = HFSettings()
    assert (s.max_cg_iters, s.cg_decay, s.lm_shrink, s.lm_grow, s.rho_low, s.rho_high,
            s.cg_epsilon, s.backtrack_base, s.structural_damping) == (
        250, 0.95, 2 / 3, 1.5, 0.25, 0.75, 5e-4, 1.3, 0.03)
    assert HFSettings.from_options(TrainOptions()) == s
    o = apply_overrides(TrainOptions(), {**HF, "hf_max_cg_iters": 7, "hf_lm_grow": 2.0})
    assert HFSettings.from_options(o) == dataclasses.replace(s, max_cg_iters=7, lm_grow=2.0)


@pytest.mark.parametrize("overrides, message", [
    ({**HF, "force_type": "rmsprop", "ema_decay": 0.5},
     "update_type 'hessian_free' does not use force_type, ema_decay: leave them at their defaults"),
    ({**HF, "grad_norm_clip": 1.0, "update_mu": 0.5},
     "does not use update_mu, grad_norm_clip"),
    ({**HF, "loss_type": "xent", "label_smoothing": 0.1},
     "update_type 'hessian_free' does not use label_smoothing: leave them at their defaults"),
    ({**HF, "loss_type": "huber"}, r"supports loss_type l2 \| xent \| bce, not 'huber'"),
    ({**HF, "step_size": 4},
     r"needs step_size = window_size \(got 4 and 8\): HF starts every window from zero states, "
     "so no state is carried between windows"),
    ({"hf_max_cg_iters": 10, "hf_cg_decay": 0.5},
     "hf_max_cg_iters, hf_cg_decay only apply to update_type 'hessian_free', not 'sgd'"),
    ({**HF, "hf_curvature_batch_fraction": 0.0},
     "'hf_curvature_batch_fraction' must be > 0.0 and <= 1.0; got 0.0"),
    ({**HF, "hf_rho_low": 0.8}, r"hf_rho_low \(0.8\) must be <= hf_rho_high \(0.75\)"),
    ({**HF, "hf_backtrack_base": 1.0}, "'hf_backtrack_base' must be > 1.0"),
])
def test_options_that_do_not_go_with_hessian_free_are_errors_naming_them(overrides, message):
    with pytest.raises(OptionError, match=message):
        apply_overrides(TrainOptions(), overrides)


def test_hessian_free_with_batch_norm_is_an_error():
    with pytest.raises(OptionError, match="batch_norm cannot train with update_type 'hessian_free'"):
        check_batch_norm(ModelOptions(batch_norm=True), TrainOptions(**HF), dataset=None)


# -- the batches HF sees ----------------------------------------------------------------
def test_zero_state_batch_leaves_out_targets_of_sequences_begun_in_an_earlier_window():
    time_tb = np.array([[5, 0, -1], [6, 1, -1], [0, 2, 0], [1, 3, 1]], np.float32)
    target_tbk = np.arange(12, dtype=np.float32).reshape(4, 3, 1)
    window = Window(np.zeros((4, 3, 2), np.float32), time_tb, np.zeros((4, 3), np.int32),
                    target_tbk, 12)
    batch = hf_training.zero_state_batch(window)
    expected = target_tbk.copy()
    expected[:2, 0] = np.nan               # stream 0 continues a sequence until its reset at frame 2
    np.testing.assert_array_equal(batch[3], expected)
    assert batch[3].dtype == np.float32 and not np.isnan(target_tbk).any()   # the window is untouched


# -- a rollback, with a fake objective (nothing compiled) ---------------------------------
def test_a_rollback_reloads_the_pivot_and_resets_lambda_and_the_cg_direction(data_dir, tmp_path, monkeypatch):
    train = TrainOptions(update_type="hessian_free", batch_size=4, window_size=13, step_size=13,
                         frames_per_epoch=100, max_epochs=2, max_retry=0, hf_init_damping=2.0,
                         hf_max_cg_iters=3)
    trainer = Trainer(ModelOptions(unit_type="rnn", net_width=3, net_depth=1), train, data_dir,
                      str(tmp_path / "ws"), out=io.StringIO())
    initial = np.concatenate([v.get_value().ravel() for v in trainer.net.v_params.values()])
    seen, holder = [], {}

    class Quadratic:                       # f(θ) = ½ |θ − 1|²: every step is exact, λ shrinks
        def f_cost(self, *batch):
            return 0.5 * float(np.sum((holder["hf"].get_flat() - 1.0) ** 2))

        def f_grad(self, *batch):
            hf = holder["hf"]
            seen.append((len(trainer.ws.read_metrics()), hf.damping, bool(hf.direction_j.any()),
                         hf.get_flat().copy()))
            return self.f_cost(), hf.get_flat() - 1.0

        def f_gv(self, v_j, structural, *batch):
            return v_j

    def compile_hf(net, o):
        holder["hf"] = HessianFree(list(net.v_params.values()), Quadratic(), HFSettings.from_options(o))
        return holder["hf"]

    monkeypatch.setattr(hf_training, "compile_hf", compile_hf)
    monkeypatch.setattr(trainer.net, "compile_fwd_propagate",          # dev loss never improves
                        lambda o: (lambda *inputs: (0.5, 1.0, 0.7), trainer.net.new_states(4, "eval")))
    trainer.run()
    records = trainer.ws.read_metrics()
    assert records[1]["decision"].startswith("rollback: lr 0.001 -> 0.0005")
    first = [s for s in seen if s[0] == 1]          # epoch 1's steps (one record written)
    second = [s for s in seen if s[0] == 2]         # epoch 2's, after the rollback
    assert len(first) >= 2 and second
    assert first[-1][1] < 2.0 and first[-1][2]      # λ had shrunk, the direction was set
    assert records[1]["hf_damping"] < 2.0 and records[1]["hf_steps"] == len(first)
    assert second[0][1] == 2.0 and not second[0][2]  # reset by the rollback
    np.testing.assert_allclose(second[0][3], initial, rtol=0, atol=1e-7)   # the pivot: the initial model
    assert "HF step on the scan engine" in trainer.out.getvalue()


# -- real runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_run(data_dir, tmp_path_factory):
    """A 3-epoch HF run through train.py's main; returns (workspace, its log)."""
    ws = str(tmp_path_factory.mktemp("ws") / "hf")
    out = io.StringIO()
    import contextlib
    with contextlib.redirect_stdout(out):
        assert main(["--data_dir", data_dir, "--save_to", ws, "--seed", "2", *sets(**RUN)]) == 0
    return ws, out.getvalue()


def test_an_hf_run_lowers_the_dev_loss_and_writes_the_workspace(hf_run):
    ws_path, log = hf_run
    ws = Workspace(ws_path, create=False)
    records = ws.read_metrics()
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    initial = records[0]["dev_loss"]
    assert min(r["dev_loss"] for r in records[1:]) < 0.5 * initial
    for r in records[1:]:
        assert r["hf_steps"] > 0 and r["hf_damping"] > 0 and r["hf_cg_iterations"] >= 1
    assert "HF step on the scan engine (the fused/oneDNN engines have no R-op), compiled FAST_COMPILE" in log
    assert " HF " in log and "steps" in log
    assert ws.has(PARAMS) and load_run_options(ws).train.update_type == "hessian_free"


def test_an_hf_run_stopped_and_resumed_ends_as_the_run_left_alone(hf_run, data_dir, tmp_path):
    alone, _ = hf_run
    ws = str(tmp_path / "stopped")
    quiet = io.StringIO()
    import contextlib
    with contextlib.redirect_stdout(quiet):
        assert main(["--data_dir", data_dir, "--save_to", ws, "--seed", "2",
                     *sets(**{**RUN, "max_epochs": 1})]) == 0
        assert main(["--resume", ws, "--set", f"max_epochs={RUN['max_epochs']}"]) == 0
    fields_ = ("epoch", "train_loss", "dev_loss", "hf_steps", "hf_rho", "hf_damping", "hf_cg_iterations")
    want = [[r.get(k) for k in fields_] for r in Workspace(alone, create=False).read_metrics()]
    have = [[r.get(k) for k in fields_] for r in Workspace(ws, create=False).read_metrics()]
    assert len(have) == len(want) == RUN["max_epochs"] + 1
    np.testing.assert_allclose(np.array(have, float), np.array(want, float), rtol=0, atol=1e-6)
    a, b = (Workspace(w, create=False).load_arrays("params") for w in (alone, ws))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.slow                      # 75 s: the GN products of xent are checked fast in test_hessian_free.py
def test_an_hf_run_with_cross_entropy_learns_temporal_order(tmp_path):
    """loss_type xent under HF (softmax outputs, the paper's for its categorical problems):
    the dev cross-entropy falls well below the class prior's and most dev answers are right."""
    data = str(tmp_path / "data")
    make_dataset("temporal_order", data, seed=1, counts={"train": 400, "dev": 50, "test": 1},
                 T=10, variant="ms2")
    run = {**RUN, "batch_size": 100, "window_size": 11, "step_size": 11, "frames_per_epoch": 4400,
           "max_epochs": 4, "loss_type": "xent", "input_dim": 8, "target_dim": 4}
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--data_dir", data, "--save_to", str(tmp_path / "ws"), "--seed", "2", *sets(**run)]) == 0
    ws = Workspace(str(tmp_path / "ws"), create=False)
    records = ws.read_metrics()
    assert min(r["dev_loss"] for r in records[1:]) < 0.7 * records[0]["baseline"]
    assert max(r["dev_accuracy"] for r in records[1:]) >= 0.5          # chance: 0.25
    assert all(r["hf_steps"] > 0 and "train_accuracy" not in r for r in records[1:])   # HF counts no hits
    assert load_run_options(ws).model.output_activation == "softmax"


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_an_hf_epoch_under_jax_matches_fast_compile(data_dir, tmp_path):
    """compile_mode JAX: the HF functions' window and batch sizes are static (the gradient
    and the curvature batch each), so JAX traces them, and an epoch ends where
    FAST_COMPILE's does."""
    import contextlib
    records = {}
    for mode in ("FAST_COMPILE", "JAX"):
        ws = str(tmp_path / mode)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--data_dir", data_dir, "--save_to", ws, "--seed", "2",
                         *sets(**{**RUN, "compile_mode": mode, "max_epochs": 1})]) == 0
        records[mode] = Workspace(ws, create=False).read_metrics()[-1]
    for field in ("train_loss", "dev_loss", "hf_damping", "hf_cg_iterations"):
        assert records["JAX"][field] == pytest.approx(records["FAST_COMPILE"][field], rel=1e-3), field
