"""Tests of the BPTT(h; h') iterator on tiny hand-made datasets.

Every sequence n has input frames ``[n + 1, f]`` (f = frame index) and target
``f + 0.5``, so a window row tells which frame of which sequence it holds;
input code 0 is padding.
"""
from collections import Counter

import numpy as np
import pytest

from sophia.data.dataset import Dataset
from sophia.training.iterator import BPTTIterator


def make_dataset(root, lengths, times=None, paths=None):
    paths = paths or [f"s{n}" for n in range(len(lengths))]
    for n, (path, length) in enumerate(zip(paths, lengths)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        frame = np.arange(length)
        np.stack([np.full(length, n + 1.0), frame], 1).astype("<f4").tofile(f"{root / path}.input")
        (frame[:, None] + 0.5).astype("<f4").tofile(f"{root / path}.target")
        if times is not None:
            np.asarray(times[n]).astype("<f4").tofile(f"{root / path}.time")
    for split in ("train", "dev"):
        (root / f"{split}.list").write_text("\n".join(paths) + "\n")
    return Dataset.open(str(root), "train", input_dim=2, target_dim=1)


def windows(ds, n=None, id_index=None, **kw):
    """The first n windows (all, if the pass is finite), copied."""
    out = []
    for w in BPTTIterator(ds, id_index or {}, **kw):
        out.append(w.copy())
        if len(out) == n:
            break
    return out


def new_rows(ws, h_new):
    """Concatenate the new rows of the windows: (input_tbj, time_tb, id_tb, target_tbk)."""
    return tuple(np.concatenate([w[a][-h_new:] for w in ws]) for a in range(4))


def frame_counts(input_tbj):
    codes = input_tbj.reshape(-1, input_tbj.shape[-1])
    return Counter((int(c), int(f)) for c, f in codes if c > 0)


def all_frames(lengths):
    return Counter((n + 1, f) for n, length in enumerate(lengths) for f in range(length))


LENGTHS = [1, 2, 3, 7, 10, 4, 13]


def test_shapes_and_initial_padding(tmp_path):
    ds = make_dataset(tmp_path, LENGTHS)
    w = windows(ds, 1, batch_size=3, window_size=5, step_size=2)[0]
    assert w.input_tbj.shape == (5, 3, 2) and w.input_tbj.dtype == np.float32
    assert w.target_tbk.shape == (5, 3, 1) and w.target_tbk.dtype == np.float32
    assert w.time_tb.shape == w.id_tb.shape == (5, 3) and w.id_tb.dtype == np.int32
    assert w.new_frames == 6
    np.testing.assert_array_equal(w.input_tbj[:3], 0)
    assert np.isnan(w.target_tbk[:3]).all()
    np.testing.assert_array_equal(w.time_tb[:3], -1)
    np.testing.assert_array_equal(w.id_tb[:3], 0)


def test_windows_shift_by_step(tmp_path):
    ds = make_dataset(tmp_path, LENGTHS)
    h, hp = 5, 2
    ws = windows(ds, 40, batch_size=3, window_size=h, step_size=hp)
    for prev, nxt in zip(ws, ws[1:]):
        for a in range(4):
            np.testing.assert_array_equal(prev[a][hp:], nxt[a][:h - hp])


def test_streams_read_sequences_whole_and_reset_at_starts(tmp_path):
    ds = make_dataset(tmp_path, LENGTHS)
    ws = windows(ds, batch_size=3, window_size=4, step_size=4, repeat=False)
    input_tbj, time_tb, _, target_tbk = new_rows(ws, 4)
    for b in range(3):
        code, frame = input_tbj[:, b, 0], input_tbj[:, b, 1]
        real = code > 0
        np.testing.assert_array_equal(time_tb[real, b], frame[real])   # 0 at each start
        np.testing.assert_array_equal(target_tbk[real, b, 0], frame[real] + 0.5)
        assert (time_tb[~real, b] == -1).all()
        for t in np.flatnonzero(real)[1:]:                 # each frame follows the one
            if frame[t] > 0:                               # before it, on the same stream
                assert (code[t - 1], frame[t - 1]) == (code[t], frame[t] - 1)
            else:                                          # or the last ended just before
                assert frame[t - 1] == LENGTHS[int(code[t - 1]) - 1] - 1


@pytest.mark.parametrize("batch_size, h, hp, sync", [
    (3, 4, 4, False), (2, 5, 3, False), (1, 3, 3, False), (8, 6, 6, False),
    (3, 4, 4, True), (2, 5, 3, True)])
def test_finite_pass_has_every_frame_once(tmp_path, batch_size, h, hp, sync):
    ds = make_dataset(tmp_path, LENGTHS)
    ws = windows(ds, batch_size=batch_size, window_size=h, step_size=hp,
                 repeat=False, synchronized=sync)
    input_tbj = new_rows(ws, hp)[0]
    assert frame_counts(input_tbj) == all_frames(LENGTHS)
    assert [w.new_frames for w in ws] == [frame_counts(w.input_tbj[-hp:]).total() for w in ws]
    assert all(w.new_frames > 0 for w in ws)


def test_sequences_shorter_than_window(tmp_path):
    ds = make_dataset(tmp_path, [2, 3])
    [w] = windows(ds, batch_size=1, window_size=8, step_size=8, repeat=False)
    assert w.new_frames == 5
    assert w.time_tb[:, 0].tolist() in ([0, 1, 0, 1, 2, -1, -1, -1], [0, 1, 2, 0, 1, -1, -1, -1])
    assert sorted(set(w.input_tbj[:5, 0, 0].tolist())) == [1, 2]


def test_timestamps_pass_through(tmp_path):
    ds = make_dataset(tmp_path, [3, 2], times=[[100.0, 100.5, 103.0], [7.0, 9.0]])
    [w] = windows(ds, batch_size=2, window_size=3, step_size=3, repeat=False)
    by_code = {int(w.input_tbj[0, b, 0]): w.time_tb[:, b].tolist() for b in range(2)}
    assert by_code == {1: [0.0, 0.5, 3.0], 2: [0.0, 2.0, -1.0]}


def test_ids_follow_the_mapping(tmp_path):
    ds = make_dataset(tmp_path, [2, 2, 2], paths=["a/x", "b/x", "c/y"])
    [w] = windows(ds, id_index={"x": 0, "z": 1}, batch_size=3, window_size=2,
                  step_size=2, repeat=False)
    code_to_id = {int(w.input_tbj[0, b, 0]): w.id_tb[:, b].tolist() for b in range(3)}
    assert code_to_id == {1: [0, 0], 2: [0, 0], 3: [2, 2]}   # y is unseen -> len(mapping)


def test_seed_makes_it_deterministic(tmp_path):
    ds = make_dataset(tmp_path, LENGTHS)
    kw = dict(batch_size=2, window_size=4, step_size=2)
    a, b, c = (windows(ds, 30, seed=seed, **kw) for seed in (5, 5, 6))
    assert all(np.array_equal(x.input_tbj, y.input_tbj) for x, y in zip(a, b))
    assert not all(np.array_equal(x.input_tbj, y.input_tbj) for x, y in zip(a, c))


def test_repeat_goes_on_after_an_epoch(tmp_path):
    ds = make_dataset(tmp_path, LENGTHS)
    total = sum(LENGTHS)
    ws = windows(ds, 3 * total // 6, batch_size=2, window_size=3, step_size=3)
    counts = frame_counts(new_rows(ws, 3)[0])
    assert set(counts) == set(all_frames(LENGTHS))
    assert sum(w.new_frames for w in ws) == 3 * total          # no padding when repeating
    assert max(counts.values()) <= 4


def test_synchronized_groups_start_together(tmp_path):
    lengths = [3, 5, 2, 4, 6]
    ds = make_dataset(tmp_path, lengths)
    ws = windows(ds, batch_size=2, window_size=4, step_size=4, repeat=False, synchronized=True)
    input_tbj, time_tb, id_tb, target_tbk = new_rows(ws, 4)
    starts = np.flatnonzero(time_tb[:, 0] == 0)
    assert len(starts) == 3                                # groups of 2 + 2 + 1 sequences
    end = 0
    for start in starts:
        assert start == end                                # the next group starts at once
        codes = {int(c) for c in input_tbj[start, :, 0] if c > 0}
        end = start + max(lengths[c - 1] for c in codes)
        for b in range(2):
            code = int(input_tbj[start, b, 0])
            if code == 0:                                  # missing member: all padding
                np.testing.assert_array_equal(time_tb[start:end, b], -1)
                continue
            stop = start + lengths[code - 1]
            np.testing.assert_array_equal(time_tb[start:end, b], np.arange(end - start))
            np.testing.assert_array_equal(input_tbj[start:stop, b, 1], np.arange(stop - start))
            np.testing.assert_array_equal(input_tbj[stop:end, b], 0)
            assert np.isnan(target_tbk[stop:end, b]).all()
            assert (id_tb[start:end, b] == id_tb[start, b]).all()
    assert (time_tb[end:] == -1).all()


def test_synchronized_padding_continues_timestamps(tmp_path):
    ds = make_dataset(tmp_path, [2, 4], times=[[5.0, 7.0], [0.0, 1.0, 2.0, 3.0]])
    [w] = windows(ds, batch_size=2, window_size=4, step_size=4, repeat=False, synchronized=True)
    by_code = {int(w.input_tbj[0, b, 0]): w.time_tb[:, b].tolist() for b in range(2)}
    assert by_code == {1: [0.0, 2.0, 4.0, 6.0], 2: [0.0, 1.0, 2.0, 3.0]}


def test_bad_sizes_are_refused(tmp_path):
    ds = make_dataset(tmp_path, [2])
    with pytest.raises(ValueError, match="step_size <= window_size"):
        BPTTIterator(ds, {}, batch_size=1, window_size=2, step_size=3)
    with pytest.raises(ValueError):
        BPTTIterator(ds, {}, batch_size=0, window_size=2, step_size=2)


@pytest.mark.parametrize("batch_size, h", [(3, 13), (2, 8), (1, 15)])
def test_whole_sequences_never_straddle_two_windows(tmp_path, batch_size, h):
    """Every sequence lies within one window (13 does not fit 8: it runs on), and a
    finite pass still has every frame once."""
    ds = make_dataset(tmp_path, LENGTHS)
    ws = windows(ds, batch_size=batch_size, window_size=h, step_size=h, repeat=False,
                 whole_sequences=True)
    assert frame_counts(new_rows(ws, h)[0]) == all_frames(LENGTHS)
    for n, w in enumerate(ws):
        for b in range(batch_size):
            code, frame = w.input_tbj[:, b, 0], w.input_tbj[:, b, 1]
            if code[0] > 0 and frame[0] > 0:              # a continuation: only of the long one
                assert LENGTHS[int(code[0]) - 1] > h and frame[0] % h == 0
            starts = np.flatnonzero((code > 0) & (frame == 0))
            for t in starts:
                length = LENGTHS[int(code[t]) - 1]
                assert length > h or t + length <= h, (n, b, t)   # it ends in this window
    # without the option the same pass does straddle
    plain = windows(ds, batch_size=batch_size, window_size=h, step_size=h, repeat=False)
    assert any(w.input_tbj[0, b, 1] > 0 and LENGTHS[int(w.input_tbj[0, b, 0]) - 1] <= h
               for w in plain for b in range(batch_size) if w.input_tbj[0, b, 0] > 0)


def test_whole_sequences_need_step_equal_window(tmp_path):
    ds = make_dataset(tmp_path, [2])
    with pytest.raises(ValueError, match="whole_sequences needs step_size == window_size"):
        BPTTIterator(ds, {}, batch_size=1, window_size=4, step_size=2, whole_sequences=True)
