"""Fused recurrences for the unit options: peepholes, layer norm and the clock gate.

The plain LSTM and GRU windows run on :mod:`~sophia.graph.engines.fused`'s Ops.
A layer with peepholes (LSTM), layer norm or Phased-LSTM clock gates runs here:
the same structure — the input product ``x W_x`` as one graph matmul over all
frames (layer-normalised by the Op of :mod:`~sophia.graph.engines.fused_norm`
where the layer says so), then one Op for the window's
recurrence and one for its gradient, looping over the frames with one BLAS matmul
and one cell kernel per frame (``sophia_lstm_options_cell`` in ``cells.c`` and friends, which
are compiled once per set of options), the streams in blocks of batch rows side by side, one
per core (:func:`~sophia.graph.engines.window.by_rows`) — with what the scan step adds:

- **peepholes**: the input and forget gates see the entering cell, the output gate
  the new one;
- **layer norm** on the recurrent product ``h W_h`` (gain and bias over all gates)
  and, for LSTM, on the cell before its ``tanh``: every frame's normalised values
  and 1/sd are saved for the gradient;
- **the clock gate**: its openness k [T][B][i] depends on time alone, so it is
  computed for the whole window (:mod:`~sophia.graph.engines.fused_clock`'s Op, the
  function of :meth:`sophia.graph.clock.TimeGate.openness`, with the leak in training
  graphs only) and handed to the Op, which blends each
  frame's new states with the entering ones, ``k s + (1 − k) s_prev``, and returns
  the gradient of k, through which the graph differentiates the clock's parameters.

Resets, initial states, the stored states and the carry frame work as in
:mod:`~sophia.graph.engines.fused`, and ``tests/test_engines.py`` checks every
option set against the scan graph. A batch-normalised layer runs on the Ops of
:mod:`~sophia.graph.engines.fused_bn` instead, which add the norm's batch statistics
to peepholes and the clock gate.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> xw, time, W, b, h0, h, k = tt.tensor3(), tt.matrix(), tt.matrix(), tt.vector(), tt.vector(), tt.matrix(), tt.tensor3()
>>> s_h_tbi = GRUOptionsRecurrence(layer_norm=False, clock=True)(xw, time, W, b, h0, h, k)[0]
>>> f = th.function([xw, time, W, b, h0, h, k], s_h_tbi)
>>> f(np.ones((5, 2, 6)), np.ones((5, 2)), np.zeros((2, 6)), np.zeros(6), np.zeros(2),
...   np.zeros((2, 2)), np.zeros((5, 2, 2))).max()     # a shut gate keeps the stored state
0.0
"""
from __future__ import annotations

import numpy as np

from sophia.graph.engines import native, window
from sophia.graph.engines.fused_clock import openness
from sophia.graph.engines.fused_norm import layer_norm
from sophia.graph.engines.window import Frames, block, contiguous, frames
from sophia.graph.engines.window_op import WindowRecurrence, WindowRecurrenceGrad

OPTIONS = ("peephole", "layer_norm", "learn_clock_params")     # the options this module runs


def runs(layer) -> bool:
    """Whether ``layer`` has an option that needs these Ops rather than the plain ones."""
    return any(getattr(layer.options, option) for option in OPTIONS)


def recurrence(layer, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame: int, training: bool):
    """``(s_h_tbi, s_next_states, {})`` as the scan engine returns them, for an LSTM or
    GRU layer with peepholes, layer norm or clock gates (no batch norm)."""
    s_xw_tbg = layer._project_weights(s_below_tbj, layer.s_W_x_jg, None, None, training, [])
    if layer.norm_x is not None:                  # a LayerNorm: batch norm runs on fused_bn
        s_xw_tbg = layer_norm(s_xw_tbg, layer.norm_x.v_gamma_g, layer.norm_x.v_beta_g)
    o = layer.options
    extras = []
    if layer.unit == "lstm" and o.peephole:
        extras.append(layer.v_peep)
    if o.layer_norm:
        extras += [layer.norm_h.v_gamma_g, layer.norm_h.v_beta_g]
        if layer.unit == "lstm":
            extras += [layer.norm_c.v_gamma_g, layer.norm_c.v_beta_g]
    if layer.gate is not None:
        extras.append(openness(layer.gate, s_time_tb, training))
    if layer.unit == "lstm":
        op = LSTMOptionsRecurrence(peephole=bool(o.peephole), layer_norm=bool(o.layer_norm), clock=layer.gate is not None)
    else:
        op = GRUOptionsRecurrence(layer_norm=bool(o.layer_norm), clock=layer.gate is not None)
    n = len(layer.state_names)
    states_tbi = op(s_xw_tbg, s_time_tb, layer.s_W_h_ig, layer.v_b_g, *layer.initial, *s_prev_states, *extras)[:n]
    return states_tbi[0], [s[carry_frame] for s in states_tbi], {}


