"""Fused recurrences: a whole window of LSTM or GRU steps as one PyTensor Op.

``scan`` makes every compile pay for the gradient of a loop and the rewrites of
its inner graph (seconds even for tiny nets), and its per-frame overhead is large
on a CPU. Here the recurrence of a window is a single Op whose ``perform`` loops
over the frames — one BLAS matmul per frame for the recurrent product (``np.dot``),
then one cell kernel per frame for the bias, the gate nonlinearities and the state
updates (``sophia/graph/engines/cells.c``, compiled and loaded by
``sophia/graph/engines/native.py``; numpy code where no C compiler is configured) —
and whose gradient is a second Op that runs backpropagation through time the same
way, sums the bias gradient inside its kernel and the recurrent weight gradient in
one matmul over all frames. A window's streams run in blocks of batch rows side by
side, one per core (:func:`~sophia.graph.engines.window.by_rows`).

What is fused is the recurrence and the bias: the layer's input product ``x W_x``
(``RecurrentLayer._project_weights``: one large matmul over all frames), the
residual gate and everything above stay ordinary PyTensor graph. The semantics are
the scan path's (``layers.py``):

- a frame whose time signal is ≤ 0 starts a new sequence: the state entering it is
  replaced by the initial state (``h0``, ``c0``: learned parameters or zeros), and
  the gradient of that entering state goes to the initial state;
- the Op returns every frame's states; the layer stores those at ``carry_frame``.

:func:`supports` says which layers it runs: LSTM or GRU layers, not unrolled.
Weight norm, residual gates, ID embeddings and non-learned initial states run here;
peepholes, layer norm and the clock gate run on the Ops of
:mod:`~sophia.graph.engines.fused_options`, batch norm (with or without peepholes and
clock gates) on those of :mod:`~sophia.graph.engines.fused_bn`, which
:func:`recurrence` hands them to. Which engine a
layer gets is :func:`sophia.graph.engines.choose`'s decision.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> xw, time, W, b = tt.tensor3(), tt.matrix(), tt.matrix(), tt.vector()
>>> h0, h = tt.vector(), tt.matrix()
>>> s_h_tbi = GRURecurrence()(xw, time, W, b, h0, h)[0]
>>> f = th.function([xw, time, W, b, h0, h], s_h_tbi)
>>> f(np.zeros((5, 2, 6)), np.ones((5, 2)), np.zeros((2, 6)), np.zeros(6), np.zeros(2),
...   np.zeros((2, 2))).shape
(5, 2, 2)
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from scipy.special import expit

from sophia.graph.engines import fused_bn, fused_options, native, window
from sophia.graph.engines.window import (Frames, block, contiguous, entering, entering_address, route_reset,
                                         weight_grad)

NAME = "fused"


def supports(layer, *, training: bool, unroll: bool) -> str:
    """'' where the fused Ops run ``layer``, else what keeps it on scan: an LSTM or GRU
    layer, not unrolled; peepholes, layer norm, batch norm and the clock gate need the
    native kernels (a C compiler)."""
    if layer.unit not in _OPS:
        return f"unit {layer.unit}"
    if unroll:
        return "unroll_scan"
    if (fused_options.runs(layer) or layer.options.batch_norm) and not native.available():
        return "no C compiler"
    return ""


def recurrence(layer, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame: int, training: bool,
               unroll: bool = False):
    """``(s_h_tbi, s_next_states, updates)`` as the scan engine returns them: the input
    product ``x W_x`` (normalised where the layer says so) as one graph matmul, then
    the recurrence and bias of the window as one Op (with the unit options:
    :mod:`~sophia.graph.engines.fused_options`)."""
    if layer.options.batch_norm:
        return fused_bn.recurrence(layer, s_below_tbj, s_time_tb, s_prev_states,
                                   carry_frame=carry_frame, training=training)
    if fused_options.runs(layer):
        return fused_options.recurrence(layer, s_below_tbj, s_time_tb, s_prev_states,
                                        carry_frame=carry_frame, training=training)
    s_xw_tbg = layer._project_weights(s_below_tbj, layer.s_W_x_jg, layer.norm_x, None, training, [])
    n = len(layer.state_names)
    states_tbi = _OPS[layer.unit]()(s_xw_tbg, s_time_tb, layer.s_W_h_ig, layer.v_b_g, *layer.initial,
                                    *s_prev_states)[:n]
    return states_tbi[0], [s[carry_frame] for s in states_tbi], {}


def _sigmoid_slope(s, out):
    """σ'(x) = s (1 − s) from s = σ(x), into ``out``."""
    np.subtract(1.0, s, out=out)
    out *= s
    return out


