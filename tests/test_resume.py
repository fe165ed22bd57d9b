"""train.py --resume: a run killed with SIGKILL at random instants, then resumed,
ends exactly as the same run left alone (metrics.jsonl and params.npz)."""
import random
import signal
import subprocess

import numpy as np
import pytest

from sophia.data.make import make_dataset
from sophia.workspace import Workspace
from train_support import sets, train_py

# Small and fast, with a high learning rate and little patience, so the run rolls
# back (the pivot, the optimizer reset and the learning rate all take part); with
# dropout and input noise, whose generator's state the checkpoint must carry too.
RUN = dict(net_width=8, net_depth=1, batch_size=4, window_size=8, step_size=4,
           compile_mode="FAST_COMPILE", frames_per_epoch=2000, max_epochs=9, max_retry=1,
           lr_init_val=0.05, lr_lower_bound=0, ema_decay=0.5, dropout=0.1, input_noise=0.05,
           weight_decay=0.01)
LOSS_FIELDS = ("epoch", "train_loss", "dev_loss", "dev_max_error", "train_streak", "baseline",
               "lr", "decision")




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "adding"
    make_dataset("adding", out, seed=2, counts={"train": 24, "dev": 6, "test": 1}, T=12)
    return str(out)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def kill_after_epoch_lines(proc, lines: int, delay: float):
    """Wait for ``lines`` epoch lines (the run is saving epochs), then SIGKILL after
    ``delay`` s; assert the run was still going (it was killed, not finished)."""
    seen = 0
    try:
        while seen < lines:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            seen += line.startswith("epoch ")
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill: make its epochs longer"


def losses(ws):
    return [tuple(r.get(k) for k in LOSS_FIELDS) for r in Workspace(ws, create=False).read_metrics()]


def test_a_killed_run_resumed_ends_as_the_run_left_alone(data_dir, tmp_path):
    alone, killed = str(tmp_path / "alone"), str(tmp_path / "killed")
    finish(train_py("--data_dir", data_dir, "--save_to", alone, *sets(**RUN)))
    rng = random.Random(11)
    kill_after_epoch_lines(train_py("--data_dir", data_dir, "--save_to", killed, *sets(**RUN)),
                           lines=2, delay=rng.uniform(0.0, 0.5))
    kill_after_epoch_lines(train_py("--resume", killed), lines=2, delay=rng.uniform(0.0, 0.5))
    out = finish(train_py("--resume", killed))
    assert "resumed" in out
    expected, got = losses(alone), losses(killed)
    assert any("rollback" in r[-1] for r in expected)             # the test covers a rollback
    assert [r[0] for r in got] == list(range(RUN["max_epochs"] + 1))
    for want, have in zip(expected, got):
        assert want[0] == have[0] and want[-1] == have[-1]        # epoch and decision
        np.testing.assert_allclose(np.array(have[1:-1], float), np.array(want[1:-1], float),
                                   rtol=0, atol=1e-6, err_msg=f"epoch {want[0]}")
    want_params = Workspace(alone, create=False).load_arrays("params")
    have_params = Workspace(killed, create=False).load_arrays("params")
    assert want_params.keys() == have_params.keys()
    for name in want_params:
        np.testing.assert_allclose(have_params[name], want_params[name], rtol=0, atol=1e-6, err_msg=name)


def test_resuming_a_finished_run_says_so(data_dir, tmp_path):
    ws = str(tmp_path / "done")
    finish(train_py("--data_dir", data_dir, "--save_to", ws, *sets(**{**RUN, "max_epochs": 1})))
    out = finish(train_py("--resume", ws))
    assert "the run has finished (" in out and "nothing to resume" in out


def test_resume_errors_name_what_differs_and_the_alternative(data_dir, tmp_path, capsys):
    from sophia.training.cli import main
    ws = tmp_path / "old"
    finish(train_py("--data_dir", data_dir, "--save_to", str(ws), *sets(**{**RUN, "max_epochs": 1})))

    assert main(["--resume", str(ws), "--set", "net_width=16", "--set", "unit_type=gru"]) == 2
    err = capsys.readouterr().err
    assert "net_width: saved 8, requested 16" in err and "unit_type: saved 'lstm', requested 'gru'" in err

    assert main(["--resume", str(ws), "--set", "batch_size=8"]) == 2
    assert "batch_size: saved 4, requested 8" in capsys.readouterr().err

    (ws / "snapshots" / "resume.npz").unlink()                    # e.g. a workspace of 0.1.0
    assert main(["--resume", str(ws)]) == 1
    err = capsys.readouterr().err
    assert "has no resumable state" in err and f"--load_from {ws}" in err


