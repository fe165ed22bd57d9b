"""Fused recurrences with recurrent batch norm (Cooijmans et al. 2016).

A batch-normalised LSTM or GRU layer runs here with the structure of the other fused
Ops — the input product ``x W_x`` as one graph matmul over all frames, then one Op for
the window's recurrence and one for its gradient, one BLAS matmul and one cell kernel
per frame (``sophia_lstm_bn_cell`` and friends in ``cells.c``) — computing what the scan step
computes (:class:`sophia.graph.norms.BatchNorm` on the paths of ``layers.py``):

- the input product, normalised over the batch per frame (no β), then the bias:
  outside the recurrence, by :func:`~sophia.graph.engines.fused_norm.batch_norm` in
  training and by the graph's population statistics at inference;
- the recurrent product ``h W_h`` (no β) and, for LSTM, the cell before its ``tanh``
  (with β), normalised inside the cell kernel over the frame's batch, which the kernel
  holds whole; peepholes and the clock gate as in
  :mod:`~sophia.graph.engines.fused_options`.

In training the statistics are every frame's own over all its streams (padding and
reset frames included, as in scan); the Op returns them, [T][g], and the layer's
population updates are those of the scan graph (:meth:`Layer._population_updates`,
indexed by stream 0's time step). At inference (``training=False``) every stream reads
the population statistics of its own time step, the time signal clipped to
``batch_norm_steps − 1``; such an Op has no gradient. ``tests/test_engines.py`` and
``tests/test_fused_bn.py`` check both against the scan graph.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> xw, time, W, b, h0, h, gamma = tt.tensor3(), tt.matrix(), tt.matrix(), tt.vector(), tt.vector(), tt.matrix(), tt.vector()
>>> s_h_tbi = GRUBatchNormRecurrence(clock=False, training=True)(xw, time, W, b, h0, h, gamma)[0]
>>> f = th.function([xw, time, W, b, h0, h, gamma], s_h_tbi)
>>> f(np.zeros((5, 2, 6)), np.ones((5, 2)), np.zeros((2, 6)), np.zeros(6), np.zeros(2),
...   np.zeros((2, 2)), np.ones(6)).shape
(5, 2, 2)
"""
from __future__ import annotations

import numpy as np

from sophia.graph.engines import native, window
from sophia.graph.engines.fused_clock import openness
from sophia.graph.engines.fused_norm import batch_norm
from sophia.graph.engines.window import Frames, contiguous, frames
from sophia.graph.engines.window_op import WindowRecurrence, WindowRecurrenceGrad


def recurrence(layer, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame: int, training: bool):
    """``(s_h_tbi, s_next_states, updates)`` as the scan engine returns them, for a
    batch-normalised LSTM or GRU layer (with peepholes or clock gates, or neither)."""
    s_step_tb = layer._step_index(s_time_tb)
    s_xw_tbg = layer._project_weights(s_below_tbj, layer.s_W_x_jg, None, None, training, [])
    stats = []
    if training:
        s_xw_tbg, s_mean_tg, s_var_tg = batch_norm(s_xw_tbg, layer.norm_x.v_gamma_g)
        stats.append((layer.norm_x, s_mean_tg, s_var_tg))
    else:
        s_xw_tbg = layer._apply_norm(layer.norm_x, s_xw_tbg, s_step_tb, False, [])
    lstm, clock = layer.unit == "lstm", layer.gate is not None
    inner = [layer.norm_h] + ([layer.norm_c] if lstm else [])
    extras = [layer.v_peep] if lstm and layer.options.peephole else []
    extras += [layer.norm_h.v_gamma_g] + ([layer.norm_c.v_gamma_g, layer.norm_c.v_beta_g] if lstm else [])
    if not training:
        extras += [s_step_tb] + [v for norm in inner for v in norm.v_buffers.values()]
    if clock:
        extras.append(openness(layer.gate, s_time_tb, training))
    if lstm:
        op = LSTMBatchNormRecurrence(peephole=bool(layer.options.peephole), clock=clock, training=training)
    else:
        op = GRUBatchNormRecurrence(clock=clock, training=training)
    outputs = op(s_xw_tbg, s_time_tb, layer.s_W_h_ig, layer.v_b_g, *layer.initial, *s_prev_states, *extras)
    n = len(layer.state_names)
    if training:
        s_stats = outputs[-2 * len(inner):]
        stats += [(norm, s_stats[2 * k], s_stats[2 * k + 1]) for k, norm in enumerate(inner)]
    updates = layer._population_updates(stats, s_step_tb[:, 0]) if training else {}
    return outputs[0], [s[carry_frame] for s in outputs[:n]], updates


