"""Fused recurrences: a whole window of LSTM or GRU steps as one PyTensor Op.

``scan`` makes every compile pay for the gradient of a loop and the rewrites of
its inner graph (seconds even for tiny nets), and its per-frame overhead is large
on a CPU. Here the recurrence of a window is a single Op whose ``perform`` loops
over the frames — one BLAS matmul per frame for the recurrent product (``np.dot``),
then one small Numba kernel per frame for all the gate nonlinearities and state
updates, written into preallocated arrays (numpy code when Numba cannot be
imported) — and whose gradient is a second Op that runs backpropagation through
time the same way and sums the recurrent weight gradient in one matmul over all
frames. The kernels are compiled at their first call per dtype and cached on disk
(``NUMBA_CACHE_DIR``, else ``__pycache__``).

What is fused is only the recurrence: the layer's input projection ``x W_x + b``
(``RecurrentLayer._project``), the residual gate and everything above stay
ordinary PyTensor graph. The semantics are the scan path's (``layers.py``):

- a frame whose time signal is ≤ 0 starts a new sequence: the state entering it is
  replaced by the initial state (``h0``, ``c0``: learned parameters or zeros), and
  the gradient of that entering state goes to the initial state;
- the Op returns every frame's states; the layer stores those at ``carry_frame``.

:func:`applies` says when the fused path is taken: LSTM or GRU layers without
layer/batch norm, peepholes or the clock gate, built with ``scan`` (not unrolled).
Weight norm, residual gates, ID embeddings and non-learned initial states are
supported. Set ``ENABLED = False`` (or use :func:`disabled`) to build scan graphs.

Gate layouts as in ``layers.py``: LSTM ``[input, forget, output, candidate]``,
GRU ``[reset, update, candidate]`` (reset applied after the recurrent product).

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> xa, time, W = tt.tensor3(), tt.matrix(), tt.matrix()
>>> h0, h = tt.vector(), tt.matrix()
>>> s_h_tbi = GRURecurrence()(xa, time, W, h0, h)[0]
>>> f = th.function([xa, time, W, h0, h], s_h_tbi)
>>> f(np.zeros((5, 2, 6)), np.ones((5, 2)), np.zeros((2, 6)), np.zeros(2), np.zeros((2, 2))).shape
(5, 2, 2)
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytensor.tensor as tt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from scipy.special import expit

try:                                  # per-frame cell kernels; without Numba the numpy code below
    import numba
    from numba.extending import overload
except ImportError:                   # pragma: no cover - numba comes with PyTensor
    numba = None

ENABLED = True    # build fused recurrences where :func:`applies`; False = always scan


@contextlib.contextmanager
def disabled():
    """Build scan graphs inside this block (for comparisons and tests)."""
    global ENABLED
    saved, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = saved


def applies(layer, unroll: bool) -> bool:
    """Whether ``layer``'s recurrence is built fused: an LSTM or GRU layer with no
    norm inside the step, no peephole, no clock gate, and a scan (not unrolled) graph."""
    return (ENABLED and not unroll and type(layer).__name__ in _OPS and layer.gate is None
            and not any(key in layer.norms for key in layer.inner_norms)
            and getattr(layer, "v_peep", None) is None)


def recurrence(layer, s_xa_tbg, s_time_tb, s_prev_states) -> list:
    """The layer's states after every frame, each [T][B][i], from the projected
    inputs ``s_xa_tbg`` (x W_x + b), the time signal and the stored states."""
    op = _OPS[type(layer).__name__]()
    n = len(layer.state_names)
    return op(s_xa_tbg, s_time_tb, layer.s_W_h, *layer.initial, *s_prev_states)[:n]


# -- numpy helpers ---------------------------------------------------------------------
def _entering(stored_bi, seq_tbi, init_i, reset_tb):
    """The state entering every frame [T][B][i]: the previous frame's state (the
    stored state for frame 0), replaced by the initial state where the frame resets."""
    prev = np.empty_like(seq_tbi)
    prev[0] = stored_bi
    prev[1:] = seq_tbi[:-1]
    prev[reset_tb] = init_i
    return prev


def _route_reset(d_entering_bi, d_init_i, reset_b):
    """Send the gradient of a reset frame's entering state to the initial state."""
    if reset_b.any():
        d_init_i += d_entering_bi[reset_b].sum(axis=0)
        d_entering_bi[reset_b] = 0