class _Recurrence(Op):
    """Shared make_node/infer_shape/pullback of the forward Ops.

    Inputs: ``xw_tbg, time_tb, W_h_ig, b_g, *initial_i, *stored_bi``; outputs: each
    state [T][B][i], then the saved activations the gradient Op needs.
    """

    __props__ = ()
    n_states = 1
    n_saved = 1

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        dtype = inputs[0].dtype
        ndims = [3, 2, 2, 1] + [1] * self.n_states + [2] * self.n_states
        if [x.ndim for x in inputs] != ndims:
            raise TypeError(f"{type(self).__name__} expects inputs of ndim {ndims}")
        inputs = inputs[:2] + [tt.cast(x, dtype) for x in inputs[2:]]
        outputs = [tt.tensor3(dtype=dtype) for _ in range(self.n_states + self.n_saved)]
        return Apply(self, inputs, outputs)

    def infer_shape(self, fgraph, node, shapes):
        (t, b, g), i = shapes[0], shapes[2][0]
        return [(t, b, i)] * self.n_states + self._saved_shapes(t, b, g, i)

    def connection_pattern(self, node):
        outputs = self.n_states + self.n_saved
        return [[True] * outputs, [False] * outputs] + [[True] * outputs] * (len(node.inputs) - 2)

    def pullback(self, inputs, outputs, output_grads):
        if not all(isinstance(g.type, DisconnectedType) for g in output_grads[self.n_states:]):
            raise NotImplementedError(f"{type(self).__name__}: its saved activations have no gradient")
        given = tuple(not isinstance(g.type, DisconnectedType) for g in output_grads[:self.n_states])
        d_states = [g for g, ok in zip(output_grads, given) if ok]
        grads = self.grad_op(given)(inputs[1], inputs[2], *inputs[3:], *outputs, *d_states)
        return [grads[0], disconnected_type()] + list(grads[1:])


class _RecurrenceGrad(Op):
    """Shared parts of the gradient Ops: inputs ``time_tb, W_h_ig, b_g, *initial_i,
    *stored_bi, *forward outputs, *output gradients given``; outputs ``d_xw_tbg,
    d_W_h_ig, d_b_g, *d_initial_i, *d_stored_bi``."""

    __props__ = ("given",)
    n_states = 1
    n_saved = 1

    def __init__(self, given):
        self.given = tuple(bool(g) for g in given)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        n = self.n_states
        saved = inputs[3 + 3 * n]
        outputs = [saved.type()] + [x.type() for x in inputs[1:3 + 2 * n]]
        return Apply(self, inputs, outputs)

    def infer_shape(self, fgraph, node, shapes):
        n = self.n_states
        return [shapes[3 + 3 * n]] + list(shapes[1:3 + 2 * n])

    def _unpack(self, inputs, dtype):
        n = self.n_states
        time_tb, rest = inputs[0], contiguous(inputs[1:], dtype)
        W, inits, stored = rest[0], rest[2:2 + n], rest[2 + n:2 + 2 * n]
        forward = rest[2 + 2 * n:2 + 3 * n + self.n_saved]
        d_given = iter(rest[2 + 3 * n + self.n_saved:])
        d_states = [next(d_given) if ok else None for ok in self.given]
        return np.asarray(time_tb) <= 0, W, inits, stored, forward, d_states


