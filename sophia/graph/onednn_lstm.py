"""An LSTM layer's whole training window as one PyTensor Op on oneDNN's primitive.

In a training graph (``f_train_step``), an LSTM layer that :func:`applies` runs its
input product, recurrence and cell in :class:`OneDNNLSTM`, and its backward in
:class:`OneDNNLSTMGrad`, both calling oneDNN (``sophia/graph/onednn.py``). The
evaluation and inference graphs keep Sophia's fused Ops (``sophia/graph/fused.py``),
whose one-frame calls are cheaper; both compute the same function (the tests
compare them, gradients included).

The semantics are those of the scan path (``layers.py``) and the fused Ops:

- a frame whose time signal is ≤ 0 starts a new sequence: its entering state is the
  initial state (``h0``, ``c0``), and the gradient of that state goes to them. oneDNN
  has no such reset, so the window runs as *segments*: a new one starts at every
  frame where some stream resets, and after the carry frame, whose states the layer
  stores for the next window. Each segment is one oneDNN call (primitives cached by
  length);
- gates: Sophia's weights are ``[input, forget, output, candidate]``, oneDNN's
  ``[input, forget, candidate, output]``; the Ops swap the last two blocks.

:func:`applies` says when: the layer would be fused (``fused.applies``), is an LSTM
without a norm on its input product, is float32, and oneDNN loads. Set ``ENABLED =
False`` (or the environment variable ``SOPHIA_ONEDNN=0``) to train on the fused Ops.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

import sophia
from sophia.graph import fused, onednn

ENABLED = True
_ORDER = [0, 1, 3, 2]     # Sophia's gate blocks ↔ oneDNN's (its own inverse)


def applies(layer, unroll: bool, training: bool) -> bool:
    """Whether ``layer``'s window is built on oneDNN (see the module's docstring)."""
    return (ENABLED and training and fused.applies(layer, unroll) and type(layer).__name__ == "LSTMLayer"
            and layer.norm_x is None and str(layer.dtype) == "float32" and onednn.available())


def recurrence(layer, s_below_tbj, s_time_tb, s_prev_states, carry_frame: int):
    """``(s_h_tbi, [s_h_bi, s_c_bi])``: every frame's h and the states at ``carry_frame``."""
    if not sophia.OPENBLAS_THREADS_QUIET:
        warnings.warn("numpy was imported before sophia, so OpenBLAS's idle threads spin for ~0.1 s "
                      "after each product and slow oneDNN's LSTM down (~1.5x on 2 cores): import sophia "
                      "first or set OPENBLAS_THREAD_TIMEOUT=20 in the environment (sophia/_blas.py)",
                      RuntimeWarning, stacklevel=3)
    outputs = OneDNNLSTM(carry_frame)(s_below_tbj, s_time_tb, layer.s_W_x, layer.s_W_h, layer.v_b,
                                      *layer.initial, *s_prev_states)
    return outputs[0], list(outputs[1:3])


def describe(f) -> str:
    """One line for logs: whether the compiled function ``f`` runs oneDNN, and if not, why."""
    nodes = getattr(getattr(f, "maker", None), "fgraph", None)
    n = sum(isinstance(node.op, OneDNNLSTM) for node in nodes.apply_nodes) if nodes is not None else 0
    if n:
        return f"oneDNN LSTM in {n} layer(s)"
    if not onednn.available():
        return f"fused Ops (oneDNN unavailable: {onednn.UNAVAILABLE_REASON})"
    return "no oneDNN (no layer qualifies or SOPHIA_ONEDNN=0; sophia/graph/onednn_lstm.py)"


def segments(reset_tb, carry: int):
    """The [start, end) frame ranges a window runs in: split before every frame where a
    stream resets (but the first) and after the carry frame."""
    steps = len(reset_tb)
    cuts = {0, steps, carry % steps + 1} | {t for t in range(1, steps) if reset_tb[t].any()}
    cuts = sorted(cuts)
    return list(zip(cuts[:-1], cuts[1:]))


def _to_onednn(a, i):
    """Sophia's [..][4i] gate blocks as oneDNN's contiguous [..][4][i]."""
    return np.ascontiguousarray(a.reshape(a.shape[:-1] + (4, i))[..., _ORDER, :], dtype=np.float32)


def _from_onednn(a):
    return np.ascontiguousarray(a[..., _ORDER, :]).reshape(a.shape[:-2] + (-1,))