def _arrays(inputs, dtype):
    return [np.ascontiguousarray(x, dtype=dtype) for x in inputs]


class _Recurrence(Op):
    """Shared make_node/infer_shape of the forward Ops.

    Inputs: ``xa_tbg, time_tb, W_h_ig, *initial_i, *stored_bi``; outputs: each state
    [T][B][i], then the saved activations the gradient Op needs.
    """

    __props__ = ()
    n_states = 1
    n_saved = 1

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        dtype = inputs[0].dtype
        ndims = [3, 2, 2] + [1] * self.n_states + [2] * self.n_states
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
    """Shared parts of the gradient Ops: inputs ``time_tb, W_h_ig, *initial_i,
    *stored_bi, *forward outputs, *output gradients given``; outputs ``d_xa_tbg,
    d_W_h_ig, *d_initial_i, *d_stored_bi``."""

    __props__ = ("given",)
    n_states = 1

    def __init__(self, given):
        self.given = tuple(bool(g) for g in given)

    def make_node(self, *inputs):
        inputs = [tt.as_tensor_variable(x) for x in inputs]
        n = self.n_states
        saved = inputs[2 + 2 * n + n]
        outputs = [saved.type(), inputs[1].type()] + [x.type() for x in inputs[2:2 + 2 * n]]
        return Apply(self, inputs, outputs)

    def infer_shape(self, fgraph, node, shapes):
        n = self.n_states
        return [shapes[2 + 3 * n]] + list(shapes[1:2 + 2 * n])

    def _unpack(self, inputs, dtype):
        n = self.n_states
        time_tb, rest = inputs[0], _arrays(inputs[1:], dtype)
        W, inits, stored = rest[0], rest[1:1 + n], rest[1 + n:1 + 2 * n]
        forward = rest[1 + 2 * n:1 + 2 * n + n + self.n_saved]
        d_given = iter(rest[1 + 2 * n + n + self.n_saved:])
        d_states = [next(d_given) if ok else None for ok in self.given]
        return np.asarray(time_tb) <= 0, W, inits, stored, forward, d_states


class LSTMRecurrence(_Recurrence):
    """LSTM over a window: ``(xa_tbg, time_tb, W_h_ig, h0_i, c0_i, h_bi, c_bi)``
    → ``(h_tbi, c_tbi, act_tbg)``, act = the activated gates σ(i), σ(f), σ(o), tanh(g)."""

    n_states, n_saved = 2, 1

    def grad_op(self, given):
        return LSTMRecurrenceGrad(given)

    def _saved_shapes(self, t, b, g, i):
        return [(t, b, g)]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        xa, W, h0, c0, h_prev, c_prev = _arrays(inputs[:1] + inputs[2:], dtype)
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xa.shape
        i = gates // 4
        h_seq, c_seq = np.empty((steps, batch, i), dtype), np.empty((steps, batch, i), dtype)
        act, tmp = np.empty_like(xa), np.empty((batch, i), dtype)
        one = act.dtype.type(1)
        for t in range(steps):
            if reset[t].any():
                h_prev, c_prev = h_prev.copy(), c_prev.copy()
                h_prev[reset[t]], c_prev[reset[t]] = h0, c0
            a = act[t]
            np.dot(h_prev, W, out=a)
            if numba is not None:
                _lstm_cell(a, xa[t], c_prev, c_seq[t], h_seq[t], one)
                h_prev, c_prev = h_seq[t], c_seq[t]
                continue
            a += xa[t]
            expit(a[:, :3 * i], out=a[:, :3 * i])
            np.tanh(a[:, 3 * i:], out=a[:, 3 * i:])
            c = c_seq[t]
            np.multiply(a[:, i:2 * i], c_prev, out=c)                  # f * c_prev
            c += np.multiply(a[:, :i], a[:, 3 * i:], out=tmp)          # + i * g
            h = h_seq[t]
            np.tanh(c, out=h)
            h *= a[:, 2 * i:3 * i]                                     # o * tanh(c)
            h_prev, c_prev = h, c
        output_storage[0][0], output_storage[1][0], output_storage[2][0] = h_seq, c_seq, act


