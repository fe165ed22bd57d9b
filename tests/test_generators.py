"""Tests of the dataset writer and the task generators in ``sophia/data/``.

Datasets are written to disk and read back with plain numpy ('<f4'), the way
the training programs read them, and the task semantics are checked on what
was read.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench_modules import load_bench
from sophia.data import cli as data_cli
from sophia.data.make import make_dataset
from sophia.data.tasks import TASKS, adding, frequency, multiplication, real, temporal_order
from sophia.data.writer import DatasetWriter

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL = {"train": 30, "dev": 5, "test": 5}


def read_split(root, split, input_dim, target_dim):
    """Return ``[(path, input_tj, target_tk, time_t or None)]`` of a split."""
    root = Path(root)
    text = (root / f"{split}.list").read_text()
    sequences = []
    for path in text.split("\n") if text else []:
        input_tj = np.fromfile(root / f"{path}.input", dtype="<f4").reshape(-1, input_dim)
        target_tk = np.fromfile(root / f"{path}.target", dtype="<f4").reshape(-1, target_dim)
        assert input_tj.shape[0] == target_tk.shape[0]
        time_file = root / f"{path}.time"
        time_t = np.fromfile(time_file, dtype="<f4") if time_file.exists() else None
        sequences.append((path, input_tj, target_tk, time_t))
    return sequences


def read_all(root, input_dim, target_dim):
    return [s for split in ("train", "dev", "test")
            for s in read_split(root, split, input_dim, target_dim)]


def assert_last_frame_target_only(target_tk):
    assert np.isnan(target_tk[:-1]).all()
    assert np.isfinite(target_tk[-1]).all()


def file_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


# --- DatasetWriter -------------------------------------------------------

def test_writer_round_trip_with_time_and_lists(tmp_path):
    input_tj = np.arange(12, dtype=np.float64).reshape(4, 3)
    target_tk = np.array([[np.nan], [1.0], [np.nan], [2.0]])
    with DatasetWriter(tmp_path / "d") as writer:
        writer.add("train", "train/a/000000", input_tj, target_tk, time_t=[0.0, 0.5, 2.0, 2.25])
        writer.add("test", "test/000000", input_tj[:2], target_tk[:2])
        writer.write_array("mean.matrix", [1.5, 2.5])
    root = tmp_path / "d"
    assert (root / "train.list").read_text() == "train/a/000000"
    assert (root / "dev.list").read_text() == ""
    [(path, got_input, got_target, got_time)] = read_split(root, "train", 3, 1)
    assert path.split("/")[-1] == "000000"
    np.testing.assert_array_equal(got_input, input_tj)
    np.testing.assert_array_equal(got_target, target_tk)
    np.testing.assert_array_equal(got_time, [0.0, 0.5, 2.0, 2.25])
    assert (root / "train/a/000000.input").read_bytes() == input_tj.astype("<f4").tobytes()
    assert read_split(root, "test", 3, 1)[0][3] is None
    np.testing.assert_array_equal(np.fromfile(root / "mean.matrix", "<f4"), [1.5, 2.5])


@pytest.mark.parametrize("split, path, input_tj, target_tk, time_t, error", [
    ("valid", "x/1", np.zeros((2, 1)), np.zeros((2, 1)), None, ValueError),
    ("train", "../x", np.zeros((2, 1)), np.zeros((2, 1)), None, ValueError),
    ("train", "/abs", np.zeros((2, 1)), np.zeros((2, 1)), None, ValueError),
    ("train", "x/2", np.zeros((2, 1)), np.zeros((3, 1)), None, ValueError),
    ("train", "x/3", np.zeros(2), np.zeros((2, 1)), None, ValueError),
    ("train", "x/4", np.zeros((0, 1)), np.zeros((0, 1)), None, ValueError),
    ("train", "x/5", np.full((2, 1), np.nan), np.zeros((2, 1)), None, ValueError),
    ("train", "x/6", np.zeros((2, 1)), np.full((2, 1), np.inf), None, ValueError),
    ("train", "x/7", np.zeros((2, 1)), np.zeros((2, 1)), [1.0, 1.0], ValueError),
    ("train", "x/8", np.zeros((2, 1)), np.zeros((2, 1)), [0.0], ValueError),
    ("train", "x/9", np.zeros((2, 1), complex), np.zeros((2, 1)), None, TypeError),
    ("train", "x/10", np.array([["a"], ["b"]]), np.zeros((2, 1)), None, TypeError),
])
def test_writer_rejects_bad_sequences(tmp_path, split, path, input_tj, target_tk, time_t, error):
    writer = DatasetWriter(tmp_path / "d")
    with pytest.raises(error):
        writer.add(split, path, input_tj, target_tk, time_t)


def test_writer_rejects_repeats_width_changes_and_used_roots(tmp_path):
    writer = DatasetWriter(tmp_path / "d")
    writer.add("train", "train/0", np.zeros((2, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="already added"):
        writer.add("dev", "train/0", np.zeros((2, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="widths"):
        writer.add("train", "train/1", np.zeros((2, 3)), np.zeros((2, 1)))
    with pytest.raises(FileExistsError):
        DatasetWriter(tmp_path / "d")
    writer.close()
    with pytest.raises(RuntimeError):
        writer.add("train", "train/2", np.zeros((2, 2)), np.zeros((2, 1)))


def test_writer_leaves_no_lists_after_an_error(tmp_path):
    with pytest.raises(KeyError):
        with DatasetWriter(tmp_path / "d") as writer:
            writer.add("train", "train/0", np.zeros((2, 1)), np.zeros((2, 1)))
            raise KeyError("generator failed")
    assert not (tmp_path / "d" / "train.list").exists()


# --- adding and multiplication -------------------------------------------

def check_hochreiter_layout(input_tj, T, low):
    n_frames = len(input_tj)
    values, markers = input_tj[:, 0], input_tj[:, 1]
    assert T <= n_frames <= T + T // 10
    assert ((values >= low) & (values <= 1.0)).all()
    assert markers[0] == -1 and markers[-1] == -1
    assert set(np.unique(markers[1:-1])) <= {0.0, 1.0}
    marked = np.flatnonzero(markers == 1)
    assert len(marked) == 2
    first, second = marked if marked[0] < 10 else marked[::-1]
    assert 1 <= first < 10 and 1 <= second < T // 2 - 1
    return values[first], values[second]


def test_adding_hochreiter_markers_and_target(tmp_path):
    T = 40
    make_dataset("adding", tmp_path / "d", seed=3, counts=SMALL, T=T)
    sequences = read_all(tmp_path / "d", 2, 1)
    assert len(sequences) == 40
    for _, input_tj, target_tk, time_t in sequences:
        x1, x2 = check_hochreiter_layout(input_tj, T, low=-1.0)
        assert_last_frame_target_only(target_tk)
        assert target_tk[-1, 0] == pytest.approx(0.5 + (x1 + x2) / 4, abs=1e-6)
        assert time_t is None


def test_adding_arjovsky_layout_and_constant_predictor_mse():
    T = 60
    targets = []
    for input_tj, target_tk, _ in adding.generate(np.random.default_rng(0), 2000, T=T,
                                                  variant="arjovsky"):
        values, markers = input_tj[:, 0], input_tj[:, 1]
        assert len(input_tj) == T
        assert ((values >= 0) & (values <= 1)).all() and set(np.unique(markers)) <= {0.0, 1.0}
        first, second = np.flatnonzero(markers)
        assert first < T // 2 <= second
        assert_last_frame_target_only(target_tk)
        assert target_tk[-1, 0] == pytest.approx(values[first] + values[second], abs=1e-6)
        targets.append(target_tk[-1, 0])
    mse_of_constant_one = np.mean((np.array(targets) - 1.0) ** 2)
    assert mse_of_constant_one == pytest.approx(1 / 6, abs=0.015)


def test_adding_rejects_too_short_T():
    with pytest.raises(ValueError, match="--T"):
        adding.generate(np.random.default_rng(0), 1, T=5)


def test_multiplication_markers_and_product():
    T = 30
    for input_tj, target_tk, _ in multiplication.generate(np.random.default_rng(1), 200, T=T):
        x1, x2 = check_hochreiter_layout(input_tj, T, low=0.0)
        assert_last_frame_target_only(target_tk)
        assert target_tk[-1, 0] == pytest.approx(x1 * x2, abs=1e-6)


# --- temporal order ------------------------------------------------------

@pytest.mark.parametrize("variant", ["6a", "6b"])
def test_temporal_order_symbols_and_class(tmp_path, variant):
    windows = temporal_order.WINDOWS[variant]
    n_classes = 2 ** len(windows)
    make_dataset("temporal_order", tmp_path / "d", seed=5, counts=SMALL, variant=variant)
    seen_classes = set()
    for _, input_tj, target_tk, _ in read_all(tmp_path / "d", 8, n_classes):
        assert 100 <= len(input_tj) <= 110
        assert (input_tj.sum(axis=1) == 1).all() and set(np.unique(input_tj)) == {0.0, 1.0}
        symbols = "".join(temporal_order.SYMBOLS[i] for i in input_tj.argmax(axis=1))
        assert symbols[0] == "E" and symbols[-1] == "B"
        assert set(symbols[1:-1]) <= set("XYabcd")
        relevant = [(p, s) for p, s in enumerate(symbols) if s in "XY"]
        assert len(relevant) == len(windows)
        for (position, _), (low, high) in zip(relevant, windows):
            assert low <= position <= high
        assert_last_frame_target_only(target_tk)
        label = int(target_tk[-1].argmax())
        assert target_tk[-1].sum() == 1
        assert label == temporal_order.class_index(s == "Y" for _, s in relevant)
        seen_classes.add(label)
    assert len(seen_classes) > n_classes // 2


def test_temporal_order_class_names_follow_the_paper():
    names = temporal_order.CLASS_NAMES["6b"]
    assert names[temporal_order.class_index([0, 1, 1])] == "U"   # X, Y, Y -> U
    assert names[temporal_order.class_index([1, 0, 0])] == "V"   # Y, X, X -> V
    assert temporal_order.CLASS_NAMES["6a"][temporal_order.class_index([1, 0])] == "S"


# --- frequency -----------------------------------------------------------

def best_fit_error(time_t, values_t, periods):
    """Smallest RMS residual of ``a sin + b cos`` fits over `periods`."""
    best = np.inf
    for period in periods:
        phase_t = 2 * np.pi * time_t / period
        basis = np.stack([np.sin(phase_t), np.cos(phase_t)], axis=1)
        coef = np.linalg.lstsq(basis, values_t, rcond=None)[0]
        best = min(best, float(np.sqrt(np.mean((basis @ coef - values_t) ** 2))))
    return best


def test_frequency_label_matches_period():
    rng = np.random.default_rng(7)
    inside = np.arange(5.0, 6.0005, 0.001)
    errors = {0: [], 1: []}
    for input_tj, target_tk, time_t in frequency.generate(rng, 40, sampling="high"):
        assert time_t is None
        n_frames = len(input_tj)
        assert 151 <= n_frames <= 1251  # 15..125 ms every 0.1 ms
        assert_last_frame_target_only(target_tk)
        label = int(target_tk[-1, 0])
        time_ms = np.arange(n_frames) * 0.1
        errors[label].append(best_fit_error(time_ms, input_tj[:, 0].astype(float), inside))
    assert len(errors[0]) == len(errors[1]) == 20
    assert max(errors[1]) < 0.02
    assert np.mean(np.array(errors[0]) > 0.05) >= 0.9


def test_frequency_period_distribution():
    rng = np.random.default_rng(0)
    inside = np.array([frequency.draw_period(rng, 1) for _ in range(500)])
    outside = np.array([frequency.draw_period(rng, 0) for _ in range(2000)])
    assert ((inside >= 5) & (inside <= 6)).all()
    assert ((outside >= 1) & (outside <= 100)).all()
    assert not ((outside >= 5) & (outside <= 6)).any()
    # log-uniform: about a half below 10 ms
    assert np.mean(outside < 10) == pytest.approx(0.5, abs=0.05)


def test_frequency_async_time_file(tmp_path):
    make_dataset("frequency", tmp_path / "d", seed=2, counts=SMALL, sampling="async")
    sequences = read_all(tmp_path / "d", 1, 1)
    spacings = []
    for _, input_tj, target_tk, time_t in sequences:
        assert time_t is not None and len(time_t) == len(input_tj)
        assert time_t[0] == 0 and (np.diff(time_t) > 0).all() and time_t[-1] <= 125
        assert (np.abs(input_tj) <= 1).all()
        assert_last_frame_target_only(target_tk)
        assert target_tk[-1, 0] in (0.0, 1.0)
        spacings.extend(np.diff(time_t))
    assert np.mean(spacings) == pytest.approx(1.0, abs=0.1)


def test_frequency_regular_sampling_has_no_time_file(tmp_path):
    make_dataset("frequency", tmp_path / "d", seed=2, counts=SMALL)
    for _, input_tj, _, time_t in read_all(tmp_path / "d", 1, 1):
        assert time_t is None and 16 <= len(input_tj) <= 126


@pytest.mark.parametrize("shift", [3, -2, 0])
def test_lookahead_labels_each_frame_with_the_symbol_shift_frames_away(tmp_path, shift):
    make_dataset("lookahead", tmp_path / "d", seed=4, counts=SMALL, T=10, shift=shift, symbols=5)
    lengths = set()
    for _, input_tj, target_tk, time_t in read_all(tmp_path / "d", 5, 5):
        n_frames = len(input_tj)
        lengths.add(n_frames)
        assert time_t is None and 10 <= n_frames <= 15
        assert (input_tj.sum(axis=1) == 1).all() and set(np.unique(input_tj)) == {0.0, 1.0}
        labelled = np.arange(n_frames) + shift
        inside = (labelled >= 0) & (labelled < n_frames)
        np.testing.assert_array_equal(target_tk[inside], input_tj[labelled[inside]])
        assert np.isnan(target_tk[~inside]).all() and (~inside).sum() == abs(shift)
    assert len(lengths) > 1


def test_lookahead_rejects_bad_options():
    with pytest.raises(ValueError, match="more than"):
        next(TASKS["lookahead"].generate(np.random.default_rng(0), 1, T=3, shift=-3))
    with pytest.raises(ValueError, match="--symbols"):
        next(TASKS["lookahead"].generate(np.random.default_rng(0), 1, symbols=1))


# --- determinism and the command line -------------------------------------

@pytest.mark.parametrize("task, options", [
    ("adding", {"T": 20}), ("adding", {"T": 20, "variant": "arjovsky"}),
    ("multiplication", {"T": 20}), ("temporal_order", {"variant": "6b"}),
    ("frequency", {"sampling": "async"}),
])
def test_same_seed_gives_identical_bytes(tmp_path, task, options):
    counts = {"train": 6, "dev": 2, "test": 2}
    make_dataset(task, tmp_path / "a", seed=11, counts=counts, **options)
    make_dataset(task, tmp_path / "b", seed=11, counts=counts, **options)
    make_dataset(task, tmp_path / "c", seed=12, counts=counts, **options)
    first = file_bytes(tmp_path / "a")
    assert first == file_bytes(tmp_path / "b")
    assert first != file_bytes(tmp_path / "c")
    assert "Seed: 11" in first["README.txt"].decode()


def test_changing_dev_size_keeps_train_bytes(tmp_path):
    make_dataset("adding", tmp_path / "a", seed=1, counts={"train": 5, "dev": 2, "test": 1}, T=20)
    make_dataset("adding", tmp_path / "b", seed=1, counts={"train": 5, "dev": 4, "test": 1}, T=20)
    train = {k: v for k, v in file_bytes(tmp_path / "a").items() if k.startswith("train/")}
    assert train == {k: v for k, v in file_bytes(tmp_path / "b").items() if k.startswith("train/")}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sophia.data", "make", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ""})


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "temporal"
    result = run_cli("temporal_order", "--out", out, "--seed", 4, "--train", 7, "--dev", 3,
                     "--test", 2, "--variant", "6b")
    assert result.returncode == 0, result.stderr
    assert [len(read_split(out, s, 8, 8)) for s in ("train", "dev", "test")] == [7, 3, 2]
    readme = (out / "README.txt").read_text()
    assert "temporal_order" in readme and "Seed: 4" in readme and "variant=6b" in readme
    again = run_cli("temporal_order", "--out", out)
    assert again.returncode == 2 and "not empty" in again.stderr
    bad = run_cli("adding", "--out", tmp_path / "bad", "--T", 3)
    assert bad.returncode == 2 and "--T must be at least" in bad.stderr


def test_readme_command_remakes_the_same_bytes(tmp_path, capsys):
    make_dataset("frequency", tmp_path / "a", seed=5, counts={"train": 3, "dev": 1, "test": 1},
                 sampling="async")
    made = file_bytes(tmp_path / "a")
    line = next(s for s in made["README.txt"].decode().splitlines() if s.startswith("Made with: "))
    command = line.removeprefix("Made with: ").split()
    assert command[:2] == ["sophia-data", "make"]
    argv = [str(tmp_path / "b") if word == "DIR" else word for word in command[2:]]
    assert data_cli.main(["make", *argv]) == 0
    assert file_bytes(tmp_path / "b") == made
    assert "wrote" in capsys.readouterr().out


# --- real data -------------------------------------------------------------

def test_real_sequences_split_by_time_without_the_package():
    series_t = np.linspace(0.0, 10.0, 201) ** 1.5
    (mean, std), items = real.sequences(np.random.default_rng(0), series_t, min_len=5,
                                        max_len=9, dev_fraction=0.2, test_fraction=0.1)
    n_train = 201 - 40 - 20
    assert mean == pytest.approx(series_t[:n_train].mean())
    assert std == pytest.approx(series_t[:n_train].std())
    inputs, last_target = {"train": [], "dev": [], "test": []}, {}
    for split, input_tj, target_tk, time_t in items:
        assert time_t is None and input_tj.shape == target_tk.shape
        assert len(input_tj) <= 9
        np.testing.assert_allclose(input_tj[1:], target_tk[:-1])
        if inputs[split]:  # consecutive: a sequence starts where the last one's target ended
            assert input_tj[0, 0] == last_target[split]
        inputs[split].append(input_tj[:, 0] * std + mean)
        last_target[split] = target_tk[-1, 0]
    assert len({len(x) for x in inputs["train"]}) > 1  # unequal lengths
    for split, (begin, end) in {"train": (0, n_train), "dev": (n_train, n_train + 40),
                                "test": (n_train + 40, 201)}.items():
        values = np.append(np.concatenate(inputs[split]), last_target[split] * std + mean)
        np.testing.assert_allclose(values, series_t[begin:end], rtol=1e-5, atol=1e-5)


def test_real_reports_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    with pytest.raises(real.MissingPackageError, match="pip install statsmodels"):
        real.load_series("sunspots")


def test_real_dataset_from_statsmodels(tmp_path):
    pytest.importorskip("statsmodels.datasets",
                        reason="the 'real' task needs statsmodels (pip install statsmodels)")
    make_dataset("real", tmp_path / "d", seed=0, series="sunspots", min_len=10, max_len=20)
    mean = np.fromfile(tmp_path / "d" / "mean.matrix", "<f4")
    std = np.fromfile(tmp_path / "d" / "std.matrix", "<f4")
    assert mean.shape == std.shape == (1,) and std[0] > 0
    sunspots = real.load_series("sunspots")
    train = read_split(tmp_path / "d", "train", 1, 1)
    first_input = train[0][1][:, 0] * std[0] + mean[0]
    np.testing.assert_allclose(first_input, sunspots[:len(first_input)], rtol=1e-4, atol=1e-3)
    values = np.concatenate([s[1][:, 0] for s in train] + [train[-1][2][-1:, 0]])
    assert values.mean() == pytest.approx(0.0, abs=1e-4)
    assert sum(len(read_split(tmp_path / "d", s, 1, 1)) for s in ("dev", "test")) > 0


def test_real_change_transform_writes_the_differences(tmp_path, monkeypatch):
    """--transform change: the sequences are the series of consecutive changes, normalised
    with their own training statistics (the package is replaced by a fixed series)."""
    series_t = np.cumsum(np.random.default_rng(3).standard_normal(400)) + np.linspace(0, 50, 400)
    monkeypatch.setattr(real, "load_series", lambda name: series_t)
    make_dataset("real", tmp_path / "d", seed=0, series="co2", transform="change", min_len=10, max_len=20)
    mean = np.fromfile(tmp_path / "d" / "mean.matrix", "<f4")[0]
    std = np.fromfile(tmp_path / "d" / "std.matrix", "<f4")[0]
    train = read_split(tmp_path / "d", "train", 1, 1)
    changes = np.concatenate([s[1][:, 0] for s in train] + [train[-1][2][-1:, 0]]) * std + mean
    np.testing.assert_allclose(changes, np.diff(series_t)[:len(changes)], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="transform must be one of"):
        make_dataset("real", tmp_path / "e", seed=0, transform="log")


@pytest.mark.parametrize("name, length, period", [("co2", 2284, "weekly"), ("sunspots", 309, "yearly"),
                                                  ("elnino", 732, "monthly"), ("taylor", 4032, "half-hourly"),
                                                  ("msft", 7983, "daily")])
def test_every_real_series_loads_offline(name, length, period, monkeypatch):
    """Each series ships inside its package: it loads with the network cut off."""
    pytest.importorskip(f"{real.PACKAGES[name]}.datasets",
                        reason=f"the {name} series ships with {real.PACKAGES[name]}")
    import socket

    def no_network(*args, **kwargs):
        raise OSError("the network is cut off in this test")
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    values = real.load_series(name)
    assert values.shape == (length,) and np.isfinite(values).all()
    assert np.unique(values).size > length // 10                # a real series, not a constant
    assert name in real.__doc__ and period in real.__doc__


def test_elnino_is_read_in_time_order():
    sm_datasets = pytest.importorskip("statsmodels.datasets")
    table = sm_datasets.elnino.load_pandas().data
    values = real.load_series("elnino")
    assert values[12] == table["JAN"].iloc[1] and values[-1] == table["DEC"].iloc[-1]


def test_pmdarima_series_report_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pmdarima", None)
    with pytest.raises(real.MissingPackageError, match="pip install pmdarima"):
        real.load_series("taylor")


def test_real_whole_eval_writes_dev_and_test_as_one_sequence_each(tmp_path, monkeypatch):
    series_t = np.exp(np.cumsum(np.random.default_rng(4).normal(scale=0.01, size=300)))
    monkeypatch.setattr(real, "load_series", lambda name: series_t)
    make_dataset("real", tmp_path / "d", seed=0, series="msft", transform="log_change",
                 min_len=10, max_len=20, whole_eval=True)
    mean = np.fromfile(tmp_path / "d" / "mean.matrix", "<f4")[0]
    std = np.fromfile(tmp_path / "d" / "std.matrix", "<f4")[0]
    log_returns = np.diff(np.log(series_t))
    assert len(read_split(tmp_path / "d", "train", 1, 1)) > 5
    for split, begin, end in (("dev", 209, 254), ("test", 254, 299)):   # 299 changes: 209 / 45 / 45
        (sequence,) = read_split(tmp_path / "d", split, 1, 1)
        values = np.append(sequence[1][:, 0], sequence[2][-1, 0]) * std + mean
        np.testing.assert_allclose(values, log_returns[begin:end], rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(real, "load_series", lambda name: series_t - 2.0)
    with pytest.raises(ValueError, match="positive"):
        make_dataset("real", tmp_path / "e", seed=0, transform="log_change")


def test_forecast_peer_reads_back_the_whole_normalised_series(tmp_path, monkeypatch):
    """bench/forecast_peer.py's history is the splits' values end to end, so the
    peer sees the series the net and the baselines saw (it needs neuralforecast only
    to fit)."""
    peer = load_bench("forecast_peer")
    series_t = np.random.default_rng(6).normal(size=150).cumsum()
    monkeypatch.setattr(real, "load_series", lambda name: series_t)
    make_dataset("real", tmp_path / "d", seed=3, series="elnino", min_len=10, max_len=20,
                 whole_eval=True)
    mean = np.fromfile(tmp_path / "d" / "mean.matrix", "<f4")[0]
    std = np.fromfile(tmp_path / "d" / "std.matrix", "<f4")[0]
    values = [peer.split_values(tmp_path / "d", split) for split in ("train", "dev", "test")]
    assert [len(v) for v in values] == [106, 22, 22]                 # 70 / 15 / 15 %
    np.testing.assert_allclose(np.concatenate(values) * std + mean, series_t, rtol=1e-4, atol=1e-4)


def test_real_lags_give_each_frame_the_values_before_it_across_split_starts(tmp_path, monkeypatch):
    series_t = np.random.default_rng(5).normal(size=200).cumsum()
    monkeypatch.setattr(real, "load_series", lambda name: series_t)
    make_dataset("real", tmp_path / "d", seed=0, series="sunspots", min_len=10, max_len=20,
                 whole_eval=True, lags=4)
    mean = np.fromfile(tmp_path / "d" / "mean.matrix", "<f4")[0]
    std = np.fromfile(tmp_path / "d" / "std.matrix", "<f4")[0]
    train = read_split(tmp_path / "d", "train", 4, 1)
    first_input_tj = train[0][1] * std + mean
    np.testing.assert_allclose(first_input_tj[0], series_t[3::-1], rtol=1e-4, atol=1e-4)
    for split, begin in (("dev", 140), ("test", 170)):                 # 200 values: 140 / 30 / 30
        ((_, input_tj, target_tk, _),) = read_split(tmp_path / "d", split, 4, 1)
        index_tj = begin + np.arange(len(input_tj))[:, None] - np.arange(4)[None, :]
        np.testing.assert_allclose(input_tj * std + mean, series_t[index_tj], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(target_tk[:, 0] * std + mean, series_t[index_tj[:, 0] + 1],
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="--lags must be >= 1"):
        make_dataset("real", tmp_path / "e", seed=0, lags=0)
    with pytest.raises(ValueError, match="leaves the 140 training values no sequence"):
        make_dataset("real", tmp_path / "e", seed=0, lags=140)
