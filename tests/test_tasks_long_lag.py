"""Tests of Martens & Sutskever's (2011) pathological long-lag tasks in
``sophia/data/tasks/``: xor, the ms2/ms3 temporal order variants,
permutation and memorization.

Each rule is recomputed from the inputs (read back from disk where a
dataset is written) and compared with the targets.
"""
from pathlib import Path

import numpy as np
import pytest

from sophia.data import cli as data_cli
from sophia.data.make import make_dataset
from sophia.data.tasks import memorization, permutation, temporal_order, xor

SMALL = {"train": 30, "dev": 5, "test": 5}


def read_all(root, input_dim, target_dim):
    """Return ``[(input_tj, target_tk)]`` of every split, read as '<f4'."""
    root = Path(root)
    sequences = []
    for split in ("train", "dev", "test"):
        text = (root / f"{split}.list").read_text()
        for path in text.split("\n") if text else []:
            input_tj = np.fromfile(root / f"{path}.input", "<f4").reshape(-1, input_dim)
            target_tk = np.fromfile(root / f"{path}.target", "<f4").reshape(-1, target_dim)
            assert len(input_tj) == len(target_tk)
            sequences.append((input_tj, target_tk))
    return sequences


def assert_float32(input_tj, target_tk, time_t):
    assert input_tj.dtype == np.float32 and target_tk.dtype == np.float32 and time_t is None


def assert_one_hot_rows(rows_tk):
    """Every row is one-hot: values in {0, 1}, exactly one 1."""
    assert set(np.unique(rows_tk)) <= {0.0, 1.0}
    assert (rows_tk.sum(axis=1) == 1).all()


def symbols_of(one_hot_tk):
    assert_one_hot_rows(one_hot_tk)
    return one_hot_tk.argmax(axis=1)


def file_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


# --- xor -------------------------------------------------------------------

def test_xor_generator_shapes_and_dtypes():
    for sequence in xor.generate(np.random.default_rng(0), 20, T=30):
        assert_float32(*sequence)
        assert sequence[0].shape[1] == 2 and sequence[1].shape[1] == 1


def test_xor_bits_markers_and_target(tmp_path):
    T = 40
    make_dataset("xor", tmp_path / "d", seed=3, counts=SMALL, T=T)
    targets = []
    for input_tj, target_tk in read_all(tmp_path / "d", 2, 1):
        bits, markers = input_tj[:, 0], input_tj[:, 1]
        assert T <= len(input_tj) <= T + T // 10
        assert set(np.unique(bits)) == {0.0, 1.0}
        assert markers[0] == -1 and markers[-1] == -1
        assert set(np.unique(markers[1:-1])) <= {0.0, 1.0}
        marked = np.flatnonzero(markers == 1)
        assert len(marked) == 2
        first, second = marked if marked[0] < 10 else marked[::-1]
        assert 1 <= first < 10 and 1 <= second < T // 2 - 1
        assert np.isnan(target_tk[:-1]).all()
        assert target_tk[-1, 0] == int(bits[first]) ^ int(bits[second])
        targets.append(target_tk[-1, 0])
    assert set(targets) == {0.0, 1.0}


def test_xor_rejects_too_short_T():
    with pytest.raises(ValueError, match="--T must be at least 11"):
        xor.generate(np.random.default_rng(0), 1, T=10)


# --- temporal order: Martens & Sutskever's variants ---------------------------

@pytest.mark.parametrize("variant, T, expected", [
    ("ms2", 100, ((1, 10), (40, 50))),
    ("ms3", 100, ((1, 10), (30, 40), (50, 60))),
    ("ms3", 200, ((2, 20), (60, 80), (100, 120))),
    ("ms3", 50, ((1, 5), (15, 20), (25, 30))),
])
def test_temporal_order_ms_windows_scale_with_T(variant, T, expected):
    assert temporal_order.windows(variant, T) == expected