def _flags(peephole=False, layer_norm=False, clock=False) -> int:
    return (native.PEEPHOLE * peephole) | (native.LAYER_NORM * layer_norm) | (native.CLOCK * clock)


class _LSTMKernelFlags:
    @property
    def kernel_flags(self) -> int:
        """The option bits the kernel is compiled for."""
        return _flags(self.peephole, self.layer_norm, self.clock)


class _GRUKernelFlags:
    @property
    def kernel_flags(self) -> int:
        """The option bits the kernel is compiled for."""
        return _flags(layer_norm=self.layer_norm, clock=self.clock)


class LSTMOptionsRecurrence(_LSTMKernelFlags, native.CallsKernel, WindowRecurrence):
    """LSTM over a window with peepholes, layer norm and/or the clock gate.

    Inputs: ``xw_tbg, time_tb, W_h_ig, b_g, h0_i, c0_i, h_bi, c_bi``, then ``peep``
    [3i] (peephole), ``gamma_h, beta_h`` [4i] and ``gamma_c, beta_c`` [i] (layer
    norm), ``k_tbi`` (clock). Outputs: ``h_tbi, c_tbi``, then the saved arrays.
    """

    kernel_name = "lstm_options_cell"

    __props__ = ("peephole", "layer_norm", "clock")
    n_states = 2
    saved = (("act", 4, None), ("c_new", 1, "clock"), ("h_new", 1, "clock"), ("n_h", 4, "layer_norm"),
             ("rstd_h", "1", "layer_norm"), ("n_c", 1, "layer_norm"), ("rstd_c", "1", "layer_norm"))

    def __init__(self, peephole=False, layer_norm=False, clock=False):
        self.peephole, self.layer_norm, self.clock = bool(peephole), bool(layer_norm), bool(clock)

    def _param_ndims(self):
        return [1] * self.peephole + [1] * 4 * self.layer_norm

    def grad_op(self, given):
        return LSTMOptionsRecurrenceGrad(self.peephole, self.layer_norm, self.clock, given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        arrays = contiguous(inputs[:1] + inputs[2:], dtype)
        (xw, W, bias, h0, c0, h_bi, c_bi), extras = arrays[:7], iter(arrays[7:])
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xw.shape
        i = gates // 4
        dummy = np.zeros(1, dtype)
        peep = next(extras) if self.peephole else dummy
        gamma_h, beta_h, gamma_c, beta_c = [next(extras) for _ in range(4)] if self.layer_norm else [dummy] * 4
        k = next(extras) if self.clock else None
        (h_seq, c_seq), saved, _ = self._allocate(steps, batch, i, dtype)
        act, c_new, h_new, n_h, rstd_h, n_c, rstd_c = saved
        if not self.clock:                        # the new states are the frame's states
            c_new, h_new = c_seq, h_seq
        cell, one = native.kernel(self.kernel_name, dtype, self.kernel_flags), act.dtype.type(1)

        def rows(lo, hi):
            act_b, h_b, c_b = (block(x, lo, hi) for x in (act, h_seq, c_seq))
            args = [Frames(act_b), Frames(block(xw, lo, hi)), bias, None, None, peep, gamma_h, beta_h, gamma_c,
                    beta_c, *(frames(block(x, lo, hi), dummy) for x in (k, n_h, rstd_h, n_c, rstd_c, c_new, h_new)),
                    Frames(c_b), Frames(h_b), hi - lo, i, one]
            window.forward(cell, args, W, act_b, (h_bi[lo:hi], c_bi[lo:hi]), (h0, c0), (h_b, c_b), reset[:, lo:hi])
        window.by_rows(rows, batch, steps * gates)
        for storage, value in zip(output_storage, [h_seq, c_seq, *saved]):
            storage[0] = value


class LSTMOptionsRecurrenceGrad(_LSTMKernelFlags, native.CallsKernel, WindowRecurrenceGrad):
    """Backpropagation through time of :class:`LSTMOptionsRecurrence`."""

    kernel_name = "lstm_options_cell_grad"

    __props__ = ("peephole", "layer_norm", "clock", "given")
    forward = LSTMOptionsRecurrence

    def __init__(self, peephole, layer_norm, clock, given):
        self.peephole, self.layer_norm, self.clock = bool(peephole), bool(layer_norm), bool(clock)
        self.given = tuple(bool(g) for g in given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, params, outputs, (dh_out, dc_out) = self._unpack(inputs, dtype)
        (W, _, h0, c0, h_bi, c_bi), extras = params[:6], iter(params[6:])
        h_seq, c_seq, act, c_new, h_new, n_h, rstd_h, n_c, rstd_c = outputs
        steps, batch, gates = act.shape
        i = gates // 4
        dummy, zero_bi = np.zeros(1, dtype), np.zeros((batch, i), dtype)
        peep = next(extras) if self.peephole else dummy
        gamma_h, _, gamma_c, beta_c = [next(extras) for _ in range(4)] if self.layer_norm else [dummy] * 4
        k = next(extras) if self.clock else None
        d_pre = np.empty_like(act)
        d_ha = np.empty_like(act) if self.layer_norm else d_pre
        d_k = np.empty((steps, batch, i), dtype) if self.clock else None
        dh, dc = np.zeros((batch, i), dtype), np.zeros((batch, i), dtype)
        dh0, dc0 = np.zeros(i, dtype), np.zeros(i, dtype)
        db, d_peep = np.zeros(gates, np.float64), np.zeros(3 * i if self.peephole else 1, np.float64)
        d_gamma_h = np.zeros(gates if self.layer_norm else 1, np.float64)
        d_gamma_c, d_beta_c = (np.zeros(i if self.layer_norm else 1, np.float64) for _ in range(2))
        c_new = c_new if self.clock else c_seq
        cell_grad, one = native.kernel(self.kernel_name, dtype, self.kernel_flags), act.dtype.type(1)
        W_gi = np.ascontiguousarray(W.T)

        def rows(lo, hi, *sums):
            d_ha_b = block(d_ha, lo, hi)
            args = [dh[lo:hi], dc[lo:hi], *(Frames(block(x, lo, hi), zero_bi) for x in (dh_out, dc_out)),
                    *(frames(block(x, lo, hi), dummy) for x in (act, c_new, h_new)), None, None,
                    *(frames(block(x, lo, hi), dummy) for x in (n_h, rstd_h, n_c, rstd_c)),
                    peep, gamma_h, gamma_c, beta_c,
                    *(frames(block(x, lo, hi), dummy) for x in (k, d_pre, d_ha, d_k)), *sums[:5],
                    hi - lo, i, one]
            window.backward(cell_grad, args, W_gi, d_ha_b, (h_bi[lo:hi], c_bi[lo:hi]), (h0, c0),
                            (block(h_seq, lo, hi), block(c_seq, lo, hi)), reset[:, lo:hi], (dh[lo:hi], dc[lo:hi]),
                            sums[5:])
        window.by_rows(rows, batch, steps * gates, (db, d_peep, d_gamma_h, d_gamma_c, d_beta_c, dh0, dc0))
        dW = window.weight_grad(h_bi, h_seq, h0, reset, d_ha)
        grads = [d_pre, dW, db.astype(dtype), dh0, dc0, dh, dc]
        if self.peephole:
            grads.append(d_peep.astype(dtype))
        if self.layer_norm:
            grads += [x.astype(dtype) for x in (d_gamma_h, db, d_gamma_c, d_beta_c)]
        if self.clock:
            grads.append(d_k)
        for storage, value in zip(output_storage, grads):
            storage[0] = value


class GRUOptionsRecurrence(_GRUKernelFlags, native.CallsKernel, WindowRecurrence):
    """GRU over a window with layer norm and/or the clock gate.

    Inputs: ``xw_tbg, time_tb, W_h_ig, b_g, h0_i, h_bi``, then ``gamma_h, beta_h``
    [3i] (layer norm), ``k_tbi`` (clock). Outputs: ``h_tbi``, then the saved arrays.
    """

    kernel_name = "gru_options_cell"

    __props__ = ("layer_norm", "clock")
    n_states = 1
    saved = (("act", 3, None), ("hn", 1, None), ("h_new", 1, "clock"), ("n_h", 3, "layer_norm"),
             ("rstd_h", "1", "layer_norm"))

    def __init__(self, layer_norm=False, clock=False):
        self.layer_norm, self.clock = bool(layer_norm), bool(clock)

    def _param_ndims(self):
        return [1] * 2 * self.layer_norm

    def grad_op(self, given):
        return GRUOptionsRecurrenceGrad(self.layer_norm, self.clock, given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        arrays = contiguous(inputs[:1] + inputs[2:], dtype)
        (xw, W, bias, h0, h_bi), extras = arrays[:5], iter(arrays[5:])
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xw.shape
        i = gates // 3
        dummy = np.zeros(1, dtype)
        gamma_h, beta_h = [next(extras) for _ in range(2)] if self.layer_norm else [dummy] * 2
        k = next(extras) if self.clock else None
        (h_seq,), saved, _ = self._allocate(steps, batch, i, dtype)
        act, hn, h_new, n_h, rstd_h = saved
        h_new = h_new if self.clock else h_seq
        cell, one = native.kernel(self.kernel_name, dtype, self.kernel_flags), act.dtype.type(1)

        def rows(lo, hi):
            ha = np.empty((hi - lo, gates), dtype)          # the frame's h_prev W_h
            h_b = block(h_seq, lo, hi)
            args = [ha, Frames(block(xw, lo, hi)), bias, None, gamma_h, beta_h,
                    *(frames(block(x, lo, hi), dummy) for x in (k, n_h, rstd_h, act, hn, h_new, h_seq)),
                    hi - lo, i, one]
            window.forward(cell, args, W, ha, (h_bi[lo:hi],), (h0,), (h_b,), reset[:, lo:hi])
        window.by_rows(rows, batch, steps * gates)
        for storage, value in zip(output_storage, [h_seq, *saved]):
            storage[0] = value


class GRUOptionsRecurrenceGrad(_GRUKernelFlags, native.CallsKernel, WindowRecurrenceGrad):
    """Backpropagation through time of :class:`GRUOptionsRecurrence`."""

    kernel_name = "gru_options_cell_grad"

    __props__ = ("layer_norm", "clock", "given")
    forward = GRUOptionsRecurrence

    def __init__(self, layer_norm, clock, given):
        self.layer_norm, self.clock = bool(layer_norm), bool(clock)
        self.given = tuple(bool(g) for g in given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, params, outputs, (dh_out,) = self._unpack(inputs, dtype)
        (W, _, h0, h_bi), extras = params[:4], iter(params[4:])
        h_seq, act, hn, h_new, n_h, rstd_h = outputs
        steps, batch, gates = act.shape
        i = gates // 3
        dummy, zero_bi = np.zeros(1, dtype), np.zeros((batch, i), dtype)
        gamma_h = next(extras) if self.layer_norm else dummy
        if self.layer_norm:
            next(extras)                                   # beta_h: not needed for the gradient
        k = next(extras) if self.clock else None
        d_pre, d_ha = np.empty_like(act), np.empty_like(act)
        d_k = np.empty((steps, batch, i), dtype) if self.clock else None
        dh, dh0 = np.zeros((batch, i), dtype), np.zeros(i, dtype)
        db = np.zeros(gates, np.float64)
        d_gamma_h, d_beta_h = (np.zeros(gates if self.layer_norm else 1, np.float64) for _ in range(2))
        cell_grad, one = native.kernel(self.kernel_name, dtype, self.kernel_flags), act.dtype.type(1)
        W_gi = np.ascontiguousarray(W.T)

        def rows(lo, hi, *sums):
            args = [dh[lo:hi], Frames(block(dh_out, lo, hi), zero_bi), Frames(block(act, lo, hi)), None,
                    *(frames(block(x, lo, hi), dummy) for x in (hn, h_new, n_h, rstd_h)), gamma_h,
                    *(frames(block(x, lo, hi), dummy) for x in (k, d_pre, d_ha, d_k)), *sums[:3],
                    hi - lo, i, one]
            window.backward(cell_grad, args, W_gi, block(d_ha, lo, hi), (h_bi[lo:hi],), (h0,),
                            (block(h_seq, lo, hi),), reset[:, lo:hi], (dh[lo:hi],), sums[3:])
        window.by_rows(rows, batch, steps * gates, (db, d_gamma_h, d_beta_h, dh0))
        dW = window.weight_grad(h_bi, h_seq, h0, reset, d_ha)
        grads = [d_pre, dW, db.astype(dtype), dh0, dh]
        if self.layer_norm:
            grads += [d_gamma_h.astype(dtype), d_beta_h.astype(dtype)]
        if self.clock:
            grads.append(d_k)
        for storage, value in zip(output_storage, grads):
            storage[0] = value
