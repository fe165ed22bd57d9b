"""The workspace: round trips, atomic writes under SIGKILL, and the metrics log and plot."""
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sophia.training.metrics import format_epoch_line, plot_learning_curve
from sophia.workspace import Workspace, WorkspaceError

REPO_ROOT = Path(__file__).resolve().parents[1]

# Saves version v = start, start+1, ... of "snap" in a loop, printing v after each save.
WRITER = """
import sys, numpy as np
from sophia.workspace import Workspace
ws, v = Workspace(sys.argv[1]), int(sys.argv[2])
while True:
    ws.save_arrays("snap", {"a": np.full(1_000_000, v, dtype=np.float64),
                            "b": np.arange(500_000, dtype=np.int64) + v})
    print(v, flush=True)
    v += 1
"""


def version_of(arrays):
    """The version number of a writer's save, checking its content is consistent."""
    v = int(arrays["a"][0])
    assert set(arrays) == {"a", "b"}
    assert np.array_equal(arrays["a"], np.full(1_000_000, v, dtype=np.float64))
    assert np.array_equal(arrays["b"], np.arange(500_000, dtype=np.int64) + v)
    return v


def test_save_arrays_survives_sigkill_at_random_moments(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ws_dir = tmp_path / "ws"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    rng = random.Random(1234)
    for round_ in range(6):
        start = round_ * 1_000_000
        child = subprocess.Popen([sys.executable, str(script), str(ws_dir), str(start)],
                                 stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert child.stdout.readline().strip() == str(start)   # one save done
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            child.send_signal(signal.SIGKILL)
            reported = [int(line) for line in child.communicate()[0].split()]
        last_done = reported[-1] if reported else start
        v = version_of(Workspace(ws_dir).load_arrays("snap"))
        assert v in (last_done, last_done + 1)    # the last completed save, or the one after


def test_arrays_round_trip_with_parameter_names_in_subdirectories(tmp_path):
    ws = Workspace(tmp_path / "run")
    arrays = {"layer0.W_x": np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32),
              "layer0.b": np.zeros(8), "step": np.array(7, dtype=np.int64),
              "file": np.ones(2)}
    ws.save_arrays("snapshots/pivot", arrays)
    assert (tmp_path / "run" / "snapshots" / "pivot.npz").is_file()
    assert ws.has("snapshots/pivot") and not ws.has("snapshots/best")
    loaded = ws.load_arrays("snapshots/pivot")
    assert list(loaded) == list(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value)
    with np.load(tmp_path / "run" / "snapshots" / "pivot.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(arrays)   # a plain npz archive
    assert sorted(os.listdir(tmp_path / "run" / "snapshots")) == ["pivot.npz"]  # no temp left


def test_object_arrays_are_refused_and_the_old_file_kept(tmp_path):
    ws = Workspace(tmp_path)
    ws.save_arrays("best", {"w": np.ones(2)})
    with pytest.raises(ValueError):
        ws.save_arrays("best", {"w": np.array([{"x": 1}], dtype=object)})
    assert np.array_equal(ws.load_arrays("best")["w"], np.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["best.npz"]


def test_missing_or_corrupt_files_raise_errors_naming_them(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match="nothing.npz"):
        ws.load_arrays("nothing")
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WorkspaceError, match="torn.npz"):
        ws.load_arrays("torn")
    with pytest.raises(WorkspaceError, match="options.json"):
        ws.load_json("options")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WorkspaceError, match="bad.json"):
        ws.load_json("bad")
    with pytest.raises(WorkspaceError, match="log.txt"):
        ws.load_text("log.txt")
    assert isinstance(WorkspaceError("x"), ValueError)


def test_names_must_stay_inside_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "run")
    for name in ("../escape", "/etc/passwd", ""):
        with pytest.raises(ValueError):
            ws.save_text(name, "x")


