"""An LSTM layer's whole training window as one PyTensor Op on oneDNN's primitive.

In a training graph (``f_train_step``), an LSTM layer this engine runs has its
input product, recurrence and cell in :class:`OneDNNLSTM`, and its backward in
:class:`OneDNNLSTMGrad`, both calling oneDNN (``sophia/graph/engines/onednn.py``) for the
windows where that is faster (:func:`runs_on_onednn`, decided per call) and the
fused Ops' code (``fused.lstm_window``) for the others. The evaluation and inference
graphs keep Sophia's fused Ops (``sophia/graph/engines/fused.py``), whose one-frame calls
are cheaper. All compute the same function (the tests compare them, gradients
included).

The semantics are those of the scan engine and the fused Ops:

- a frame whose time signal is ≤ 0 starts a new sequence: its entering state is the
  initial state (``h0``, ``c0``), and the gradient of that state goes to them. oneDNN
  has no such reset, so the window runs as *segments*: a new one starts at every
  frame where some stream resets, and after the carry frame, whose states the layer
  stores for the next window. Each segment is one oneDNN call (primitives cached by
  length);
- gates: Sophia's weights are ``[input, forget, output, candidate]``, oneDNN's
  ``[input, forget, candidate, output]``; the Ops swap the last two blocks.

:func:`supports` says which layers it runs: those the fused Ops run, in training
graphs, LSTM without a norm on its input product, float32, with oneDNN loaded.
``SOPHIA_ONEDNN=0`` in the environment keeps oneDNN unloaded, so training runs the
fused Ops.

Memory: oneDNN's workspace, kept from the forward to the backward, holds about
3.3 times the activations the fused Ops keep (``LSTM.ws_bytes`` gives its size;
``docs/MODES.md`` has the figures). Where that does not fit, ``SOPHIA_ONEDNN=0``
trades the speed back.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

import sophia
from sophia.graph.engines import fused, fused_options, onednn
from sophia.graph.engines.window import route_reset

NAME = "onednn"
_ORDER = [0, 1, 3, 2]     # Sophia's gate blocks ↔ oneDNN's (its own inverse)


def supports(layer, *, training: bool, unroll: bool) -> str:
    """'' where oneDNN runs ``layer``'s window, else why not: a training graph of an
    LSTM layer the fused Ops run, without the unit options oneDNN's cell lacks
    (peepholes, layer norm, the clock gate, batch norm) or a norm on its input product, in
    float32, with oneDNN loaded."""
    reason = fused.supports(layer, training=training, unroll=unroll)
    if reason:
        return reason
    options = [option for option in (*fused_options.OPTIONS, "batch_norm") if getattr(layer.options, option)]
    if options:
        return ", ".join(options)
    if not training:
        return "inference"
    if layer.unit != "lstm":
        return f"unit {layer.unit}"
    if layer.norm_x is not None:
        return "input norm"
    if str(layer.dtype) != "float32":
        return str(layer.dtype)
    if not onednn.available():
        return f"oneDNN unavailable: {onednn.UNAVAILABLE_REASON}"
    return ""


def recurrence(layer, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame: int, training: bool,
               unroll: bool = False):
    """``(s_h_tbi, [s_h_bi, s_c_bi], {})``: every frame's h and the states at ``carry_frame``."""
    if not sophia.OPENBLAS_THREADS_QUIET:
        warnings.warn("numpy was imported before sophia, so OpenBLAS's idle threads spin for ~0.1 s "
                      "after each product and slow oneDNN's LSTM down (~1.5x on 2 cores): import sophia "
                      "first or set OPENBLAS_THREAD_TIMEOUT=20 in the environment (sophia/_blas.py)",
                      RuntimeWarning, stacklevel=3)
    outputs = OneDNNLSTM(carry_frame)(s_below_tbj, s_time_tb, layer.s_W_x_jg, layer.s_W_h_ig, layer.v_b_g,
                                      *layer.initial, *s_prev_states)
    return outputs[0], list(outputs[1:3]), {}