class LSTMRecurrence(native.CallsKernel, _Recurrence):
    """LSTM over a window: ``(xw_tbg, time_tb, W_h_ig, b_g, h0_i, c0_i, h_bi, c_bi)``
    → ``(h_tbi, c_tbi, act_tbg)``, act = the activated gates σ(i), σ(f), σ(o), tanh(g)."""

    kernel_name = "lstm_cell"

    n_states, n_saved = 2, 1

    def grad_op(self, given):
        return LSTMRecurrenceGrad(given)

    def _saved_shapes(self, t, b, g, i):
        return [(t, b, g)]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        xw, W, bias, h0, c0, h_prev, c_prev = contiguous(inputs[:1] + inputs[2:], dtype)
        outputs = lstm_window(xw, np.asarray(inputs[1]) <= 0, W, bias, h0, c0, h_prev, c_prev)
        for storage, value in zip(output_storage, outputs):
            storage[0] = value


def lstm_window(xw, reset, W, bias, h0, c0, h_prev, c_prev):
    """:class:`LSTMRecurrence` on arrays of one dtype, C-contiguous: ``(h_tbi, c_tbi,
    act_tbg)`` from ``xw_tbg``, the resets ``reset_tb`` (time ≤ 0), ``W_h``, the bias,
    the initial and the stored states."""
    dtype = xw.dtype
    steps, batch, gates = xw.shape
    i = gates // 4
    h_seq, c_seq, act = np.empty((steps, batch, i), dtype), np.empty((steps, batch, i), dtype), np.empty_like(xw)
    cell = native.kernel("lstm_cell", dtype) if native.available() else None

    def rows(lo, hi):
        _lstm_rows(cell, block(xw, lo, hi), block(reset, lo, hi), W, bias, h0, c0, h_prev[lo:hi], c_prev[lo:hi],
                   *(block(x, lo, hi) for x in (h_seq, c_seq, act)))
    window.by_rows(rows, batch, steps * gates)
    return h_seq, c_seq, act


def _lstm_rows(cell, xw, reset, W, bias, h0, c0, h_prev, c_prev, h_seq, c_seq, act):
    """:func:`lstm_window`'s frame loop on rows of its streams (views [T][b][·]), into
    ``h_seq``, ``c_seq``, ``act``; ``cell`` the native kernel, or None for numpy code."""
    steps, batch, gates = xw.shape
    i = gates // 4
    one, tmp = act.dtype.type(1), np.empty((batch, i), act.dtype)
    if cell is not None:
        addr_act, addr_xw, addr_c, addr_h = map(Frames, (act, xw, c_seq, h_seq))
        addr_bias, addr_c_prev = bias.ctypes.data, c_prev.ctypes.data
    for t in range(steps):
        if reset[t].any():
            h_prev, c_prev = h_prev.copy(), c_prev.copy()
            h_prev[reset[t]], c_prev[reset[t]] = h0, c0
            addr_c_prev = c_prev.ctypes.data if cell is not None else None
        a = act[t]
        np.dot(h_prev, W, out=a)
        if cell is not None:
            cell(addr_act[t], addr_xw[t], addr_bias, addr_c_prev, addr_c[t], addr_h[t], batch, i, one)
            h_prev, c_prev, addr_c_prev = h_seq[t], c_seq[t], addr_c[t]
            continue
        a += xw[t]
        a += bias
        expit(a[:, :3 * i], out=a[:, :3 * i])
        np.tanh(a[:, 3 * i:], out=a[:, 3 * i:])
        c = c_seq[t]
        np.multiply(a[:, i:2 * i], c_prev, out=c)                  # f * c_prev
        c += np.multiply(a[:, :i], a[:, 3 * i:], out=tmp)          # + i * g
        h = h_seq[t]
        np.tanh(c, out=h)
        h *= a[:, 2 * i:3 * i]                                     # o * tanh(c)
        h_prev, c_prev = h, c


class LSTMRecurrenceGrad(native.CallsKernel, _RecurrenceGrad):
    """Backpropagation through time of :class:`LSTMRecurrence`."""

    kernel_name = "lstm_cell_grad"

    n_states, n_saved = 2, 1

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, W, (h0, c0), (h_bi, c_bi), (h_seq, c_seq, act), (dh_out, dc_out) = self._unpack(inputs, dtype)
        grads = lstm_window_grad(reset, W, h0, c0, h_bi, c_bi, h_seq, c_seq, act, dh_out, dc_out)
        for storage, value in zip(output_storage, grads):
            storage[0] = value


