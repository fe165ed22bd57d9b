"""Tests of sophia.data.dataset and its command line, on tiny hand-made files."""
import os
import subprocess
import sys

import numpy as np
import pytest

from sophia.data.dataset import (Dataset, DatasetError, check_dataset, id_order,
                                     infer_dims)
from sophia.data.cli import main


def write_seq(root, rel, input_tj, target_tk, time_t=None):
    """Write one sequence's files under root (arrays [T][dim])."""
    base = root / rel
    base.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(input_tj).astype("<f4").tofile(f"{base}.input")
    np.asarray(target_tk).astype("<f4").tofile(f"{base}.target")
    if time_t is not None:
        np.asarray(time_t).astype("<f4").tofile(f"{base}.time")


def write_list(root, split, paths, trailer="\n"):
    (root / f"{split}.list").write_text("\n".join(paths) + trailer)


def seq(length, input_dim=2, target_dim=1, offset=0.0):
    """Inputs and targets with recognisable values: [T][dim] each."""
    input_tj = offset + np.arange(length * input_dim).reshape(length, input_dim)
    return input_tj, -np.arange(length * target_dim).reshape(length, target_dim)


@pytest.fixture
def good(tmp_path):
    """train: a/x (3 frames), b/x (5), y (2); dev: z (4); input_dim 2, target_dim 1."""
    for rel, length in (("a/x", 3), ("b/x", 5), ("y", 2), ("z", 4)):
        write_seq(tmp_path, rel, *seq(length))
    write_list(tmp_path, "train", ["a/x", "", "b/x", "y"], trailer="\n\n")
    write_list(tmp_path, "dev", ["z"])
    return tmp_path


def test_open_maps_sequences_read_only(good):
    ds = Dataset.open(str(good), "train")
    assert (ds.input_dim, ds.target_dim, ds.has_time) == (2, 1, False)
    assert [(s.path, s.seq_id, s.length) for s in ds.sequences] == [
        ("a/x", "x", 3), ("b/x", "x", 5), ("y", "y", 2)]
    np.testing.assert_array_equal(ds.input(1), seq(5)[0])
    np.testing.assert_array_equal(ds.target(1), seq(5)[1])
    assert ds.input(1).dtype == np.float32 and not ds.input(1).flags.writeable
    assert isinstance(ds.input(1), np.memmap)
    np.testing.assert_array_equal(ds.time_signal(2), [0, 1])
    assert id_order(ds) == ["x", "y"]
    assert ds.num_frames == 10


def test_nan_target_is_allowed(tmp_path):
    write_seq(tmp_path, "a", np.ones((3, 1)), [[np.nan, 1.0], [2.0, np.nan], [np.nan] * 2])
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["a"])
    summary = check_dataset(str(tmp_path), input_dim=1, target_dim=2)
    assert summary.frames == {"train": 3, "dev": 3}
    assert np.isnan(Dataset.open(str(tmp_path), "dev", 1, 2).target(0)[0, 0])


def test_infer_dims_from_gcd(tmp_path):
    # (3 + 5 frames) x (2, 1): gcd of all sizes is 1, so each T = gcd(n_in, n_tg).
    write_seq(tmp_path, "a", *seq(3))
    write_seq(tmp_path, "b", *seq(5))
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["b"])
    assert infer_dims(str(tmp_path)) == (2, 1)
    assert Dataset.open(str(tmp_path), "dev").sequences[0].length == 5


def test_infer_dims_ambiguous(tmp_path):
    # 2 and 4 frames of (2, 1): sizes 4, 2, 8, 4 are all even -- could be T/2 x (4, 2).
    write_seq(tmp_path, "a", *seq(2))
    write_seq(tmp_path, "b", *seq(4))
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["b"])
    with pytest.raises(DatasetError, match="set input_dim and target_dim"):
        Dataset.open(str(tmp_path), "train")
    assert Dataset.open(str(tmp_path), "train", 2, 1).sequences[0].length == 2
    assert infer_dims(str(tmp_path), input_dim=2) == (2, 1)
    assert infer_dims(str(tmp_path), target_dim=1) == (2, 1)


def test_infer_dims_exact_with_timestamps(tmp_path):
    write_seq(tmp_path, "a", *seq(2, 4, 2), time_t=[0.0, 1.0])
    write_seq(tmp_path, "b", *seq(4, 4, 2), time_t=[0.0, 1.0, 2.0, 3.0])
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["b"])
    assert infer_dims(str(tmp_path)) == (4, 2)


def test_infer_uses_all_splits(tmp_path):
    # train alone (one sequence) is ambiguous; with dev's sizes it is not.
    write_seq(tmp_path, "a", *seq(4, 3, 1))
    write_seq(tmp_path, "b", *seq(3, 3, 1))
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["b"])
    ds = Dataset.open(str(tmp_path), "train")
    assert (ds.input_dim, ds.target_dim, ds.sequences[0].length) == (3, 1, 4)


def test_time_signal_starts_at_zero(tmp_path):
    write_seq(tmp_path, "a", *seq(3), time_t=[10.0, 10.5, 12.0])
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["a"])
    ds = Dataset.open(str(tmp_path), "train", 2, 1)
    assert ds.has_time
    np.testing.assert_array_equal(ds.time_signal(0), [0.0, 0.5, 2.0])
    assert ds.time_signal(0).dtype == np.float32