def segments(reset_tb, carry: int):
    """The [start, end) frame ranges a window runs in: split before every frame where a
    stream resets (but the first) and after the carry frame."""
    steps = len(reset_tb)
    cuts = {0, steps, carry % steps + 1} | {t for t in range(1, steps) if reset_tb[t].any()}
    cuts = sorted(cuts)
    return list(zip(cuts[:-1], cuts[1:]))


def runs_on_onednn(batch: int, width: int, steps: int, n_segments: int) -> bool:
    """Whether a window runs on oneDNN rather than the fused Ops' code, decided per
    call from its size and how many segments its resets cut it into: oneDNN when
    batch × width ≥ ``MIN_BATCH_X_WIDTH`` and there are at least
    ``MIN_FRAMES_PER_SEGMENT`` frames per segment. Each oneDNN call has a fixed cost
    and short segments run its products less efficiently; small layers gain nothing.
    ``bench/lstm_engines.py`` measures one layer window (forward and backward) on
    each engine across layer sizes and segment counts; see ``bench/README.md``."""
    return batch * width >= MIN_BATCH_X_WIDTH and n_segments * MIN_FRAMES_PER_SEGMENT <= steps


MIN_BATCH_X_WIDTH = 2048
MIN_FRAMES_PER_SEGMENT = 8


def _to_onednn(a, i):
    """Sophia's [..][4i] gate blocks as oneDNN's contiguous [..][4][i]."""
    return np.ascontiguousarray(a.reshape(a.shape[:-1] + (4, i))[..., _ORDER, :], dtype=np.float32)


def _onednn_plan(W_x, W_h, b, parts, batch):
    """The weights and bias in oneDNN's layout, and each segment's primitives."""
    j, i = W_x.shape[0], W_h.shape[0]
    return [_to_onednn(w, i) for w in (W_x, W_h, b)], [onednn.lstm(end - start, batch, j, i) for start, end in parts]


def _from_onednn(a):
    return np.ascontiguousarray(a[..., _ORDER, :]).reshape(a.shape[:-2] + (-1,))


def _arrays(inputs):
    """``x, reset_tb, W_x, W_h, b, h0, c0, h_bi, c_bi`` from the Op's inputs, float32 and
    C-contiguous, weights in Sophia's layout."""
    x, W_x, W_h, b, h0, c0, h_bi, c_bi = (np.ascontiguousarray(v, dtype=np.float32)
                                          for v in inputs[:1] + inputs[2:9])
    return x, np.asarray(inputs[1]) <= 0, W_x, W_h, b, h0, c0, h_bi, c_bi


_NONE = np.empty(0, np.uint8)