@pytest.mark.parametrize("variant, T", [("ms2", 60), ("ms3", 200), ("ms3", 100)])
def test_temporal_order_ms_symbols_lengths_and_class(tmp_path, variant, T):
    spans = temporal_order.windows(variant, T)
    n_classes = 2 ** len(spans)
    make_dataset("temporal_order", tmp_path / "d", seed=5, counts=SMALL, variant=variant, T=T)
    seen_classes, first_positions = set(), set()
    for input_tj, target_tk in read_all(tmp_path / "d", 8, n_classes):
        assert T <= len(input_tj) <= T + T // 10
        symbols = "".join(temporal_order.SYMBOLS[i] for i in symbols_of(input_tj))
        assert symbols[0] == "E" and symbols[-1] == "B"
        assert set(symbols[1:-1]) <= set("XYabcd")
        relevant = [(p, s) for p, s in enumerate(symbols) if s in "XY"]
        assert len(relevant) == len(spans)
        for (position, _), (low, high) in zip(relevant, spans):
            assert low <= position <= high
        first_positions.add(relevant[0][0])
        assert np.isnan(target_tk[:-1]).all()
        assert_one_hot_rows(target_tk[-1:])
        label = int(target_tk[-1].argmax())
        assert label == temporal_order.class_index(s == "Y" for _, s in relevant)
        seen_classes.add(label)
    assert len(seen_classes) > n_classes // 2
    if (variant, T) == ("ms3", 100):  # 6b never puts a relevant symbol before frame 10
        assert min(first_positions) < 10


def test_ms3_is_not_6b():
    assert temporal_order.windows("6b") != temporal_order.windows("ms3", 100)
    assert temporal_order.windows("6a") != temporal_order.windows("ms2", 100)


def test_temporal_order_T_checks():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="--T must be 100 for 6b"):
        temporal_order.generate(rng, 1, variant="6b", T=200)
    with pytest.raises(ValueError, match="--T must be at least 10"):
        temporal_order.generate(rng, 1, variant="ms3", T=9)
    for sequence in temporal_order.generate(rng, 3, variant="ms2", T=10):
        assert_float32(*sequence)


# --- permutation -------------------------------------------------------------

def test_permutation_symbols_and_next_symbol_targets(tmp_path):
    T = 30
    make_dataset("permutation", tmp_path / "d", seed=2, counts=SMALL, T=T)
    sequences = read_all(tmp_path / "d", 100, 100)
    for input_tj, target_tk in sequences:
        assert len(input_tj) == T
        symbols, targets = symbols_of(input_tj), symbols_of(target_tk)
        assert symbols[0] in (0, 1) and ((symbols[1:] >= 2) & (symbols[1:] <= 99)).all()
        np.testing.assert_array_equal(targets[:-1], symbols[1:])
        assert targets[-1] == symbols[0]
    train_firsts = [int(s[0][0].argmax()) for s in sequences[:SMALL["train"]]]
    assert sorted(train_firsts) == [0] * 15 + [1] * 15  # balanced within a split


def test_permutation_answer_targets_and_dtypes():
    T = 12
    for input_tj, target_tk, time_t in permutation.generate(np.random.default_rng(4), 10, T=T,
                                                            targets="answer"):
        assert_float32(input_tj, target_tk, time_t)
        assert input_tj.shape == target_tk.shape == (T, 100)
        assert np.isnan(target_tk[:-1]).all()
        assert_one_hot_rows(target_tk[-1:])
        assert target_tk[-1].argmax() == input_tj[0].argmax()


def test_permutation_rejects_bad_options():
    with pytest.raises(ValueError, match="--T must be at least 2"):
        permutation.generate(np.random.default_rng(0), 1, T=1)
    with pytest.raises(ValueError, match="targets must be one of"):
        permutation.generate(np.random.default_rng(0), 1, targets="last")


# --- memorization --------------------------------------------------------------