def _scratch(width: int):
    """The float64 scratch of the batch-norm kernels for rows of ``width`` values."""
    return np.empty((native.SCRATCH_ROWS, width), np.float64)


def _flags(peephole=False, clock=False, training=True) -> int:
    return (native.PEEPHOLE * peephole) | (native.CLOCK * clock) | (native.POPULATION * (not training))


class _KernelFlags:
    peephole = False

    @property
    def kernel_flags(self) -> int:
        """The option bits the kernel is compiled for (gradients: training graphs only)."""
        return _flags(self.peephole, self.clock, self.training)


def _statistics(training, stats, population, step_tb, dummy):
    """:class:`Frames` of each inner norm's mean and var, and the arrays they address
    (to keep alive while they are used): the frames' rows of ``stats`` [T][w]
    (training), or each stream's population row of its time step, [T][B][w]
    (inference)."""
    if training:
        return [frames(s, dummy) for s in stats], stats
    rows = [np.ascontiguousarray(p[step_tb]) for p in population]
    return [Frames(r) for r in rows], rows


class LSTMBatchNormRecurrence(_KernelFlags, native.CallsKernel, WindowRecurrence):
    """Batch-normalised LSTM over a window, with or without peepholes and the clock gate.

    Inputs: ``xw_tbg, time_tb, W_h_ig, b_g, h0_i, c0_i, h_bi, c_bi``, then ``peep``
    [3i] (peephole), ``gamma_h`` [4i], ``gamma_c, beta_c`` [i], at inference
    ``step_tb`` and the population ``mean_h, var_h`` [S][4i], ``mean_c, var_c`` [S][i],
    then ``k_tbi`` (clock). Outputs: ``h_tbi, c_tbi``, the saved arrays, then the batch
    statistics ``mean_h, var_h`` [T][4i] and ``mean_c, var_c`` [T][i].
    """

    kernel_name = "lstm_bn_cell"

    __props__ = ("peephole", "clock", "training")
    n_states = 2
    saved = (("act", 4, None), ("n_h", 4, None), ("n_c", 1, None), ("c_new", 1, "clock"), ("h_new", 1, "clock"))
    stats_widths = (4, 1)

    def __init__(self, peephole=False, clock=False, training=True):
        self.peephole, self.clock, self.training = bool(peephole), bool(clock), bool(training)

    def _param_ndims(self):
        return [1] * self.peephole + [1] * 3

    def grad_op(self, given):
        return LSTMBatchNormRecurrenceGrad(self.peephole, self.clock, given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        n_params = len(self._param_ndims())
        (xw, W, bias, h0, c0, h_bi, c_bi) = contiguous(inputs[:1] + inputs[2:8], dtype)
        params = iter(contiguous(inputs[8:8 + n_params], dtype))
        rest = inputs[8 + n_params:]
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xw.shape
        i = gates // 4
        dummy = np.zeros(1, dtype)
        peep = next(params) if self.peephole else dummy
        gamma_h, gamma_c, beta_c = params
        step_tb = None if self.training else np.asarray(rest[0])
        population = [] if self.training else contiguous(rest[1:5], dtype)
        k = np.ascontiguousarray(rest[-1], dtype) if self.clock else None
        (h_seq, c_seq), saved, stats = self._allocate(steps, batch, i, dtype)
        act, n_h, n_c, c_new, h_new = saved
        if not self.clock:                        # the new states are the frame's states
            c_new, h_new = c_seq, h_seq
        # the Frames hold addresses only: ``alive`` keeps the statistics' arrays until the loop has run
        (mean_h, var_h, mean_c, var_c), alive = _statistics(self.training, stats, population, step_tb, dummy)
        args = [Frames(act), Frames(xw), bias, None, None, peep, gamma_h, gamma_c, beta_c, frames(k, dummy),
                mean_h, var_h, Frames(n_h), mean_c, var_c, Frames(n_c), *(frames(x, dummy) for x in (c_new, h_new)),
                Frames(c_seq), Frames(h_seq), _scratch(gates), batch, i, act.dtype.type(1)]
        cell = native.kernel(self.kernel_name, dtype, self.kernel_flags)
        window.forward(cell, args, W, act, (h_bi, c_bi), (h0, c0), (h_seq, c_seq), reset)
        for storage, value in zip(output_storage, [h_seq, c_seq, *saved, *stats]):
            storage[0] = value


class LSTMBatchNormRecurrenceGrad(_KernelFlags, native.CallsKernel, WindowRecurrenceGrad):
    """Backpropagation through time of :class:`LSTMBatchNormRecurrence` (training)."""

    kernel_name = "lstm_bn_cell_grad"

    __props__ = ("peephole", "clock", "given")
    forward = LSTMBatchNormRecurrence

    def __init__(self, peephole, clock, given):
        self.peephole, self.clock = bool(peephole), bool(clock)
        self.given = tuple(bool(g) for g in given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, params, outputs, (dh_out, dc_out) = self._unpack(inputs, dtype)
        (W, _, h0, c0, h_bi, c_bi), extras = params[:6], iter(params[6:])
        h_seq, c_seq, act, n_h, n_c, c_new, h_new, _, var_h, _, var_c = outputs
        steps, batch, gates = act.shape
        i = gates // 4
        dummy, zero_bi = np.zeros(1, dtype), np.zeros((batch, i), dtype)
        peep = next(extras) if self.peephole else dummy
        gamma_h, gamma_c, beta_c = next(extras), next(extras), next(extras)
        k = next(extras) if self.clock else None
        d_pre, d_ha = np.empty_like(act), np.empty_like(act)
        d_k = np.empty((steps, batch, i), dtype) if self.clock else None
        dh, dc = np.zeros((batch, i), dtype), np.zeros((batch, i), dtype)
        dh0, dc0 = np.zeros(i, dtype), np.zeros(i, dtype)
        db, d_gamma_h, d_beta_h = (np.zeros(gates, np.float64) for _ in range(3))
        d_peep = np.zeros(3 * i if self.peephole else 1, np.float64)
        d_gamma_c, d_beta_c = np.zeros(i, np.float64), np.zeros(i, np.float64)
        c_new, h_new = (c_new, h_new) if self.clock else (c_seq, h_seq)
        args = [dh, dc, Frames(dh_out, zero_bi), Frames(dc_out, zero_bi),
                *(frames(x, dummy) for x in (act, c_new, h_new)), None, None,
                *(frames(x, dummy) for x in (n_h, var_h, n_c, var_c)), peep, gamma_h, gamma_c, beta_c,
                *(frames(x, dummy) for x in (k, d_pre, d_ha, d_k)), _scratch(gates), db, d_peep,
                d_gamma_h, d_beta_h, d_gamma_c, d_beta_c, batch, i, act.dtype.type(1)]
        cell_grad = native.kernel(self.kernel_name, dtype, self.kernel_flags)
        window.backward(cell_grad, args, np.ascontiguousarray(W.T), d_ha, (h_bi, c_bi), (h0, c0), (h_seq, c_seq), reset,
                        (dh, dc), (dh0, dc0))
        dW = window.weight_grad(h_bi, h_seq, h0, reset, d_ha)
        grads = [d_pre, dW, db.astype(dtype), dh0, dc0, dh, dc]
        grads += [d_peep.astype(dtype)] if self.peephole else []
        grads += [x.astype(dtype) for x in (d_gamma_h, d_gamma_c, d_beta_c)]
        grads += [d_k] if self.clock else []
        for storage, value in zip(output_storage, grads):
            storage[0] = value


class GRUBatchNormRecurrence(_KernelFlags, native.CallsKernel, WindowRecurrence):
    """Batch-normalised GRU over a window, with or without the clock gate.

    Inputs: ``xw_tbg, time_tb, W_h_ig, b_g, h0_i, h_bi``, then ``gamma_h`` [3i], at
    inference ``step_tb`` and the population ``mean_h, var_h`` [S][3i], then ``k_tbi``
    (clock). Outputs: ``h_tbi``, the saved arrays, then ``mean_h, var_h`` [T][3i].
    """

    kernel_name = "gru_bn_cell"

    __props__ = ("clock", "training")
    n_states = 1
    saved = (("act", 3, None), ("hn", 1, None), ("n_h", 3, None), ("h_new", 1, "clock"))
    stats_widths = (3,)

    def __init__(self, clock=False, training=True):
        self.clock, self.training = bool(clock), bool(training)

    def _param_ndims(self):
        return [1]

    def grad_op(self, given):
        return GRUBatchNormRecurrenceGrad(self.clock, given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        xw, W, bias, h0, h_bi, gamma_h = contiguous(inputs[:1] + inputs[2:7], dtype)
        rest = inputs[7:]
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xw.shape
        i = gates // 3
        dummy = np.zeros(1, dtype)
        step_tb = None if self.training else np.asarray(rest[0])
        population = [] if self.training else contiguous(rest[1:3], dtype)
        k = np.ascontiguousarray(rest[-1], dtype) if self.clock else None
        (h_seq,), saved, stats = self._allocate(steps, batch, i, dtype)
        act, hn, n_h, h_new = saved
        ha = np.empty((batch, gates), dtype)
        h_new = h_new if self.clock else h_seq
        (mean_h, var_h), alive = _statistics(self.training, stats, population, step_tb, dummy)   # alive: as in LSTM
        args = [ha, Frames(xw), bias, None, gamma_h, frames(k, dummy), mean_h, var_h,
                *(frames(x, dummy) for x in (n_h, act, hn, h_new, h_seq)), _scratch(gates),
                batch, i, act.dtype.type(1)]
        cell = native.kernel(self.kernel_name, dtype, self.kernel_flags)
        window.forward(cell, args, W, ha, (h_bi,), (h0,), (h_seq,), reset)
        for storage, value in zip(output_storage, [h_seq, *saved, *stats]):
            storage[0] = value


class GRUBatchNormRecurrenceGrad(_KernelFlags, native.CallsKernel, WindowRecurrenceGrad):
    """Backpropagation through time of :class:`GRUBatchNormRecurrence` (training)."""

    kernel_name = "gru_bn_cell_grad"

    __props__ = ("clock", "given")
    forward = GRUBatchNormRecurrence

    def __init__(self, clock, given):
        self.clock = bool(clock)
        self.given = tuple(bool(g) for g in given)

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, params, outputs, (dh_out,) = self._unpack(inputs, dtype)
        W, _, h0, h_bi, gamma_h = params[:5]
        k = params[5] if self.clock else None
        h_seq, act, hn, n_h, h_new, _, var_h = outputs
        steps, batch, gates = act.shape
        i = gates // 3
        dummy, zero_bi = np.zeros(1, dtype), np.zeros((batch, i), dtype)
        d_pre, d_ha = np.empty_like(act), np.empty_like(act)
        d_k = np.empty((steps, batch, i), dtype) if self.clock else None
        dh, dh0 = np.zeros((batch, i), dtype), np.zeros(i, dtype)
        db, d_gamma_h, d_beta_h = (np.zeros(gates, np.float64) for _ in range(3))
        h_new = h_new if self.clock else h_seq
        args = [dh, Frames(dh_out, zero_bi), Frames(act), None, *(frames(x, dummy) for x in (hn, h_new, n_h, var_h)),
                gamma_h, *(frames(x, dummy) for x in (k, d_pre, d_ha, d_k)), _scratch(gates), db,
                d_gamma_h, d_beta_h, batch, i, act.dtype.type(1)]
        cell_grad = native.kernel(self.kernel_name, dtype, self.kernel_flags)
        window.backward(cell_grad, args, np.ascontiguousarray(W.T), d_ha, (h_bi,), (h0,), (h_seq,), reset,
                        (dh,), (dh0,))
        dW = window.weight_grad(h_bi, h_seq, h0, reset, d_ha)
        grads = [d_pre, dW, db.astype(dtype), dh0, dh, d_gamma_h.astype(dtype)] + ([d_k] if self.clock else [])
        for storage, value in zip(output_storage, grads):
            storage[0] = value
