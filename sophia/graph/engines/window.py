"""The numpy side of a fused window: the entering states, the resets, frame addresses.

Shared by the fused Ops (:mod:`~sophia.graph.engines.fused`,
:mod:`~sophia.graph.engines.fused_options`) and oneDNN's LSTM window
(:mod:`~sophia.graph.engines.onednn_lstm`). Arrays are [T][B][i] (a window's
states), [B][i] (one frame's) and [i] (an initial state); ``reset_tb`` is True at
the frames whose time signal is ≤ 0.
"""
from __future__ import annotations

import numpy as np


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


def entering_address(entering_bi, addr_stored, seq: Frames, reset_tb, t):
    """The address of the state :func:`entering` returned for frame ``t``: its own
    copy at a reset, else the previous frame's state (the stored one, ``addr_stored``,
    at frame 0)."""
    if reset_tb[t].any():
        return entering_bi.ctypes.data
    return seq[t - 1] if t else addr_stored