def test_a_resume_that_fails_leaves_the_workspace_as_it_was(data_dir, tmp_path, capsys):
    """A resume whose saved state does not fit (here: a data folder with fewer
    sequences than the saved iterator names) changes neither the saved options nor
    the data folder, so the same resume, with the right data, then goes on."""
    from sophia.training.cli import main
    ws = tmp_path / "old"
    finish(train_py("--data_dir", data_dir, "--save_to", str(ws), *sets(**{**RUN, "max_epochs": 1})))
    saved = (ws / "options.json").read_text()
    fewer = tmp_path / "fewer"
    make_dataset("adding", fewer, seed=2, counts={"train": 6, "dev": 6, "test": 1}, T=12)

    assert main(["--resume", str(ws), "--data_dir", str(fewer), "--set", "max_epochs=2"]) == 1
    assert "the saved training state does not fit this run" in capsys.readouterr().err
    assert (ws / "options.json").read_text() == saved

    assert main(["--resume", str(ws), "--set", "max_epochs=2"]) == 0
    assert [r["epoch"] for r in Workspace(ws, create=False).read_metrics()] == [0, 1, 2]


# Hessian-free: whole sequences in a window, no patience, so it rolls back too (the
# reset of lambda and the CG direction takes part); HF's state is in the checkpoint.
RUN_HF = dict(unit_type="rnn", init_type="sparse", orthogonal_recurrent="false", net_width=6,
              net_depth=1, batch_size=4, window_size=13, step_size=13,
              update_type="hessian_free", compile_mode="FAST_COMPILE", frames_per_epoch=600,
              max_epochs=8, max_retry=0, lr_lower_bound=0, hf_max_cg_iters=20,
              hf_init_damping=0.1)
HF_FIELDS = LOSS_FIELDS[:-1] + ("hf_steps", "hf_rho", "hf_damping", "hf_cg_iterations", "decision")


@pytest.mark.slow     # 4 processes compile HF graphs (~100 s on 2 cores); tests/test_hf_training.py has a fast stop-and-resume
def test_a_killed_hessian_free_run_resumed_ends_as_the_run_left_alone(data_dir, tmp_path):
    alone, killed = str(tmp_path / "alone"), str(tmp_path / "killed")
    finish(train_py("--data_dir", data_dir, "--save_to", alone, *sets(**RUN_HF)))
    rng = random.Random(5)
    kill_after_epoch_lines(train_py("--data_dir", data_dir, "--save_to", killed, *sets(**RUN_HF)),
                           lines=2, delay=rng.uniform(0.0, 0.5))
    kill_after_epoch_lines(train_py("--resume", killed), lines=2, delay=rng.uniform(0.0, 0.5))
    assert "resumed" in finish(train_py("--resume", killed))
    records = [[r.get(k) for k in HF_FIELDS] for r in Workspace(alone, create=False).read_metrics()]
    got = [[r.get(k) for k in HF_FIELDS] for r in Workspace(killed, create=False).read_metrics()]
    assert any("rollback" in r[-1] for r in records)
    assert [r[0] for r in got] == list(range(RUN_HF["max_epochs"] + 1))
    for want, have in zip(records, got):
        assert want[0] == have[0] and want[-1] == have[-1]
        np.testing.assert_allclose(np.array(have[1:-1], float), np.array(want[1:-1], float),
                                   rtol=0, atol=1e-6, err_msg=f"epoch {want[0]}")
    want_params = Workspace(alone, create=False).load_arrays("params")
    have_params = Workspace(killed, create=False).load_arrays("params")
    for name in want_params:
        np.testing.assert_allclose(have_params[name], want_params[name], rtol=0, atol=1e-6, err_msg=name)
