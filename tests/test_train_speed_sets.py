"""bench/train_speed.py's loss option sets: ``xent`` trains softmax cross-entropy on
one-hot targets and ``l2_10`` squared error on the same 10-wide output (the
reference model shrunk, so the check takes seconds; no speed is measured)."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "train_speed.py"
_spec = importlib.util.spec_from_file_location("train_speed", _PATH)
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)

TINY = dict(input_dim=3, target_dim=1, width=8, depth=1, batch=4, window=6, step=3)


def test_xent_windows_hold_one_hot_targets_and_l2_windows_real_ones(monkeypatch):
    monkeypatch.setattr(train_speed, "MODEL", TINY)
    (x, t, y), = train_speed._windows(np.random.default_rng(0), 1, 10, "xent")
    assert y.shape == (6, 4, 10) and np.all(y.sum(axis=-1) == 1) and set(np.unique(y)) == {0.0, 1.0}
    (x, t, y), = train_speed._windows(np.random.default_rng(0), 1, 10, "l2")
    assert y.shape == (6, 4, 10) and len(np.unique(y)) == y.size


@pytest.mark.parametrize("name", ["xent", "l2_10"])
def test_the_loss_sets_train_their_loss(monkeypatch, name):
    """At a small initialisation the outputs are near 0: xent's first loss is near
    ln 10 a target frame (a uniform softmax), l2's near the sum of the squared targets
    of the first window's step. The worker reports the loss summed over the step."""
    monkeypatch.setattr(train_speed, "MODEL", TINY)
    result = train_speed.sophia_worker("FAST_COMPILE", "scan", 1, 1, train_speed.OPTION_SETS[name])
    if name == "xent":
        expected = math.log(10) * TINY["batch"] * TINY["step"]
    else:
        (_, _, y), = train_speed._windows(np.random.default_rng(0), 1, 10, "l2")
        expected = float(np.sum(y[-TINY["step"]:] ** 2))
    assert result["first_loss"] == pytest.approx(expected, rel=0.1)
    assert result["frames_per_s"] > 0


def test_the_one_process_comparison_times_both_models_every_round(monkeypatch):
    """Sophia and PyTorch alternate in one process: one frames/s of each per round."""
    pytest.importorskip("torch")
    monkeypatch.setattr(train_speed, "MODEL", TINY)
    result = train_speed.same_process_worker("FAST_COMPILE", "scan", 1, 3)
    assert len(result["sophia_fps"]) == len(result["torch_fps"]) == 3
    assert all(f > 0 for f in result["sophia_fps"] + result["torch_fps"])
    summary = train_speed._same_process_summary(result)
    ratios = [a / b for a, b in zip(result["sophia_fps"], result["torch_fps"])]
    assert summary.endswith("(per round " + " ".join(f"{r:.2f}" for r in ratios) + ")")