def test_workspace_without_create_must_exist(tmp_path):
    with pytest.raises(WorkspaceError):
        Workspace(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_json_and_text_round_trip(tmp_path):
    ws = Workspace(tmp_path)
    obj = {"lr": 1e-3, "best_loss": None, "names": ["a", "b"], "nested": {"k": 1}}
    ws.save_json("annealer", obj)
    assert ws.load_json("annealer") == obj and ws.has("annealer")
    with pytest.raises(ValueError):
        ws.save_json("annealer", {"loss": math.nan})
    assert ws.load_json("annealer") == obj
    ws.save_text("train.log", "épöch 1\n")
    assert ws.load_text("train.log") == "épöch 1\n" and ws.has("train.log")


def test_ids_order_exact_bytes_and_round_trip(tmp_path):
    ws = Workspace(tmp_path)
    ids = ["seq-01", "seq 2", "ß3"]
    ws.write_ids_order(ids)
    assert (tmp_path / "ids.order").read_bytes() == "seq-01;seq 2;ß3".encode("utf-8")
    assert ws.read_ids_order() == ids
    ws.write_ids_order([])
    assert (tmp_path / "ids.order").read_bytes() == b"" and ws.read_ids_order() == []


@pytest.mark.parametrize("bad", ["a;b", "a\nb", "a\r", ""])
def test_ids_with_separators_are_refused_at_write_time(tmp_path, bad):
    ws = Workspace(tmp_path)
    ws.write_ids_order(["keep"])
    with pytest.raises(ValueError):
        ws.write_ids_order(["ok", bad])
    assert ws.read_ids_order() == ["keep"]


def test_copy_preprocessing_copies_root_files_except_lists(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "mean.matrix").write_bytes(b"\x00\x01mean")
    (data / "whitening.matrix").write_bytes(b"white")
    (data / "train.list").write_text("a\nb\n")
    (data / "train" / "a.bin").write_bytes(b"frames")
    ws = Workspace(tmp_path / "run")
    assert ws.copy_preprocessing(data) == ["mean.matrix", "whitening.matrix"]
    assert (tmp_path / "run" / "mean.matrix").read_bytes() == b"\x00\x01mean"
    assert (tmp_path / "run" / "whitening.matrix").read_bytes() == b"white"
    assert sorted(os.listdir(tmp_path / "run")) == ["mean.matrix", "whitening.matrix"]


def test_metrics_append_and_read_tolerate_a_torn_line(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.read_metrics() == []
    ws.append_metrics({"epoch": 1, "dev_loss": 0.5})
    ws.append_metrics({"epoch": 2, "dev_loss": math.nan, "lr": np.float32(0.5)})
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"epoch": 3, "dev_lo')                 # killed mid-append
    assert ws.read_metrics() == [{"epoch": 1, "dev_loss": 0.5},
                                 {"epoch": 2, "dev_loss": None, "lr": 0.5}]
    ws.append_metrics({"epoch": 3, "dev_loss": 0.4})     # the next run goes on
    assert [r["epoch"] for r in ws.read_metrics()] == [1, 2, 3]


def test_workspaces_in_several_processes_do_not_interfere(tmp_path):
    code = ("import sys, numpy as np\nfrom sophia.workspace import Workspace\n"
            "ws = Workspace(sys.argv[1])\n"
            "for i in range(20):\n"
            "    ws.save_arrays('snapshots/pivot', {'w': np.full(1000, float(sys.argv[2]))})\n"
            "    ws.append_metrics({'epoch': i, 'who': int(sys.argv[2])})\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    children = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"run{k}"), str(k)],
                                 env=env) for k in range(3)]
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]
    for k in range(3):
        ws = Workspace(tmp_path / f"run{k}", create=False)
        assert np.array_equal(ws.load_arrays("snapshots/pivot")["w"], np.full(1000, float(k)))
        assert [r["who"] for r in ws.read_metrics()] == [k] * 20


RECORDS = [{"epoch": e, "train_loss": 1.0 / e, "dev_loss": 1.2 / e, "baseline": 0.9,
            "lr": 1e-3, "decision": "new best", "frames": 1000 * e, "seconds": 1.0}
           for e in range(1, 6)]


def test_plot_learning_curve_writes_a_png_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    records = [dict(r) for r in RECORDS]
    records[2]["dev_loss"] = None                            # a NaN epoch, logged as null
    records[3]["decision"] = "rollback: lr 0.001 -> 0.0005"
    path = tmp_path / "curve.png"
    assert plot_learning_curve(records, path) is True
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert os.listdir(tmp_path) == ["curve.png"]
    assert plot_learning_curve([], tmp_path / "empty.png") is False
    assert not (tmp_path / "empty.png").exists()


def test_plot_learning_curve_without_matplotlib_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert plot_learning_curve(RECORDS, tmp_path / "curve.png") is False
    assert not (tmp_path / "curve.png").exists()


def test_format_epoch_line():
    line = format_epoch_line({"epoch": 3, "train_loss": 0.1, "dev_loss": 0.12, "baseline": 0.3,
                              "lr": 1e-3, "decision": "new best", "frames": 123456,
                              "seconds": 12.3})
    assert line == ("epoch 3  train 0.1  dev 0.12  (baseline 0.3)  lr 0.001  "
                    "10.0k frames/s  new best")
    assert format_epoch_line({"epoch": 4, "dev_loss": None}) == "epoch 4  dev n/a"


def test_saved_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    ws = Workspace(tmp_path / "ws")
    ws.save_json("options", {"a": 1})
    assert (tmp_path / "ws" / "options.json").stat().st_mode & 0o777 == 0o666 & ~umask