def _unpack(inputs):
    x, W_x, W_h, b, h0, c0, h_bi, c_bi = (np.ascontiguousarray(v, dtype=np.float32)
                                          for v in inputs[:1] + inputs[2:9])
    i = W_h.shape[0]
    return x, np.asarray(inputs[1]) <= 0, _to_onednn(W_x, i), _to_onednn(W_h, i), _to_onednn(b, i), \
        h0, c0, h_bi, c_bi


class OneDNNLSTM(Op):
    """``(x_tbj, time_tb, W_x_jg, W_h_ig, b_g, h0_i, c0_i, h_bi, c_bi)`` → ``(h_tbi,
    h_carry_bi, c_carry_bi, edges_s4bi, ws)``: every frame's h, the states at the carry
    frame, and what the gradient needs — each segment's entering and end states
    (h, c, h, c) and the segments' oneDNN workspaces, end to end (uint8)."""

    __props__ = ("carry",)

    def __init__(self, carry: int):
        self.carry = int(carry)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        if [x.ndim for x in inputs] != [3, 2, 2, 2, 1, 1, 1, 2, 2]:
            raise TypeError("OneDNNLSTM expects x_tbj, time_tb, W_x, W_h, b, h0, c0, h_bi, c_bi")
        inputs = inputs[:2] + [tt.cast(x, "float32") for x in inputs[2:]]
        outputs = [tt.tensor3(dtype="float32"), tt.matrix(dtype="float32"), tt.matrix(dtype="float32"),
                   tt.tensor4(dtype="float32"), tt.vector(dtype="uint8")]
        return Apply(self, inputs, outputs)

    def connection_pattern(self, node):
        return [[True] * 5, [False] * 5] + [[True] * 5] * 7

    def perform(self, node, inputs, output_storage):
        x, reset, W_x, W_h, b, h0, c0, h_in, c_in = _unpack(inputs)
        steps, batch, j = x.shape
        i = W_h.shape[0]
        parts = segments(reset, self.carry)
        prims = [onednn.lstm(end - start, batch, j, i) for start, end in parts]
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
        for storage, value in zip(output_storage, (h_tbi, *carried, edges, ws)):
            storage[0] = value

    def pullback(self, inputs, outputs, output_grads):
        if not all(isinstance(g.type, DisconnectedType) for g in output_grads[3:]):
            raise NotImplementedError("OneDNNLSTM: its saved edges and workspace have no gradient")
        given = tuple(not isinstance(g.type, DisconnectedType) for g in output_grads[:3])
        d_given = [g for g, ok in zip(output_grads[:3], given) if ok]
        grads = OneDNNLSTMGrad(self.carry, given)(*inputs, outputs[0], outputs[3], outputs[4], *d_given)
        return [grads[0], disconnected_type()] + list(grads[1:])


class OneDNNLSTMGrad(Op):
    """Backpropagation through :class:`OneDNNLSTM`'s window. Inputs: its inputs, its
    ``h_tbi``, ``edges`` and ``ws``, then the gradients given of ``h_tbi``, ``h_carry``,
    ``c_carry`` (``given`` says which); outputs the gradients of its inputs but time."""

    __props__ = ("carry", "given")

    def __init__(self, carry: int, given):
        self.carry, self.given = int(carry), tuple(bool(g) for g in given)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        outputs = [x.type() for x in inputs[:1] + inputs[2:9]]
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, output_storage):
        x, reset, W_x, W_h, b, h0, c0, h_bi, c_bi = _unpack(inputs)
        h_tbi, edges, ws = (np.ascontiguousarray(v) for v in inputs[9:12])
        given = iter(np.ascontiguousarray(g, dtype=np.float32) for g in inputs[12:])
        d_h_tbi, d_h_carry, d_c_carry = (next(given) if ok else None for ok in self.given)
        steps, batch, j = x.shape
        i = W_h.shape[0]
        if d_h_tbi is None:
            d_h_tbi = np.zeros((steps, batch, i), np.float32)
        parts = segments(reset, self.carry)
        prims = [onednn.lstm(end - start, batch, j, i) for start, end in parts]
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
            fused._route_reset(d_h_in, d_h0, reset[start])
            fused._route_reset(d_c_in, d_c0, reset[start])
            d_h, d_c = d_h_in, d_c_in
        values = (d_x, _from_onednn(d_W_x), _from_onednn(d_W_h), _from_onednn(d_b), d_h0, d_c0, d_h, d_c)
        for storage, value in zip(output_storage, values):
            storage[0] = value