def lstm_window_grad(reset, W, h0, c0, h_bi, c_bi, h_seq, c_seq, act, dh_out, dc_out):
    """:class:`LSTMRecurrenceGrad` on arrays: ``(d_xw, d_W_h, d_b, d_h0, d_c0, d_h_bi,
    d_c_bi)`` from :func:`lstm_window`'s inputs and outputs and the gradients of every
    frame's h and c (``dh_out``, ``dc_out``: [T][B][i] or None for none)."""
    dtype = act.dtype
    steps, batch, gates = act.shape
    i = gates // 4
    d_pre = np.empty_like(act)                       # gradient of the pre-activations = of xw
    dh, dc = np.zeros((batch, i), dtype), np.zeros((batch, i), dtype)
    dh0, dc0, db = np.zeros(i, dtype), np.zeros(i, dtype), np.zeros(gates, np.float64)
    W_T = np.ascontiguousarray(W.T)
    cell_grad = native.kernel("lstm_cell_grad", dtype) if native.available() else None

    def rows(lo, hi, *sums):
        _lstm_grad_rows(cell_grad, block(reset, lo, hi), W_T, c0, c_bi[lo:hi],
                        *(block(x, lo, hi) for x in (c_seq, act, dh_out, dc_out, d_pre)), dh[lo:hi], dc[lo:hi], *sums)
    window.by_rows(rows, batch, steps * gates, (dh0, dc0, db))
    dW = weight_grad(h_bi, h_seq, h0, reset, d_pre)
    return d_pre, dW, db.astype(dtype), dh0, dc0, dh, dc


