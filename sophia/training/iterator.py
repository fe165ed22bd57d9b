"""The BPTT(h; h') data iterator: windows over B streams of sequences.

A recurrent net trained with truncated BPTT(h; h') carries its state from one
window to the next. Each of ``batch_size`` (B) streams reads sequences back
to back, taking the next one from a shared queue in shuffled order. Every
iteration shifts the window left by ``step_size`` (h') frames and appends h'
new frames, so the first h - h' frames of a window of ``window_size`` (h)
frames are the last h - h' of the previous one (context for the state), and
the loss covers the h' new ones.

The time signal ``time_tb`` is each frame's time within its sequence (see
:meth:`Dataset.time_signal`): 0 at a sequence's first frame, where the net
resets its state. Padding frames have input 0, target NaN, time -1 and id 0.

What is here:

- :class:`Window` -- one window: ``(input_tbj, time_tb, id_tb, target_tbk,
  new_frames)``.
- :class:`BPTTIterator` -- iterate over it for windows, endlessly
  (``repeat=True``, training) or once over every frame (``repeat=False``,
  evaluation, with ``step_size == window_size``); ``synchronized=True`` starts
  B sequences together, as recurrent batch normalization needs;
  ``whole_sequences=True`` lets no sequence straddle two windows, as Hessian-free
  steps (which start each window from zero states) and bidirectional layers (whose
  backward direction reads each sequence from its last frame) need.
- :class:`WindowStream` -- what ``iter()`` gives: the pass's position, whose
  :meth:`~WindowStream.state` (JSON-ready values and arrays, the shuffling's
  random state included) :meth:`BPTTIterator.restore` continues exactly.

Example
-------
>>> train = Dataset.open("data/toy", "train")              # doctest: +SKIP
>>> ids = {s: n for n, s in enumerate(id_order(train))}        # doctest: +SKIP
>>> it = BPTTIterator(train, ids, batch_size=16, window_size=64, step_size=32)
>>> for w in it:                                               # doctest: +SKIP
...     loss = f_train_step(w.input_tbj, w.time_tb, w.id_tb, w.target_tbk)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sophia.data.dataset import Dataset

PAD_TIME = -1.0     # time signal of padding frames (<= 0: reset)
PAD_ID = 0          # id of padding frames


class Window(NamedTuple):
    """One BPTT window; ``new_frames`` counts the real frames among the h' new ones.

    The arrays are the iterator's buffers: the next iteration overwrites them.
    Use them before advancing, or keep :meth:`copy`.
    """

    input_tbj: np.ndarray      # float32 [h][B][input_dim]
    time_tb: np.ndarray        # float32 [h][B]
    id_tb: np.ndarray          # int32 [h][B]
    target_tbk: np.ndarray     # float32 [h][B][target_dim], NaN = no target
    new_frames: int

    def copy(self) -> "Window":
        """A window owning copies of the arrays."""
        return Window(self.input_tbj.copy(), self.time_tb.copy(), self.id_tb.copy(),
                      self.target_tbk.copy(), self.new_frames)


class BPTTIterator:
    """Windows of a dataset for BPTT(h; h') with state carried across windows.

    Parameters
    ----------
    dataset : Dataset
        The split to read.
    id_index : dict[str, int]
        Index of each sequence ID (from the training split's :func:`id_order`);
        an ID not in it gets ``len(id_index)``.
    batch_size, window_size, step_size : int
        B streams, h frames a window, h' new frames a window (1 <= h' <= h).
    repeat : bool
        True: endless, reshuffled each time all sequences are used (training).
        False: each sequence once; stops after the window holding the last
        real frame among its new frames (evaluation).
    synchronized : bool
        Start groups of B sequences at the same frame. A group lasts as long
        as its longest member; shorter members are padded with input 0,
        target NaN, their id and a time signal that keeps counting up (no
        reset) by the sequence's mean frame interval. A last, smaller group
        pads its missing streams entirely (time -1).
    whole_sequences : bool
        With ``step_size == window_size``: a sequence that does not fit the rest
        of its stream's window starts that stream's next window instead, and the
        rest is padded (input 0, target NaN, time -1), so a window holds whole
        sequences only; one longer than the window still runs on into the next.
        Not with ``synchronized``.
    seed : int
        Seed of the shuffling; each ``iter()`` starts over from it.

    Iterating yields :class:`Window` objects whose arrays are overwritten by
    the next iteration.
    """

    def __init__(self, dataset: Dataset, id_index: dict[str, int], batch_size: int,
                 window_size: int, step_size: int, *, repeat: bool = True,
                 synchronized: bool = False, whole_sequences: bool = False, seed: int = 0):
        if batch_size < 1 or window_size < 1 or not 1 <= step_size <= window_size:
            raise ValueError(f"need batch_size >= 1 and 1 <= step_size <= window_size "
                             f"(got {batch_size}, {step_size}, {window_size})")
        if whole_sequences and (synchronized or step_size != window_size):
            raise ValueError("whole_sequences needs step_size == window_size and no synchronized groups")
        self._order = np.array([i for i, s in enumerate(dataset.sequences) if s.length],
                               dtype=np.int64)
        if not self._order.size:
            raise ValueError(f"{dataset.root}/{dataset.split}.list: no frames to iterate")
        self.dataset, self.id_index = dataset, id_index
        self.batch_size, self.window_size, self.step_size = batch_size, window_size, step_size
        self.repeat, self.synchronized, self.seed = repeat, synchronized, seed
        self.whole_sequences = whole_sequences

    def __iter__(self) -> "WindowStream":
        return WindowStream(self)

    def restore(self, state: dict, arrays: dict[str, np.ndarray]) -> "WindowStream":
        """A :class:`WindowStream` that goes on where the one whose
        :meth:`WindowStream.state` gave ``(state, arrays)`` was; raise ValueError
        if they do not fit this iterator's dataset and sizes."""
        stream = WindowStream(self)
        stream.set_state(state, arrays)
        return stream


class _Queue:
    """Shuffled sequence indices; endless (reshuffled) or one pass."""

    def __init__(self, order: np.ndarray, rng: np.random.Generator, repeat: bool):
        self._order, self._rng, self._repeat = order, rng, repeat
        self._perm, self._k = rng.permutation(order), 0

    def state(self) -> tuple[dict, np.ndarray]:
        return {"k": self._k, "rng": self._rng.bit_generator.state}, self._perm.copy()

    def set_state(self, state: dict, perm: np.ndarray) -> None:
        if perm.shape != self._order.shape or not 0 <= state["k"] <= len(perm):
            raise ValueError("the saved shuffling does not fit this dataset")
        self._rng.bit_generator.state = state["rng"]
        self._perm, self._k = perm.astype(np.int64), int(state["k"])

    def next(self) -> int | None:
        if self._k == len(self._perm):
            if not self._repeat:
                return None
            self._perm, self._k = self._rng.permutation(self._order), 0
        self._k += 1
        return int(self._perm[self._k - 1])


class _Stream:
    """Where one stream is: its sequence (-1: none), position and run length."""

    def __init__(self, run: int = 0):
        self.seq, self.pos, self.end, self.run = -1, 0, 0, run
        self.input_tj = self.target_tk = self.time_t = None
        self.id, self.t_last, self.dt = PAD_ID, 0.0, 1.0


class WindowStream:
    """One pass over a :class:`BPTTIterator`: its queue, streams and window buffers.

    ``next()`` gives the next :class:`Window` (its arrays are these buffers, which
    the next call overwrites) and raises StopIteration at the end of a finite pass.
    """

    def __init__(self, it: BPTTIterator):
        self.it, self.ds = it, it.dataset
        h, b = it.window_size, it.batch_size
        self.queue = _Queue(it._order, np.random.default_rng(it.seed), it.repeat)
        self.streams = [_Stream() for _ in range(b)]
        self.group_pos = self.group_len = 0
        self.input_tbj = np.zeros((h, b, self.ds.input_dim), np.float32)
        self.target_tbk = np.full((h, b, self.ds.target_dim), np.nan, np.float32)
        self.time_tb = np.full((h, b), PAD_TIME, np.float32)
        self.id_tb = np.full((h, b), PAD_ID, np.int32)

    def __iter__(self) -> "WindowStream":
        return self

    def __next__(self) -> Window:
        new_frames = self.advance()
        if new_frames == 0:                # only in a finite pass: all streams done
            raise StopIteration
        return Window(self.input_tbj, self.time_tb, self.id_tb, self.target_tbk, new_frames)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(values, arrays)``: JSON-ready values (each stream's sequence, position and
        run length, the group's position, the shuffling's random state) and the arrays
        (the queue's permutation, the window buffers). Changes nothing."""
        queue, perm = self.queue.state()
        values = {"queue": queue, "group_pos": self.group_pos, "group_len": self.group_len,
                  "streams": [[st.seq, st.pos, st.run] for st in self.streams]}
        arrays = {"perm": perm, "input_tbj": self.input_tbj, "target_tbk": self.target_tbk,
                  "time_tb": self.time_tb, "id_tb": self.id_tb}
        return values, {k: v.copy() for k, v in arrays.items()}

    def set_state(self, values: dict, arrays: dict[str, np.ndarray]) -> None:
        """Continue from what :meth:`state` returned; ValueError if it does not fit."""
        buffers = {"input_tbj": self.input_tbj, "target_tbk": self.target_tbk,
                   "time_tb": self.time_tb, "id_tb": self.id_tb}
        streams = values["streams"]
        if len(streams) != self.it.batch_size or any(arrays[k].shape != b.shape for k, b in buffers.items()):
            raise ValueError("the saved iterator does not fit this batch size, window or dataset")
        if any(not -1 <= seq < len(self.ds.sequences) for seq, _, _ in streams):
            raise ValueError("the saved iterator names a sequence this dataset does not have")
        self.queue.set_state(values["queue"], arrays["perm"])
        for name, buf in buffers.items():
            buf[...] = arrays[name]
        self.group_pos, self.group_len = int(values["group_pos"]), int(values["group_len"])
        self.streams = []
        for seq, pos, run in streams:
            st = self._start(seq, run) if seq >= 0 else _Stream(run)
            st.pos = pos
            self.streams.append(st)

    def advance(self) -> int:
        """Shift the buffers left by h' and fill the h' new rows; return real frames."""
        h, hp = self.it.window_size, self.it.step_size
        for buf in (self.input_tbj, self.target_tbk, self.time_tb, self.id_tb):
            buf[:h - hp] = buf[hp:]
        if self.it.synchronized:
            return self._fill_group(h - hp, h)
        return sum(self._fill_stream(b, h - hp, h) for b in range(self.it.batch_size))

    def _fill_stream(self, b: int, r: int, stop: int) -> int:
        st, new, first = self.streams[b], 0, r
        while r < stop:
            if st.pos >= st.run:
                seq = self.queue.next()
                if seq is None:
                    self.streams[b] = _Stream()        # drop the memory maps
                    self._pad(b, r, stop)
                    break
                st = self.streams[b] = self._start(seq)
            if self.it.whole_sequences and st.pos == 0 and r > first and st.run > stop - r:
                self._pad(b, r, stop)                  # it starts the next window
                break
            n = min(stop - r, st.run - st.pos)
            new += self._write(b, st, r, n)
            r += n
        return new

    def _fill_group(self, r: int, stop: int) -> int:
        new = 0
        while r < stop:
            if self.group_pos >= self.group_len:
                seqs = []
                while len(seqs) < self.it.batch_size and (s := self.queue.next()) is not None:
                    seqs.append(s)
                if not seqs:
                    for b in range(self.it.batch_size):
                        self._pad(b, r, stop)
                    break
                self.group_len = max(self.ds.sequences[s].length for s in seqs)
                self.group_pos = 0
                self.streams = [self._start(s, self.group_len) for s in seqs]
                self.streams += [_Stream(self.group_len)
                                 for _ in range(self.it.batch_size - len(seqs))]
            n = min(stop - r, self.group_len - self.group_pos)
            new += sum(self._write(b, st, r, n) for b, st in enumerate(self.streams))
            r += n
            self.group_pos += n
        return new

    def _start(self, seq: int, run: int = 0) -> _Stream:
        rec = self.ds.sequences[seq]
        st = _Stream(run or rec.length)
        st.seq, st.end = seq, rec.length
        st.input_tj, st.target_tk = self.ds.input(seq), self.ds.target(seq)
        st.id = self._id_of(rec.seq_id)
        if self.ds.has_time:
            st.time_t = self.ds.time_signal(seq)
            st.t_last = float(st.time_t[-1])
            st.dt = st.t_last / (rec.length - 1) if rec.length > 1 else 1.0
        else:
            st.t_last = rec.length - 1.0
        return st

    def _id_of(self, seq_id: str) -> int:
        return self.it.id_index.get(seq_id, len(self.it.id_index))

    def _write(self, b: int, st: _Stream, r: int, n: int) -> int:
        """Write frames pos..pos+n of stream ``b`` at rows r..r+n; return real frames."""
        if st.seq < 0:
            self._pad(b, r, r + n)
            st.pos += n
            return 0
        p = st.pos
        k = max(0, min(n, st.end - p))           # real frames; the rest pad a group
        self.input_tbj[r:r + k, b] = st.input_tj[p:p + k]
        self.target_tbk[r:r + k, b] = st.target_tk[p:p + k]
        self.time_tb[r:r + k, b] = (st.time_t[p:p + k] if st.time_t is not None
                                    else np.arange(p, p + k))
        self.id_tb[r:r + n, b] = st.id
        if k < n:
            self.input_tbj[r + k:r + n, b] = 0.0
            self.target_tbk[r + k:r + n, b] = np.nan
            past = np.arange(p + k, p + n) - (st.end - 1)
            self.time_tb[r + k:r + n, b] = st.t_last + past * st.dt
        st.pos += n
        return k

    def _pad(self, b: int, r: int, stop: int) -> None:
        self.input_tbj[r:stop, b] = 0.0
        self.target_tbk[r:stop, b] = np.nan
        self.time_tb[r:stop, b] = PAD_TIME
        self.id_tb[r:stop, b] = PAD_ID