class OneDNNLSTM(Op):
    """``(x_tbj, time_tb, W_x_jg, W_h_ig, b_g, h0_i, c0_i, h_bi, c_bi)`` → ``(h_tbi,
    h_carry_bi, c_carry_bi, edges_s4bi, ws, c_tbi, act_tbg)``: every frame's h, the
    states at the carry frame, then what the gradient needs. A window that
    :func:`runs_on_onednn` saves each segment's entering and end states (h, c, h, c)
    and the segments' oneDNN workspaces end to end (uint8), and leaves ``c_tbi`` and
    ``act_tbg`` empty; any other runs the fused Ops' code (``fused.lstm_window``) and
    saves those two instead, leaving ``edges`` and ``ws`` empty."""

    __props__ = ("carry",)

    def __init__(self, carry: int):
        self.carry = int(carry)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        if [x.ndim for x in inputs] != [3, 2, 2, 2, 1, 1, 1, 2, 2]:
            raise TypeError("OneDNNLSTM expects x_tbj, time_tb, W_x, W_h, b, h0, c0, h_bi, c_bi")
        inputs = inputs[:2] + [tt.cast(x, "float32") for x in inputs[2:]]
        outputs = [tt.tensor(dtype=d, shape=(None,) * n)
                   for d, n in zip(["float32"] * 4 + ["uint8"] + ["float32"] * 2, (3, 2, 2, 4, 1, 3, 3))]
        return Apply(self, inputs, outputs)

    def connection_pattern(self, node):
        return [[True] * 7, [False] * 7] + [[True] * 7] * 7

    def perform(self, node, inputs, output_storage):
        x, reset, W_x, W_h, b, h0, c0, h_bi, c_bi = _arrays(inputs)
        steps, batch, j = x.shape
        i, carry = W_h.shape[0], self.carry % steps
        parts = segments(reset, self.carry)
        if runs_on_onednn(batch, i, steps, len(parts)):
            h_tbi, carried, edges, ws = self._onednn(x, reset, W_x, W_h, b, h0, c0, h_bi, c_bi, parts)
            saved = np.empty((0, 0, 0), np.float32), np.empty((0, 0, 0), np.float32)
        else:
            xw = np.dot(x.reshape(-1, j), W_x).reshape(steps, batch, -1)
            h_tbi, c_tbi, act = fused.lstm_window(xw, reset, W_h, b, h0, c0, h_bi, c_bi)
            carried, edges, ws = (h_tbi[carry].copy(), c_tbi[carry].copy()), np.empty((0, 4, 0, 0), np.float32), _NONE
            saved = c_tbi, act
        for storage, value in zip(output_storage, (h_tbi, *carried, edges, ws, *saved)):
            storage[0] = value

    def _onednn(self, x, reset, W_x, W_h, b, h0, c0, h_in, c_in, parts):
        steps, batch, _ = x.shape
        i = W_h.shape[0]
        (W_x, W_h, b), prims = _onednn_plan(W_x, W_h, b, parts, batch)
        h_tbi = np.empty((steps, batch, i), np.float32)
        edges = np.empty((len(parts), 4, batch, i), np.float32)
        ws = np.empty(sum(p.ws_bytes for p in prims), np.uint8)
        offset, carried = 0, None
        for (start, end), p, e in zip(parts, prims, edges):
            e[0], e[1] = h_in, c_in
            e[0][reset[start]], e[1][reset[start]] = h0, c0
            p.forward(x[start:end], W_x, W_h, b, e[0], e[1], h_tbi[start:end], e[2], e[3],
                      ws[offset:offset + p.ws_bytes])
            offset += p.ws_bytes
            h_in, c_in = e[2], e[3]
            if end - 1 == self.carry % steps:
                carried = e[2].copy(), e[3].copy()
        return h_tbi, carried, edges, ws

    def pullback(self, inputs, outputs, output_grads):
        if not all(isinstance(g.type, DisconnectedType) for g in output_grads[3:]):
            raise NotImplementedError("OneDNNLSTM: its saved activations have no gradient")
        given = tuple(not isinstance(g.type, DisconnectedType) for g in output_grads[:3])
        d_given = [g for g, ok in zip(output_grads[:3], given) if ok]
        grads = OneDNNLSTMGrad(self.carry, given)(*inputs, outputs[0], *outputs[3:], *d_given)
        return [grads[0], disconnected_type()] + list(grads[1:])