class LSTMRecurrenceGrad(_RecurrenceGrad):
    """Backpropagation through time of :class:`LSTMRecurrence`."""

    n_states, n_saved = 2, 1

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, W, (h0, c0), (h_bi, c_bi), (h_seq, c_seq, act), (dh_out, dc_out) = self._unpack(inputs, dtype)
        steps, batch, gates = act.shape
        i = gates // 4
        h_in, c_in = _entering(h_bi, h_seq, h0, reset), _entering(c_bi, c_seq, c0, reset)
        d_pre = np.empty_like(act)                       # gradient of the pre-activations = of xa
        dh, dc = np.zeros((batch, i), dtype), np.zeros((batch, i), dtype)
        dh0, dc0 = np.zeros(i, dtype), np.zeros(i, dtype)
        tanh_c, tmp = np.empty((batch, i), dtype), np.empty((batch, i), dtype)
        W_T = np.ascontiguousarray(W.T)
        one, zero_bi = act.dtype.type(1), np.zeros((batch, i), dtype)
        for t in reversed(range(steps)):
            if numba is not None:
                _lstm_cell_grad(dh, dc, zero_bi if dh_out is None else dh_out[t],
                                zero_bi if dc_out is None else dc_out[t],
                                act[t], c_seq[t], c_in[t], d_pre[t], one)
                np.dot(d_pre[t], W_T, out=dh)
                _route_reset(dh, dh0, reset[t])
                _route_reset(dc, dc0, reset[t])
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
            np.multiply(dc, c_in[t], out=d_f)
            d_f *= _sigmoid_slope(s_f, tmp)
            np.multiply(dc, s_i, out=d_g)
            np.multiply(s_g, s_g, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            d_g *= tmp
            dc *= s_f                                                   # into the entering c
            np.dot(d, W_T, out=dh)                                      # into the entering h
            _route_reset(dh, dh0, reset[t])
            _route_reset(dc, dc0, reset[t])
        dW = np.dot(h_in.reshape(steps * batch, i).T, d_pre.reshape(steps * batch, gates))
        for storage, value in zip(output_storage, (d_pre, dW, dh0, dc0, dh, dc)):
            storage[0] = value


class GRURecurrence(_Recurrence):
    """GRU over a window: ``(xa_tbg, time_tb, W_h_ig, h0_i, h_bi)`` → ``(h_tbi, act_tbg,
    hn_tbi)``, act = σ(r), σ(z), tanh(n) and hn = the candidate's recurrent product."""

    n_states, n_saved = 1, 2

    def grad_op(self, given):
        return GRURecurrenceGrad(given)

    def _saved_shapes(self, t, b, g, i):
        return [(t, b, g), (t, b, i)]

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        xa, W, h0, h_prev = _arrays(inputs[:1] + inputs[2:], dtype)
        reset = np.asarray(inputs[1]) <= 0
        steps, batch, gates = xa.shape
        i = gates // 3
        h_seq, hn_seq = np.empty((steps, batch, i), dtype), np.empty((steps, batch, i), dtype)
        act, ha = np.empty_like(xa), np.empty((batch, gates), dtype)
        one = act.dtype.type(1)
        for t in range(steps):
            if reset[t].any():
                h_prev = h_prev.copy()
                h_prev[reset[t]] = h0
            np.dot(h_prev, W, out=ha)
            if numba is not None:
                _gru_cell(ha, xa[t], h_prev, act[t], hn_seq[t], h_seq[t], one)
                h_prev = h_seq[t]
                continue
            a = act[t]
            np.add(xa[t, :, :2 * i], ha[:, :2 * i], out=a[:, :2 * i])
            expit(a[:, :2 * i], out=a[:, :2 * i])                       # r, z
            hn_seq[t] = ha[:, 2 * i:]
            n = a[:, 2 * i:]
            np.multiply(a[:, :i], hn_seq[t], out=n)
            n += xa[t, :, 2 * i:]
            np.tanh(n, out=n)
            h = h_seq[t]                                                # n + z (h_prev - n)
            np.subtract(h_prev, n, out=h)
            h *= a[:, i:2 * i]
            h += n
            h_prev = h
        output_storage[0][0], output_storage[1][0], output_storage[2][0] = h_seq, act, hn_seq


class GRURecurrenceGrad(_RecurrenceGrad):
    """Backpropagation through time of :class:`GRURecurrence`."""

    n_states, n_saved = 1, 2

    def perform(self, node, inputs, output_storage):
        dtype = node.outputs[0].dtype
        reset, W, (h0,), (h_bi,), (h_seq, act, hn_seq), (dh_out,) = self._unpack(inputs, dtype)
        steps, batch, gates = act.shape
        i = gates // 3
        h_in = _entering(h_bi, h_seq, h0, reset)
        d_pre = np.empty_like(act)                        # gradient of xa
        d_ha = np.empty_like(act)                         # gradient of h_prev W_h
        dh, dh0 = np.zeros((batch, i), dtype), np.zeros(i, dtype)
        tmp, back = np.empty((batch, i), dtype), np.empty((batch, i), dtype)
        W_T = np.ascontiguousarray(W.T)
        one, zero_bi = act.dtype.type(1), np.zeros((batch, i), dtype)
        for t in reversed(range(steps)):
            if numba is not None:
                _gru_cell_grad(dh, zero_bi if dh_out is None else dh_out[t], act[t], h_in[t],
                               hn_seq[t], d_pre[t], d_ha[t], one)
                dh += np.dot(d_ha[t], W_T, out=back)
                _route_reset(dh, dh0, reset[t])
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
            np.subtract(h_in[t], s_n, out=d_z)                          # d z = dh (h_prev - n) σ'
            d_z *= dh
            d_z *= _sigmoid_slope(s_z, tmp)
            np.multiply(d_n, hn_seq[t], out=d_r)                        # d r = d n · hn σ'
            d_r *= _sigmoid_slope(s_r, tmp)
            dr[:, :2 * i] = d[:, :2 * i]
            np.multiply(d_n, s_r, out=dr[:, 2 * i:])
            dh *= s_z                                                   # direct path z h_prev
            dh += np.dot(dr, W_T, out=back)
            _route_reset(dh, dh0, reset[t])
        dW = np.dot(h_in.reshape(steps * batch, i).T, d_ha.reshape(steps * batch, gates))
        for storage, value in zip(output_storage, (d_pre, dW, dh0, dh)):
            storage[0] = value


def _sigmoid_slope(s, out):
    """σ'(x) = s (1 − s) from s = σ(x), into ``out``."""
    np.subtract(1.0, s, out=out)
    out *= s
    return out


# -- Numba cell kernels: one pass over [B][i] per frame -------------------------------
# Every gate nonlinearity and state update of a frame in one kernel call, written into
# the preallocated outputs; the matmuls stay np.dot on BLAS. ``one`` is 1 in the arrays'
# dtype, so float32 arithmetic stays float32 (a Python literal 1 would promote to
# float64). ``error_model="numpy"`` drops the zero-division checks that stop LLVM
# from vectorising the loops. Numba compiles (and caches on disk) one version per dtype:
# float64 calls libm's tanh/exp (as exact as the scan path), float32 a rational tanh
# (σ(x) = ½ tanh(x/2) + ½) that vectorises, where libm's tanhf costs ~70 ns a call here.
if numba is not None:
    _JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")
    _F32 = np.float32
    # tanh on float32: Eigen's rational approximation (|error| < 3e-7), clamped to ±7.9988,
    # where tanh rounds to ±1 in float32; unlike a libm call it vectorises.
    _TANH_CLAMP = _F32(7.99881172180175781)
    _A1, _A3, _A5, _A7, _A9, _A11, _A13 = map(_F32, (
        4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
        -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
    _B0, _B2, _B4, _B6 = map(_F32, (4.89352518554385e-03, 2.26843463243900e-03,
                                    1.18534705686654e-04, 1.19825839466702e-06))
    _HALF32 = _F32(0.5)

    def _tanh(x):
        """tanh for the kernels (specialised per dtype below)."""

    def _sigmoid(x):
        """σ for the kernels (specialised per dtype below)."""

    def _tanh32(x):
        x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
        x2 = x * x
        p = x2 * (x2 * (x2 * (x2 * (x2 * (x2 * _A13 + _A11) + _A9) + _A7) + _A5) + _A3) + _A1
        return x * p / (x2 * (x2 * (x2 * _B6 + _B4) + _B2) + _B0)

    def _tanh64(x):
        return np.tanh(x)

    def _sigmoid32(x):
        return _HALF32 * _tanh(_HALF32 * x) + _HALF32

    def _sigmoid64(x):
        if x >= 0.0:
            return 1.0 / (1.0 + np.exp(-x))
        e = np.exp(x)
        return e / (1.0 + e)

    @overload(_tanh, jit_options=_JIT)
    def _tanh_impl(x):
        return _tanh32 if getattr(x, "bitwidth", 64) == 32 else _tanh64

    @overload(_sigmoid, jit_options=_JIT)
    def _sigmoid_impl(x):
        return _sigmoid32 if getattr(x, "bitwidth", 64) == 32 else _sigmoid64

    # Each loop reads and writes few arrays (gate blocks as separate row views), so that
    # LLVM's runtime overlap checks stay few and every loop is vectorised.
    @numba.njit(**_JIT)
    def _lstm_cell(a, xa, c_prev, c, h, one):
        """a = h_prev W_h [B][4i] → activated gates, in place; c, h = the new states."""
        batch, i = c.shape
        for b in range(batch):
            ab, xb, cp, cb, hb = a[b], xa[b], c_prev[b], c[b], h[b]
            s_ifo, x_ifo, s_g, x_g = ab[:3 * i], xb[:3 * i], ab[3 * i:], xb[3 * i:]
            s_i, s_f, s_o = ab[:i], ab[i:2 * i], ab[2 * i:3 * i]
            for k in range(3 * i):
                s_ifo[k] = _sigmoid(s_ifo[k] + x_ifo[k])
            for j in range(i):
                s_g[j] = _tanh(s_g[j] + x_g[j])
            for j in range(i):
                cb[j] = s_f[j] * cp[j] + s_i[j] * s_g[j]
            for j in range(i):
                hb[j] = s_o[j] * _tanh(cb[j])

    @numba.njit(**_JIT)
    def _lstm_cell_grad(dh, dc, dh_out, dc_out, a, c, c_in, d, one):
        """Gradients of the frame's pre-activations into d [B][4i] from dh + dh_out and
        dc + dc_out; dc becomes the gradient of the entering c, dh is overwritten."""
        batch, i = dh.shape
        for b in range(batch):
            ab, db, cb, cib, dhb, dcb, dhob, dcob = a[b], d[b], c[b], c_in[b], dh[b], dc[b], dh_out[b], dc_out[b]
            s_i, s_f, s_o, s_g = ab[:i], ab[i:2 * i], ab[2 * i:3 * i], ab[3 * i:]
            d_i, d_f, d_o, d_g = db[:i], db[i:2 * i], db[2 * i:3 * i], db[3 * i:]
            for j in range(i):
                dhb[j] += dhob[j]
            for j in range(i):
                dcb[j] += dcob[j]
            for j in range(i):                  # d o = dh tanh(c) σ'(o)
                d_o[j] = dhb[j] * _tanh(cb[j]) * s_o[j] * (one - s_o[j])
            for j in range(i):                  # d c += dh o (1 - tanh² c)
                tc = _tanh(cb[j])
                dcb[j] += dhb[j] * s_o[j] * (one - tc * tc)
            for j in range(i):
                d_i[j] = dcb[j] * s_g[j] * s_i[j] * (one - s_i[j])
            for j in range(i):
                d_f[j] = dcb[j] * cib[j] * s_f[j] * (one - s_f[j])
            for j in range(i):
                d_g[j] = dcb[j] * s_i[j] * (one - s_g[j] * s_g[j])
            for j in range(i):                  # into the entering c
                dcb[j] *= s_f[j]

    @numba.njit(**_JIT)
    def _gru_cell(ha, xa, h_prev, a, hn, h, one):
        """ha = h_prev W_h [B][3i] → activated gates a, the candidate's product hn, new h."""
        batch, i = h.shape
        for b in range(batch):
            hab, xb, ab, hpb, hnb, hb = ha[b], xa[b], a[b], h_prev[b], hn[b], h[b]
            s_rz, x_rz, h_rz = ab[:2 * i], xb[:2 * i], hab[:2 * i]
            s_r, s_z, s_n, x_n, h_n = ab[:i], ab[i:2 * i], ab[2 * i:], xb[2 * i:], hab[2 * i:]
            for k in range(2 * i):
                s_rz[k] = _sigmoid(x_rz[k] + h_rz[k])
            for j in range(i):
                hnb[j] = h_n[j]
            for j in range(i):
                s_n[j] = _tanh(x_n[j] + s_r[j] * hnb[j])
            for j in range(i):                  # n + z (h_prev - n)
                hb[j] = s_n[j] + s_z[j] * (hpb[j] - s_n[j])

    @numba.njit(**_JIT)
    def _gru_cell_grad(dh, dh_out, a, h_in, hn, d, d_ha, one):
        """Gradients of xa (d) and of h_prev W_h (d_ha) [B][3i] from dh + dh_out; dh becomes
        its direct path z dh into the entering h (the caller adds d_ha W_hᵀ)."""
        batch, i = dh.shape
        for b in range(batch):
            ab, db, drb, hib, hnb, dhb, dhob = a[b], d[b], d_ha[b], h_in[b], hn[b], dh[b], dh_out[b]
            s_r, s_z, s_n = ab[:i], ab[i:2 * i], ab[2 * i:]
            d_r, d_z, d_n = db[:i], db[i:2 * i], db[2 * i:]
            dr_r, dr_z, dr_n = drb[:i], drb[i:2 * i], drb[2 * i:]
            for j in range(i):
                dhb[j] += dhob[j]
            for j in range(i):                  # d n = dh (1 - z) (1 - n²)
                d_n[j] = dhb[j] * (one - s_z[j]) * (one - s_n[j] * s_n[j])
            for j in range(i):                  # d z = dh (h_prev - n) σ'(z)
                d_z[j] = dhb[j] * (hib[j] - s_n[j]) * s_z[j] * (one - s_z[j])
            for j in range(i):                  # d r = d n · hn σ'(r)
                d_r[j] = d_n[j] * hnb[j] * s_r[j] * (one - s_r[j])
            for j in range(i):
                dr_r[j] = d_r[j]
            for j in range(i):
                dr_z[j] = d_z[j]
            for j in range(i):
                dr_n[j] = d_n[j] * s_r[j]
            for j in range(i):                  # direct path z h_prev
                dhb[j] *= s_z[j]


_OPS = {"LSTMLayer": LSTMRecurrence, "GRULayer": GRURecurrence}
