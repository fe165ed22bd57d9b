"""The numpy side of a fused window: the entering states, the resets, frame addresses.

Shared by the fused Ops (:mod:`~sophia.graph.engines.fused`,
:mod:`~sophia.graph.engines.fused_options`, :mod:`~sophia.graph.engines.fused_bn`)
and oneDNN's LSTM window (:mod:`~sophia.graph.engines.onednn_lstm`). Arrays are
[T][B][i] (a window's states), [B][i] (one frame's) and [i] (an initial state);
``reset_tb`` is True at the frames whose time signal is ≤ 0.

:func:`forward` and :func:`backward` run the frame loops of the option and batch-norm
Ops: a cell kernel's arguments are laid out once per window (:func:`frame_args`), so
a frame's call only fills in the addresses of its entering states. :func:`by_rows` runs
a window's loop (these, or the plain Ops' of :mod:`~sophia.graph.engines.fused`) on
blocks of the batch rows side by side; the weight gradient (:func:`weight_grad`) is
then taken over the whole window.
"""
from __future__ import annotations

import numpy as np

from sophia.graph.engines import blocks


def contiguous(inputs, dtype):
    """Each of ``inputs`` as a C-contiguous array of ``dtype`` (copied only where needed)."""
    return [np.ascontiguousarray(x, dtype=dtype) for x in inputs]


def entering(stored_bi, seq_tbi, init_i, reset_tb, t):
    """The state [B][i] entering frame ``t``: the previous frame's state (the stored
    state for frame 0), replaced by the initial state in the streams that reset there."""
    prev = stored_bi if t == 0 else seq_tbi[t - 1]
    if reset_tb[t].any():
        prev = prev.copy()
        prev[reset_tb[t]] = init_i
    return prev


def weight_grad(stored_bi, seq_tbi, init_i, reset_tb, d_tbg):
    """Σ_t h_in[t]ᵀ d[t] [i][g] for the entering states h_in, without building them:
    two matmuls over the stored and the shifted states, then the reset frames' rows
    corrected to the initial state."""
    steps, batch, i = seq_tbi.shape
    dW = np.dot(stored_bi.T, d_tbg[0])
    if steps > 1:
        dW += np.dot(seq_tbi[:-1].reshape((steps - 1) * batch, i).T, d_tbg[1:].reshape((steps - 1) * batch, -1))
    t_idx, b_idx = np.nonzero(reset_tb)
    if t_idx.size:
        used = np.where((t_idx == 0)[:, None], stored_bi[b_idx], seq_tbi[t_idx - 1, b_idx])
        dW += np.dot((init_i - used).T, d_tbg[t_idx, b_idx])
    return dW


def route_reset(d_entering_bi, d_init_i, reset_b):
    """Send the gradient of a reset frame's entering state to the initial state."""
    if reset_b.any():
        d_init_i += d_entering_bi[reset_b].sum(axis=0)
        d_entering_bi[reset_b] = 0


class Frames:
    """The addresses of an array's frames for the native kernels: ``frames[t]`` is
    the address of ``array[t]``; with ``array`` None, of ``zeros_bi`` at every frame
    (an output gradient not given). The arrays must stay alive while they are used."""

    __slots__ = ("base", "step")

    def __init__(self, array, zeros_bi=None):
        if array is None:
            self.base, self.step = zeros_bi.ctypes.data, 0
        else:
            self.base, self.step = array.ctypes.data, array.strides[0]

    def __getitem__(self, t):
        return self.base + t * self.step


def frames(array, dummy):
    """:class:`Frames` of ``array``, or of ``dummy`` at every frame where ``array`` is
    None or empty (the array of an option that is off)."""
    return Frames(array) if array is not None and array.size else Frames(None, dummy)


def frame_args(args, steps):
    """The argument list of a native kernel's call at each of ``steps`` frames: each
    of ``args`` is a :class:`Frames` (the address of its frame), an array (its address)
    or anything else (passed as it is, None included)."""
    columns = [[a[t] for t in range(steps)] if isinstance(a, Frames)
               else [a.ctypes.data if isinstance(a, np.ndarray) else a] * steps for a in args]
    return [list(row) for row in zip(*columns)]