def _lstm_grad_rows(cell_grad, reset, W_T, c0, c_bi, c_seq, act, dh_out, dc_out, d_pre, dh, dc, dh0, dc0, db):
    """:func:`lstm_window_grad`'s frame loop on rows of its streams (views [T][b][·] and
    [b][i]): ``d_pre`` written, ``dh``, ``dc`` left the stored states' gradients, ``dh0``,
    ``dc0`` and ``db`` (float64) summed into."""
    dtype = act.dtype
    steps, batch, gates = act.shape
    i = gates // 4
    tanh_c, tmp = np.empty((batch, i), dtype), np.empty((batch, i), dtype)
    one, zero_bi = act.dtype.type(1), np.zeros((batch, i), dtype)
    if cell_grad is not None:
        addr_act, addr_c, addr_d = map(Frames, (act, c_seq, d_pre))
        addr_dh, addr_dc, addr_db, addr_c_bi = (x.ctypes.data for x in (dh, dc, db, c_bi))
        addr_dh_out, addr_dc_out = Frames(dh_out, zero_bi), Frames(dc_out, zero_bi)
    for t in reversed(range(steps)):
        c_in = entering(c_bi, c_seq, c0, reset, t)
        if cell_grad is not None:
            cell_grad(addr_dh, addr_dc, addr_dh_out[t], addr_dc_out[t], addr_act[t], addr_c[t],
                      entering_address(c_in, addr_c_bi, addr_c, reset, t), addr_d[t], addr_db, batch, i, one)
            np.dot(d_pre[t], W_T, out=dh)
            route_reset(dh, dh0, reset[t])
            route_reset(dc, dc0, reset[t])
            continue
        if dh_out is not None:
            dh += dh_out[t]
        if dc_out is not None:
            dc += dc_out[t]
        a, d = act[t], d_pre[t]
        s_i, s_f, s_o, s_g = a[:, :i], a[:, i:2 * i], a[:, 2 * i:3 * i], a[:, 3 * i:]
        d_i, d_f, d_o, d_g = d[:, :i], d[:, i:2 * i], d[:, 2 * i:3 * i], d[:, 3 * i:]
        np.tanh(c_seq[t], out=tanh_c)
        np.multiply(dh, tanh_c, out=d_o)                            # d o
        d_o *= _sigmoid_slope(s_o, tmp)
        np.multiply(tanh_c, tanh_c, out=tanh_c)                     # d c += dh o (1 - tanh² c)
        np.subtract(1.0, tanh_c, out=tanh_c)
        tanh_c *= s_o
        tanh_c *= dh
        dc += tanh_c
        np.multiply(dc, s_g, out=d_i)
        d_i *= _sigmoid_slope(s_i, tmp)
        np.multiply(dc, c_in, out=d_f)
        d_f *= _sigmoid_slope(s_f, tmp)
        np.multiply(dc, s_i, out=d_g)
        np.multiply(s_g, s_g, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        d_g *= tmp
        dc *= s_f                                                   # into the entering c
        db += d.sum(axis=0)
        np.dot(d, W_T, out=dh)                                      # into the entering h
        route_reset(dh, dh0, reset[t])
        route_reset(dc, dc0, reset[t])


class GRURecurrence(native.CallsKernel, _Recurrence):
    """GRU over a window: ``(xw_tbg, time_tb, W_h_ig, b_g, h0_i, h_bi)`` → ``(h_tbi,
    act_tbg, hn_tbi)``, act = σ(r), σ(z), tanh(n) and hn = the candidate's recurrent product."""

    kernel_name = "gru_cell"

    n_states, n_saved = 1, 2

    def grad_op(self, given):
        return GRURecurrenceGrad(given)

    def _saved_shapes(self, t, b, g, i):
        return [(t, b, g), (t, b, i)]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        xw, W, bias, h0, h_prev = contiguous(inputs[:1] + inputs[2:], dtype)
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xw.shape
        i = gates // 3
        h_seq, hn_seq, act = np.empty((steps, batch, i), dtype), np.empty((steps, batch, i), dtype), np.empty_like(xw)
        cell = native.kernel(self.kernel_name, dtype) if native.available() else None
        window.by_rows(lambda lo, hi: _gru_rows(cell, *(block(x, lo, hi) for x in (xw, reset)), W, bias, h0,
                                                h_prev[lo:hi], *(block(x, lo, hi) for x in (h_seq, act, hn_seq))),
                       batch, steps * gates)
        output_storage[0][0], output_storage[1][0], output_storage[2][0] = h_seq, act, hn_seq


def _gru_rows(cell, xw, reset, W, bias, h0, h_prev, h_seq, act, hn_seq):
    """:class:`GRURecurrence`'s frame loop on rows of its streams (views [T][b][·]), into
    ``h_seq``, ``act``, ``hn_seq``; ``cell`` the native kernel, or None for numpy code."""
    steps, batch, gates = xw.shape
    i = gates // 3
    ha, one = np.empty((batch, gates), act.dtype), act.dtype.type(1)
    if cell is not None:
        addr_xw, addr_act, addr_hn, addr_h = map(Frames, (xw, act, hn_seq, h_seq))
        addr_ha, addr_bias, addr_h_prev = ha.ctypes.data, bias.ctypes.data, h_prev.ctypes.data
    for t in range(steps):
        if reset[t].any():
            h_prev = h_prev.copy()
            h_prev[reset[t]] = h0
            addr_h_prev = h_prev.ctypes.data if cell is not None else None
        np.dot(h_prev, W, out=ha)
        if cell is not None:
            cell(addr_ha, addr_xw[t], addr_bias, addr_h_prev, addr_act[t], addr_hn[t], addr_h[t], batch, i, one)
            h_prev, addr_h_prev = h_seq[t], addr_h[t]
            continue
        a = act[t]
        np.add(xw[t, :, :2 * i], ha[:, :2 * i], out=a[:, :2 * i])
        a[:, :2 * i] += bias[:2 * i]
        expit(a[:, :2 * i], out=a[:, :2 * i])                       # r, z
        hn_seq[t] = ha[:, 2 * i:]
        n = a[:, 2 * i:]
        np.multiply(a[:, :i], hn_seq[t], out=n)
        n += xw[t, :, 2 * i:]
        n += bias[2 * i:]
        np.tanh(n, out=n)
        h = h_seq[t]                                                # n + z (h_prev - n)
        np.subtract(h_prev, n, out=h)
        h *= a[:, i:2 * i]
        h += n
        h_prev = h


class GRURecurrenceGrad(native.CallsKernel, _RecurrenceGrad):
    """Backpropagation through time of :class:`GRURecurrence`."""

    kernel_name = "gru_cell_grad"

    n_states, n_saved = 1, 2

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, W, (h0,), (h_bi,), (h_seq, act, hn_seq), (dh_out,) = self._unpack(inputs, dtype)
        steps, batch, gates = act.shape
        i = gates // 3
        d_pre = np.empty_like(act)                        # gradient of xw
        d_ha = np.empty_like(act)                         # gradient of h_prev W_h
        dh, dh0, db = np.zeros((batch, i), dtype), np.zeros(i, dtype), np.zeros(gates, np.float64)
        W_T = np.ascontiguousarray(W.T)
        cell_grad = native.kernel(self.kernel_name, dtype) if native.available() else None

        def rows(lo, hi, *sums):
            _gru_grad_rows(cell_grad, block(reset, lo, hi), W_T, h0, h_bi[lo:hi],
                           *(block(x, lo, hi) for x in (h_seq, act, hn_seq, dh_out, d_pre, d_ha)), dh[lo:hi], *sums)
        window.by_rows(rows, batch, steps * gates, (dh0, db))
        dW = weight_grad(h_bi, h_seq, h0, reset, d_ha)
        for storage, value in zip(output_storage, (d_pre, dW, db.astype(dtype), dh0, dh)):
            storage[0] = value


def _gru_grad_rows(cell_grad, reset, W_T, h0, h_bi, h_seq, act, hn_seq, dh_out, d_pre, d_ha, dh, dh0, db):
    """:class:`GRURecurrenceGrad`'s frame loop on rows of its streams (views [T][b][·] and
    [b][i]): ``d_pre``, ``d_ha`` written, ``dh`` left the stored state's gradient, ``dh0``
    and ``db`` (float64) summed into."""
    dtype = act.dtype
    steps, batch, gates = act.shape
    i = gates // 3
    tmp, back = np.empty((batch, i), dtype), np.empty((batch, i), dtype)
    one, zero_bi = act.dtype.type(1), np.zeros((batch, i), dtype)
    if cell_grad is not None:
        addr_act, addr_h, addr_hn, addr_d, addr_d_ha = map(Frames, (act, h_seq, hn_seq, d_pre, d_ha))
        addr_dh, addr_db, addr_h_bi = (x.ctypes.data for x in (dh, db, h_bi))
        addr_dh_out = Frames(dh_out, zero_bi)
    for t in reversed(range(steps)):
        h_in = entering(h_bi, h_seq, h0, reset, t)
        if cell_grad is not None:
            cell_grad(addr_dh, addr_dh_out[t], addr_act[t], entering_address(h_in, addr_h_bi, addr_h, reset, t),
                      addr_hn[t], addr_d[t], addr_d_ha[t], addr_db, batch, i, one)
            dh += np.dot(d_ha[t], W_T, out=back)
            route_reset(dh, dh0, reset[t])
            continue
        if dh_out is not None:
            dh += dh_out[t]
        a, d, dr = act[t], d_pre[t], d_ha[t]
        s_r, s_z, s_n = a[:, :i], a[:, i:2 * i], a[:, 2 * i:]
        d_r, d_z, d_n = d[:, :i], d[:, i:2 * i], d[:, 2 * i:]
        np.subtract(1.0, s_z, out=d_n)                              # d n = dh (1 - z) (1 - n²)
        d_n *= dh
        np.multiply(s_n, s_n, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        d_n *= tmp
        np.subtract(h_in, s_n, out=d_z)                             # d z = dh (h_prev - n) σ'
        d_z *= dh
        d_z *= _sigmoid_slope(s_z, tmp)
        np.multiply(d_n, hn_seq[t], out=d_r)                        # d r = d n · hn σ'
        d_r *= _sigmoid_slope(s_r, tmp)
        dr[:, :2 * i] = d[:, :2 * i]
        np.multiply(d_n, s_r, out=dr[:, 2 * i:])
        db += d.sum(axis=0)
        dh *= s_z                                                   # direct path z h_prev
        dh += np.dot(dr, W_T, out=back)
        route_reset(dh, dh0, reset[t])


_OPS = {"lstm": LSTMRecurrence, "gru": GRURecurrence}