def _bad_size(root):
    (root / "a.input").write_bytes(b"\0" * 10)


def _bad_dim(root):
    write_seq(root, "a", np.ones((2, 3)), np.ones((2, 1)))       # 6 floats, dim 4


def _length_mismatch(root):
    write_seq(root, "a", np.ones((3, 2)), np.ones((2, 1)))


def _missing_file(root):
    os.remove(root / "a.target")


def _nan_input(root):
    write_seq(root, "a", [[0, 0], [np.nan, 0], [0, 0]], np.ones((3, 1)))


def _inf_input(root):
    write_seq(root, "a", [[0, 0], [0, 0], [0, np.inf]], np.ones((3, 1)))


def _time_length(root):
    write_seq(root, "a", *seq(3), time_t=[0.0, 1.0])
    write_seq(root, "b", *seq(2), time_t=[0.0, 1.0])


def _time_order(root):
    write_seq(root, "a", *seq(3), time_t=[0.0, 1.0, 1.0])
    write_seq(root, "b", *seq(2), time_t=[0.0, 1.0])


def _time_some(root):
    write_seq(root, "a", *seq(3), time_t=[0.0, 1.0, 2.0])


BAD_CASES = [  # (make it bad, problem text, also found by Dataset.open)
    (_bad_size, "a.input: size 10 bytes is not a multiple of 4", True),
    (_bad_dim, "a.input: 6 floats is not a multiple of input_dim 4", True),
    (_length_mismatch, "a.target: 2 frames, but", True),
    (_missing_file, "a.target: missing file", True),
    (_nan_input, "a.input: input value nan at frame 1, dimension 0 is not finite", False),
    (_inf_input, "a.input: input value inf at frame 2, dimension 1 is not finite", False),
    (_time_length, "a.time: 2 timestamps, but", True),
    (_time_order, "a.time: timestamps not strictly increasing at frame 2", False),
    (_time_some, "b.time: missing, but other sequences have .time files", True),
]


@pytest.mark.parametrize("make_bad, problem, at_open", BAD_CASES,
                         ids=[c[0].__name__.strip("_") for c in BAD_CASES])
def test_bad_data_names_file_and_problem(tmp_path, make_bad, problem, at_open):
    write_seq(tmp_path, "a", *seq(3))
    write_seq(tmp_path, "b", *seq(2))
    make_bad(tmp_path)
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["b"])
    dims = (4, 1) if make_bad is _bad_dim else (2, 1)
    with pytest.raises(DatasetError) as err:
        check_dataset(str(tmp_path), *dims)
    assert err.value.problems == [p for p in err.value.problems if str(tmp_path) in p]
    assert any(problem in p for p in err.value.problems), err.value.problems
    if at_open:
        with pytest.raises(DatasetError, match=problem.replace(".", r"\.")):
            Dataset.open(str(tmp_path), "train", *dims)


def test_bad_timestamps_raise_when_read(tmp_path):
    _time_order(tmp_path)
    write_list(tmp_path, "train", ["a"])
    write_list(tmp_path, "dev", ["b"])
    ds = Dataset.open(str(tmp_path), "train", 2, 1)
    with pytest.raises(DatasetError, match="a.time: timestamps not strictly increasing"):
        ds.time_signal(0)


def test_missing_and_empty_lists(tmp_path):
    write_seq(tmp_path, "a", *seq(3))
    write_list(tmp_path, "train", ["", ""])
    with pytest.raises(DatasetError) as err:
        check_dataset(str(tmp_path), 2, 1)
    assert err.value.problems == [f"{tmp_path / 'train.list'}: empty list (no sequence paths)",
                                  f"{tmp_path / 'dev.list'}: missing list file"]
    with pytest.raises(DatasetError, match="dev.list: missing list file"):
        Dataset.open(str(tmp_path), "dev", 2, 1)


def test_check_lists_all_problems(good):
    write_seq(good, "y", np.ones((2, 2)), np.ones((3, 1)))      # length mismatch
    os.remove(good / "z.input")                                 # missing file
    with pytest.raises(DatasetError) as err:
        check_dataset(str(good), 2, 1)
    assert len(err.value.problems) == 2
    assert str(err.value).split("\n") == err.value.problems
    assert "y.target: 3 frames" in str(err.value) and "z.input: missing file" in str(err.value)


def test_check_summary(good):
    summary = check_dataset(str(good))
    assert (summary.input_dim, summary.target_dim, summary.num_ids) == (2, 1, 2)
    assert summary.sequences == {"train": 3, "dev": 1}
    assert summary.frames == {"train": 10, "dev": 4}


def test_cli_check(good, capsys):
    assert main(["check", str(good)]) == 0
    assert "train: 3 sequences, 10 frames" in capsys.readouterr().out
    os.remove(good / "z.target")
    assert main(["check", str(good), "--input_dim", "2", "--target_dim", "1"]) == 1
    assert "z.target: missing file" in capsys.readouterr().err


def test_cli_runs_as_module(good):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "sophia.data", "check",
                           str(good)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dev: 1 sequences, 4 frames" in done.stdout