def forward(cell, args, W_ig, product_tbg, stored, initial, seq, reset_tb):
    """Run a window's recurrence frame by frame: the entering states (the ``stored``
    [B][i] at frame 0, else the previous frame's of ``seq`` [T][B][i], replaced by
    ``initial`` [i] in the streams that reset), their recurrent product h W_ig into
    ``product_tbg[t]`` (or into ``product_tbg`` itself where it is one frame's
    [B][g]), then ``cell(*args)`` with the Nones of ``args`` replaced by the entering
    states' addresses, in order. The cell writes frame t of ``seq``."""
    rows, at = frame_args(args, len(reset_tb)), [n for n, a in enumerate(args) if a is None]
    prev = stored
    for t, row in enumerate(rows):
        if reset_tb[t].any():
            prev = [p.copy() for p in prev]
            for p, init in zip(prev, initial):
                p[reset_tb[t]] = init
        np.dot(prev[0], W_ig, out=product_tbg[t] if product_tbg.ndim == 3 else product_tbg)
        for n, p in zip(at, prev):
            row[n] = p.ctypes.data
        cell(*row)
        prev = [s[t] for s in seq]


def backward(cell_grad, args, W_gi, d_ha_tbg, stored, initial, seq, reset_tb, d_states, d_initial):
    """Backpropagate through the frames of :func:`forward`, last first:
    ``cell_grad(*args)`` with the Nones of ``args`` replaced by the addresses of the
    entering states, then the gradient of the recurrent product, ``d_ha_tbg[t]``, sent
    through ``W_gi`` (W_h transposed, C-contiguous) into the entering h
    (``d_states[0]``), and a reset frame's entering gradients (``d_states`` [B][i]) into
    ``d_initial`` [i]. On return ``d_states`` hold those of the stored states; the
    gradient of W_h is :func:`weight_grad`'s."""
    rows, at = frame_args(args, len(reset_tb)), [n for n, a in enumerate(args) if a is None]
    dh = d_states[0]
    back = np.empty_like(dh)
    for t in reversed(range(len(rows))):
        row, h_in = rows[t], [entering(*x, reset_tb, t) for x in zip(stored, seq, initial)]
        for n, x in zip(at, h_in):
            row[n] = x.ctypes.data
        cell_grad(*row)
        dh += np.dot(d_ha_tbg[t], W_gi, out=back)
        for d, d0 in zip(d_states, d_initial):
            route_reset(d, d0, reset_tb[t])


def block(array, lo, hi):
    """Rows ``lo:hi`` of every frame of ``array`` [T][B][·] (a view; None stays None)."""
    return None if array is None else array[:, lo:hi]


def by_rows(run, batch, width, totals=()):
    """Run a window's frame loop on blocks of its batch rows side by side:
    ``run(lo, hi, *sums)`` for each block of ``range(batch)`` (:func:`blocks.split`, rows
    of ``width`` values: a window's frames times a row's gates), with ``sums`` zero
    arrays like ``totals`` (the float64 accumulators and the initial states' gradients),
    which are added into ``totals`` in block order once every block is done.

    The rows of an LSTM or GRU window, without batch norm, never meet: each block runs
    the whole recurrence of its streams, its products on one BLAS thread, with no
    hand-off between frames. One block (a small batch, one core) runs ``run(0, batch,
    *totals)`` here. ``bench/row_blocks.py`` measures the blocks against one block."""
    spans = blocks.split(batch, width)
    if len(spans) == 1:
        run(0, batch, *totals)
        return
    parts = [[np.zeros_like(t) for t in totals] for _ in spans]
    blocks.run(lambda k, lo, hi: run(lo, hi, *parts[k]), spans, blas_threads=1)
    for part in parts:
        for total, value in zip(totals, part):
            total += value


def entering_address(entering_bi, addr_stored, seq: Frames, reset_tb, t):
    """The address of the state :func:`entering` returned for frame ``t``: its own
    copy at a reset, else the previous frame's state (the stored one, ``addr_stored``,
    at frame 0)."""
    if reset_tb[t].any():
        return entering_bi.ctypes.data
    return seq[t - 1] if t else addr_stored