class OneDNNLSTMGrad(Op):
    """Backpropagation through :class:`OneDNNLSTM`'s window, on oneDNN or the fused
    Ops' code as the forward ran. Inputs: its inputs, its ``h_tbi``, ``edges``, ``ws``,
    ``c_tbi`` and ``act_tbg``, then the gradients given of ``h_tbi``, ``h_carry``,
    ``c_carry`` (``given`` says which); outputs the gradients of its inputs but time."""

    __props__ = ("carry", "given")

    def __init__(self, carry: int, given):
        self.carry, self.given = int(carry), tuple(bool(g) for g in given)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        outputs = [x.type() for x in inputs[:1] + inputs[2:9]]
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, output_storage):
        x, reset, W_x, W_h, b, h0, c0, h_bi, c_bi = _arrays(inputs)
        h_tbi, edges, ws, c_tbi, act = (np.ascontiguousarray(v) for v in inputs[9:14])
        given = iter(np.ascontiguousarray(g, dtype=np.float32) for g in inputs[14:])
        d_h_tbi, d_h_carry, d_c_carry = (next(given) if ok else None for ok in self.given)
        steps, batch, j = x.shape
        i = W_h.shape[0]
        if d_h_tbi is None:
            d_h_tbi = np.zeros((steps, batch, i), np.float32)
        if ws.size:
            grads = self._onednn(x, reset, W_x, W_h, b, h_bi, c_bi, h_tbi, edges, ws,
                                 d_h_tbi, d_h_carry, d_c_carry)
        else:
            grads = self._fused(x, reset, W_x, W_h, h0, c0, h_bi, c_bi, h_tbi, c_tbi, act,
                                d_h_tbi, d_h_carry, d_c_carry)
        for storage, value in zip(output_storage, grads):
            storage[0] = value

    def _fused(self, x, reset, W_x, W_h, h0, c0, h_bi, c_bi, h_tbi, c_tbi, act, d_h_tbi, d_h_carry, d_c_carry):
        steps, batch, j = x.shape
        carry = self.carry % steps
        d_c_tbi = None
        if d_h_carry is not None:
            d_h_tbi = d_h_tbi.copy()
            d_h_tbi[carry] += d_h_carry
        if d_c_carry is not None:
            d_c_tbi = np.zeros_like(d_h_tbi)
            d_c_tbi[carry] = d_c_carry
        d_xw, d_W_h, d_b, d_h0, d_c0, d_h, d_c = fused.lstm_window_grad(
            reset, W_h, h0, c0, h_bi, c_bi, h_tbi, c_tbi, act, d_h_tbi, d_c_tbi)
        d_xw_ng = d_xw.reshape(steps * batch, -1)
        d_x = np.dot(d_xw_ng, W_x.T).reshape(steps, batch, j)
        return d_x, np.dot(x.reshape(steps * batch, j).T, d_xw_ng), d_W_h, d_b, d_h0, d_c0, d_h, d_c

    def _onednn(self, x, reset, W_x, W_h, b, h_bi, c_bi, h_tbi, edges, ws, d_h_tbi, d_h_carry, d_c_carry):
        steps, batch, j = x.shape
        i = W_h.shape[0]
        parts = segments(reset, self.carry)
        (W_x, W_h, b), prims = _onednn_plan(W_x, W_h, b, parts, batch)
        offsets = np.cumsum([0] + [p.ws_bytes for p in prims])
        d_x = np.empty_like(x)
        d_W_x, d_W_h, d_b = np.zeros_like(W_x), np.zeros_like(W_h), np.zeros_like(b)
        d_h0, d_c0 = np.zeros(i, np.float32), np.zeros(i, np.float32)
        d_h, d_c = np.zeros((batch, i), np.float32), np.zeros((batch, i), np.float32)
        for k in reversed(range(len(parts))):
            (start, end), p, e = parts[k], prims[k], edges[k]
            if end - 1 == self.carry % steps:
                d_h = d_h + d_h_carry if d_h_carry is not None else d_h
                d_c = d_c + d_c_carry if d_c_carry is not None else d_c
            d_h_in, d_c_in = np.empty_like(d_h), np.empty_like(d_c)
            forward = (x[start:end], W_x, W_h, b, e[0], e[1], h_tbi[start:end], e[2], e[3],
                       ws[offsets[k]:offsets[k + 1]])
            p.backward(forward, d_h_tbi[start:end], np.ascontiguousarray(d_h), np.ascontiguousarray(d_c),
                       d_x[start:end], d_h_in, d_c_in, d_W_x, d_W_h, d_b)
            route_reset(d_h_in, d_h0, reset[start])
            route_reset(d_c_in, d_c0, reset[start])
            d_h, d_c = d_h_in, d_c_in
        return d_x, _from_onednn(d_W_x), _from_onednn(d_W_h), _from_onednn(d_b), d_h0, d_c0, d_h, d_c