@pytest.mark.parametrize("bits, k, v, T", [(5, 5, 2, 40), (20, 10, 5, 60), (5, 5, 2, 11)])
def test_memorization_layout_and_playback(tmp_path, bits, k, v, T):
    make_dataset("memorization", tmp_path / "d", seed=8, counts=SMALL, T=T, bits=bits)
    blank, trigger = v, v + 1
    strings = set()
    for input_tj, target_tk in read_all(tmp_path / "d", v + 2, v + 1):
        assert len(input_tj) == T
        symbols, answers = symbols_of(input_tj), symbols_of(target_tk)
        string = symbols[:k]
        assert (string < v).all()
        expected_input = np.r_[string, [blank] * (T - 2 * k - 1), [trigger], [blank] * k]
        np.testing.assert_array_equal(symbols, expected_input)
        np.testing.assert_array_equal(answers, np.r_[[blank] * (T - k), string])
        strings.add(tuple(string))
    assert len(strings) > 1


def test_memorization_answer_targets_and_dtypes():
    T, k = 30, 10
    for input_tj, target_tk, time_t in memorization.generate(np.random.default_rng(1), 5, T=T,
                                                             bits=20, targets="answer"):
        assert_float32(input_tj, target_tk, time_t)
        assert input_tj.shape == (T, 7) and target_tk.shape == (T, 6)
        assert np.isnan(target_tk[:T - k]).all()
        np.testing.assert_array_equal(symbols_of(target_tk[T - k:]), input_tj[:k].argmax(axis=1))


def test_memorization_rejects_bad_options():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="--T must be at least 21 for 20 bits"):
        memorization.generate(rng, 1, T=20, bits=20)
    with pytest.raises(ValueError, match="bits must be one of"):
        memorization.generate(rng, 1, bits=8)


# --- determinism and the command line --------------------------------------------

NEW_TASKS = [
    ("xor", {"T": 20}, ["--T", "20"], 2, 1),
    ("temporal_order", {"variant": "ms3", "T": 50}, ["--variant", "ms3", "--T", "50"], 8, 8),
    ("permutation", {"T": 20}, ["--T", "20"], 100, 100),
    ("memorization", {"T": 30, "bits": 20}, ["--T", "30", "--bits", "20"], 7, 6),
    ("memorization", {"T": 30, "targets": "answer"}, ["--T", "30", "--targets", "answer"], 4, 3),
]


@pytest.mark.parametrize("task, options, _flags, _input_dim, _target_dim", NEW_TASKS)
def test_same_seed_gives_identical_bytes(tmp_path, task, options, _flags, _input_dim, _target_dim):
    counts = {"train": 6, "dev": 2, "test": 2}
    make_dataset(task, tmp_path / "a", seed=11, counts=counts, **options)
    make_dataset(task, tmp_path / "b", seed=11, counts=counts, **options)
    make_dataset(task, tmp_path / "c", seed=12, counts=counts, **options)
    first = file_bytes(tmp_path / "a")
    assert first == file_bytes(tmp_path / "b")
    assert first != file_bytes(tmp_path / "c")


@pytest.mark.parametrize("task, _options, flags, input_dim, target_dim", NEW_TASKS)
def test_cli_make_then_check(tmp_path, capsys, task, _options, flags, input_dim, target_dim):
    out = str(tmp_path / task)
    argv = ["make", task, "--out", out, "--seed", "3", "--train", "5", "--dev", "2",
            "--test", "1", *flags]
    assert data_cli.main(argv) == 0
    assert [len(read_all(out, input_dim, target_dim))] == [8]
    readme = (Path(out) / "README.txt").read_text()
    assert f"Widths: input j={input_dim}, target k={target_dim}" in readme
    for name, value in zip(flags[::2], flags[1::2]):
        assert f"{name} {value}" in readme
    capsys.readouterr()
    check = ["check", out, "--input_dim", str(input_dim), "--target_dim", str(target_dim)]
    assert data_cli.main(check) == 0
    assert "train: 5 sequences" in capsys.readouterr().out
