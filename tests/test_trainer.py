"""The training loop, for real: tiny nets (FAST_COMPILE) on small generated adding problems.

Each test compiles as few graphs as it can (one LSTM training graph takes
several seconds here); subprocess tests run ``train.py`` itself.
"""
import importlib.util
import io
import json
import math
import types
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from sophia.data.make import make_dataset
from sophia.options import ModelOptions, TrainOptions, from_dict
from sophia.training.cli import main
from sophia.data.dataset import Dataset
from sophia.training import checkpoint
from sophia.workspace import PARAMS, load_net, load_run_options
from sophia.training import trainer as trainer_module
from sophia.training.baselines import mean_baseline
from sophia.training.trainer import Trainer
from sophia.workspace import Workspace
from train_support import sets, train_py

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = dict(net_width=4, net_depth=1, batch_size=4, window_size=8, step_size=4,
            compile_mode="FAST_COMPILE", lr_init_val=0.01)




@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "adding12"
    make_dataset("adding", out, seed=5, counts={"train": 12, "dev": 4, "test": 1}, T=12)
    return str(out)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A workspace trained for 2 tiny epochs."""
    ws = str(tmp_path_factory.mktemp("ws") / "tiny")
    assert main(["--data_dir", tiny_data, "--save_to", ws, "--seed", "3",
                 *sets(**TINY, frames_per_epoch=60, max_epochs=2)]) == 0
    return ws


def test_mean_baseline_matches_numpy(tiny_data):
    dev = Dataset.open(tiny_data, "dev")
    targets = np.concatenate([dev.target(i) for i in range(len(dev))]).astype(np.float64)
    values = targets[~np.isnan(targets)]
    assert mean_baseline(dev, "l2") == pytest.approx(np.mean((values - values.mean()) ** 2))
    assert mean_baseline(dev, "l1") == pytest.approx(np.mean(np.abs(values - values.mean())))


def test_non_finite_loss_rolls_back_to_the_pivot(tiny_data, tmp_path):
    """The loop, with fake compiled functions: a NaN training loss forces a rollback."""
    train = TrainOptions(batch_size=4, window_size=8, step_size=4, frames_per_epoch=10,
                         max_epochs=4, max_retry=2, lr_init_val=0.01)
    trainer = Trainer(ModelOptions(net_width=4, net_depth=1), train, tiny_data,
                      str(tmp_path / "ws"), out=io.StringIO())
    v_param = next(iter(trainer.net.v_params.values()))
    initial = v_param.get_value()
    # (loss_sum, n_frames) per step = per epoch: fine, NaN, no target frame at all, fine
    steps, resets = iter([(1.0, 1.0), (math.nan, 1.0), (0.0, 0.0), (1.0, 1.0)]), []

    def f_train_step(*inputs):
        v_param.set_value(v_param.get_value() + 1)           # "training" moves the parameters
        return (*next(steps), 1.0, 0.0)

    def fake_compile():
        trainer.f_train_step, trainer.f_reset = f_train_step, lambda: resets.append(True)
        trainer.f_fwd = lambda *inputs: (0.5, 1.0, 0.7)       # dev loss never improves
        trainer.v_states = trainer.net.new_states(4, "train")
        trainer.v_eval_states = trainer.net.new_states(4, "eval")
        trainer.optimizer = types.SimpleNamespace(v_state=[])

    trainer.compile = fake_compile
    result = trainer.run()
    records = trainer.ws.read_metrics()
    assert [r["decision"] for r in records[1:4]] == [
        "worse (retry 1/2)", "non-finite loss; rollback: lr 0.01 -> 0.005", "worse (retry 1/2)"]
    assert records[2]["train_loss"] is None and records[3]["lr"] == 0.005
    assert records[3]["train_loss"] is None and records[3]["dev_loss"] == 0.5
    assert resets == [True]
    pivot = trainer.ws.load_arrays("snapshots/pivot")[v_param.name]
    np.testing.assert_array_equal(pivot, initial)             # the initial model
    np.testing.assert_array_equal(trainer.ws.load_arrays("params")[v_param.name], initial)
    assert result.epochs == 4 and result.stop_reason.endswith("stop: max_epochs reached")


def test_target_dev_max_error_stops_the_run(tiny_data, tmp_path, monkeypatch):
    """The loop, with fake compiled functions: the dev max error, not the loss, stops it;
    the final report evaluates a sample of a large training split."""
    monkeypatch.setattr(trainer_module, "FINAL_TRAIN_SAMPLE", 5)
    train = TrainOptions(batch_size=4, window_size=8, step_size=4, frames_per_epoch=10,
                         max_epochs=5, target_dev_max_error=0.04)
    trainer = Trainer(ModelOptions(net_width=4, net_depth=1), train, tiny_data,
                      str(tmp_path / "ws"), out=io.StringIO())
    # every dev window of epoch k reports max error schedule[k]; epoch 0 is the initial model
    schedule, epoch = [0.5, 0.2, 0.03, 0.01], [0]

    def f_train_step(*inputs):
        epoch[0] = len(trainer.ws.read_metrics())
        return 1.0, 1.0, 1.0, 1.0

    def fake_compile():
        trainer.f_train_step, trainer.f_reset = f_train_step, lambda: None
        trainer.f_fwd = lambda *inputs: (0.5, 1.0, schedule[epoch[0]])
        trainer.v_states = trainer.net.new_states(4, "train")
        trainer.v_eval_states = trainer.net.new_states(4, "eval")
        trainer.optimizer = types.SimpleNamespace(v_state=[])

    trainer.compile = fake_compile
    result = trainer.run()
    records = trainer.ws.read_metrics()
    assert [r["dev_max_error"] for r in records] == [0.5, 0.2, 0.03]
    assert result.epochs == 2 and result.stop_reason.startswith("stop: target_dev_max_error reached")
    assert "(on 5 of 12 sequences)" in trainer.out.getvalue()
    sample = trainer._train_sample()
    assert len(sample) == 5 and len({s.path for s in sample.sequences}) == 5


def test_workspace_contract(trained, tiny_data):
    ws = Workspace(trained, create=False)
    saved = json.loads((Path(trained) / "options.json").read_text())
    assert set(saved) == {"model", "train", "seed", "data_dir"}
    assert saved["seed"] == 3 and saved["data_dir"] == os.path.abspath(tiny_data)
    assert (saved["model"]["input_dim"], saved["model"]["target_dim"]) == (2, 1)
    assert from_dict(TrainOptions, saved["train"]).max_epochs == 2
    for name in ("params", "snapshots/pivot", "snapshots/resume"):
        assert ws.has(name), name
    assert not ws.has("snapshots/previous") and not ws.has("annealer")   # nothing unread is written
    assert ws.read_ids_order() == [f"{n:06d}" for n in range(12)]
    curve = Path(trained) / "learning_curve.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert curve.stat().st_size > 0
    else:                              # the plot is optional: no PNG, and no failed run
        assert not curve.exists()
    assert (Path(trained) / "README.txt").exists()           # preprocessing files copied
    records = ws.read_metrics()
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(r["frames"] >= 60 for r in records[1:])
    best = min(r["dev_loss"] for r in records)
    net, _ = load_net(trained)
    params = ws.load_arrays("params")
    assert all(np.array_equal(params[k], v) for k, v in net.get_values().items())
    assert checkpoint.load(ws).meta["annealer"]["best_loss"] == pytest.approx(best)


def test_load_from_starts_from_the_saved_best(trained, tiny_data, tmp_path, capsys):
    run = load_run_options(Workspace(trained, create=False))
    trainer = Trainer(run.model, TrainOptions(**{k: v for k, v in TINY.items()
                                                 if k in TrainOptions.__dataclass_fields__}),
                      tiny_data, str(tmp_path / "unused"), init_from=trained)
    saved = Workspace(trained, create=False).load_arrays("params")
    assert all(np.array_equal(saved[k], v) for k, v in trainer.net.get_values().items())

    ws2 = str(tmp_path / "resumed")
    best = min(r["dev_loss"] for r in Workspace(trained, create=False).read_metrics())
    assert main(["--load_from", trained, "--save_to", ws2, "--data_dir", tiny_data,
                 *sets(**{**TINY, "frames_per_epoch": 60, "max_epochs": 1, "lr_init_val": 0.001})]) == 0
    records = Workspace(ws2).read_metrics()
    assert records[0]["dev_loss"] == pytest.approx(best, rel=1e-5)      # the same model
    assert json.loads((Path(ws2) / "options.json").read_text())["model"] == \
        json.loads((Path(trained) / "options.json").read_text())["model"]
    assert records[1]["lr"] == 0.001
    capsys.readouterr()
    rc = main(["--load_from", trained, "--save_to", ws2, *sets(net_width=5, unit_type="gru")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "net_width: saved 4, requested 5" in err and "unit_type: saved 'lstm', requested 'gru'" in err


def test_target_train_streak_stops_mid_epoch_and_keeps_that_model(tiny_data, tmp_path):
    """The 1997 paper's rule with fake compiled functions: target frames in a row within
    the tolerance; a step with a wrong one restarts the count, a rollback clears it; the
    model kept is the one after the last step's update (the paper's online net, too)."""
    train = TrainOptions(batch_size=4, window_size=8, step_size=4, frames_per_epoch=60,
                         max_epochs=6, max_retry=0, target_train_streak=6, streak_tolerance=0.1)
    trainer = Trainer(ModelOptions(net_width=4, net_depth=1), train, tiny_data,
                      str(tmp_path / "ws"), out=io.StringIO())
    # per step: (max error, target frames); an epoch is >= 60 frames, i.e. 4 steps of 16 new
    steps = iter([(0.05, 2), (0.2, 2), (0.05, 2), (0.05, 1),   # epoch 1: streak 2, 0, 2, 3
                  (0.05, 2), (0.0, 0), (0.5, 1), (0.05, 1),    # epoch 2: 5, 5, 0, 1; rollback: 0
                  (0.05, 2), (0.05, 2), (0.01, 3),             # epoch 3: 2, 4, 7 >= 6: stop at once
                  (0.05, 2)])
    calls, v_weight = [], next(iter(trainer.net.v_params.values()))

    def f_train_step(*inputs):           # outputs from the entering weights, then an update
        calls.append(v_weight.get_value().copy())
        v_weight.set_value(v_weight.get_value() + 1)
        max_error, n_frames = next(steps)
        return 1.0 * n_frames, float(n_frames), 1.0, max_error

    dev_losses = [1.0, 0.5, 0.7, 0.9]                      # per evaluation: epoch 0, 1, 2, 3

    def fake_compile():
        trainer.f_train_step, trainer.f_reset = f_train_step, lambda: None
        trainer.f_fwd = lambda *inputs: (dev_losses[len(trainer.ws.read_metrics())], 1.0, 1.0)
        trainer.v_states = trainer.net.new_states(4, "train")
        trainer.v_eval_states = trainer.net.new_states(4, "eval")
        trainer.optimizer = types.SimpleNamespace(v_state=[])

    trainer.compile = fake_compile
    trainer.evaluate = lambda dataset: 0.9                  # the final report's evaluations
    result = trainer.run()
    records = trainer.ws.read_metrics()
    assert [r.get("train_streak") for r in records[1:]] == [3, 1, 7]
    assert records[2]["decision"].startswith("rollback")
    assert len(calls) == 11 and result.epochs == 3 and records[3]["frames"] == 48
    assert result.stop_reason == "stop: target_train_streak reached (model saved as best)"
    saved = trainer.ws.load_arrays(PARAMS)[next(iter(trainer.net.v_params))]
    np.testing.assert_array_equal(saved, calls[-1] + 1)  # after the last update, as the paper's


def test_eval_batch_size_changes_speed_not_the_dev_loss(trained, tiny_data, tmp_path):
    run = load_run_options(Workspace(trained, create=False))
    results = []
    for eval_batch in (0, 3):                 # 0 = batch_size (4): windows of 4 and of 3 streams
        options = TrainOptions(**{**{k: v for k, v in TINY.items() if k in TrainOptions.__dataclass_fields__},
                                  "eval_batch_size": eval_batch})
        trainer = Trainer(run.model, options, tiny_data, str(tmp_path / f"ws{eval_batch}"),
                          init_from=trained, out=io.StringIO())
        trainer.compile()
        results.append(trainer.measure(trainer.dev_set))
        assert trainer.v_eval_states[0].get_value().shape[0] == (eval_batch or 4)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)


def test_killed_run_leaves_a_loadable_workspace(tiny_data, tmp_path):
    """SIGKILL at random moments while every tiny epoch saves; resume each time."""
    ws, rng = str(tmp_path / "killed"), random.Random(7)
    argv = ["--data_dir", tiny_data, "--save_to", ws,
            *sets(**TINY, frames_per_epoch=20, lr_lower_bound=0, max_hours=0.05)]
    for attempt in range(3):
        proc = train_py(*argv, *(["--load_from", ws] if attempt else []))
        try:
            epochs_seen = 0
            while epochs_seen < 2:                  # compiled and saving epochs
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                epochs_seen += line.startswith("epoch ")
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        run = load_run_options(Workspace(ws, create=False))
        net, _ = load_net(ws)
        assert net.options == run.model
        w = Workspace(ws, create=False)
        net.set_values(w.load_arrays("snapshots/pivot"))
        if w.has("snapshots/resume"):
            saved = checkpoint.load(w)
            net.set_values(saved.net)
            assert math.isfinite(saved.meta["annealer"]["lr"])
        assert w.read_metrics()[0]["epoch"] == 0


def _run_learning(data_dir, ws, seed, extra=()):
    return train_py("--data_dir", data_dir, "--save_to", ws, "--seed", str(seed), *extra,
                    *sets(net_width=16, net_depth=1, batch_size=16, window_size=16, step_size=8,
                          compile_mode="FAST_COMPILE", grad_norm_clip=1.0, lr_init_val=0.01,
                          frames_per_epoch=8000, max_epochs=5))


def test_train_py_learns_the_adding_problem(tmp_path):
    """End to end: train.py beats the mean baseline by more than 2x (dev loss, metrics.jsonl)."""
    data, ws = str(tmp_path / "adding"), str(tmp_path / "ws")
    make_dataset("adding", data, seed=1, counts={"train": 600, "dev": 100, "test": 1}, T=12)
    proc = _run_learning(data, ws, seed=0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = Workspace(ws).read_metrics()
    best = min(r["dev_loss"] for r in records)
    assert best < 0.5 * records[-1]["baseline"], out
    assert "best model" in out and "baseline" in out


@pytest.mark.slow          # two full training runs in parallel processes (about 25 s)
def test_two_runs_at_once_same_seed_same_losses(tiny_data, tmp_path):
    """Concurrent instances (one compile cache, fresh and shared) finish; same seed, same run."""
    env = dict(os.environ, PYTENSOR_FLAGS=f"compiledir={tmp_path / 'cache'}")
    argv = [*sets(**TINY, frames_per_epoch=40, max_epochs=2), "--seed", "11", "--data_dir", tiny_data]
    procs = [train_py(*argv, "--save_to", str(tmp_path / f"ws{n}"), env=env) for n in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    losses = [[r.get("dev_loss") for r in Workspace(tmp_path / f"ws{n}").read_metrics()] for n in range(2)]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_ema_decay_evaluates_and_saves_the_average_and_trains_on_from_the_live_weights(tiny_data, tmp_path):
    options = {k: v for k, v in TINY.items() if k in TrainOptions.__dataclass_fields__}
    train = TrainOptions(**options, frames_per_epoch=60, max_epochs=2, max_retry=5, ema_decay=0.5)
    trainer = Trainer(ModelOptions(net_width=4, net_depth=1), train, tiny_data, str(tmp_path / "ws"),
                      out=io.StringIO())
    names, seen = list(trainer.net.v_params), {"start": [], "end": [], "evaluated": [], "best": []}
    train_frames, obey = trainer._train_frames, trainer._obey

    def params():
        return [trainer.net.v_params[n].get_value().copy() for n in names]

    def recording_train_frames(lr, label):
        seen["start"].append(params())
        result = train_frames(lr, label)
        seen["end"].append((params(), trainer.optimizer.averaged_values()))
        return result

    def recording_obey(decision):
        seen["evaluated"].append(params())
        seen["best"].append(decision.save_best)
        obey(decision)

    trainer._train_frames, trainer._obey = recording_train_frames, recording_obey
    trainer.run()
    (live1, average1), (live2, average2) = seen["end"]
    assert not np.allclose(live1[0], average1[0])                 # the average lags the live weights
    for got, want in [(seen["evaluated"][0], average1), (seen["evaluated"][1], average2),
                      (seen["start"][1], live1)]:                  # epoch 2 trains on from live1
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert any(seen["best"])
    best_average = (average1, average2)[max(i for i, best in enumerate(seen["best"]) if best)]
    saved, resume = trainer.ws.load_arrays(PARAMS), checkpoint.load(trainer.ws).net
    for n, average, live in zip(names, best_average, live2):
        np.testing.assert_array_equal(saved[n], average)         # the model saved is the average
        np.testing.assert_array_equal(resume[n], live)           # a resumed run goes on from live


def test_ema_decay_of_1_is_an_option_error():
    from sophia.options import OptionError
    with pytest.raises(OptionError, match="'ema_decay' must be >= 0.0 and < 1.0"):
        TrainOptions(ema_decay=1.0).validate()
