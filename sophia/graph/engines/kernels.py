"""Per-frame cell kernels of the fused recurrences (``sophia/graph/engines/fused.py``).

One kernel call does all the elementwise work of one frame of an LSTM or GRU layer
— bias, gate nonlinearities, state update, and in the backward pass the gradients of
the pre-activations and of the bias — in a single pass over the [B][g] rows, written
into preallocated arrays. The matmuls stay ``np.dot`` on BLAS, called by the Ops.

The Ops call these kernels as native functions over raw pointers
(``sophia/graph/engines/native.py``), compiled by Numba once per machine and loaded from
disk afterwards; calling them here, on arrays, is what the tests compare with.
They are inlined into those wrappers at Numba's level (``inline="always"``), so each
is typed, lowered and optimised once, inside its wrapper, instead of also as a
library of its own: a shorter cold compile, the same speed.
Without Numba, ``AVAILABLE`` is False and the Ops run their numpy code instead.

Conventions: ``one`` is 1 in the arrays' dtype, so float32 arithmetic stays float32
(a Python literal 1 would promote to float64); ``db`` accumulates the bias gradient
in float64 across the frames of a window. ``error_model="numpy"`` drops the
zero-division checks that stop LLVM from vectorising the loops. float64 calls libm's
tanh/exp (as exact as the scan path); float32 uses a rational tanh (and
σ(x) = ½ tanh(x/2) + ½) that vectorises, where libm's tanhf is a call per element.
Each loop reads and writes few arrays (gate blocks as separate row views), so LLVM's
runtime overlap checks stay few and every loop is vectorised.

Gate layouts: LSTM ``[input, forget, output, candidate]``, GRU ``[reset, update,
candidate]`` with the reset gate applied after the recurrent product.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
    from numba.extending import overload
except ImportError:                   # pragma: no cover - numba comes with PyTensor
    numba = None

AVAILABLE = numba is not None

if AVAILABLE:
    _JIT = dict(cache=True, fastmath=True, nogil=True, error_model="numpy")
    _F32 = np.float32
    # tanh on float32: Eigen's rational approximation (|error| < 3e-7), clamped to ±7.9988,
    # where tanh rounds to ±1 in float32.
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

    @numba.njit(inline="always", **_JIT)
    def lstm_cell(a, xa, bias, c_prev, c, h, one):
        """a = h_prev W_h [B][4i] → the activated gates of xa + bias + a, in place;
        c, h [B][i] = the new states."""
        batch, i = c.shape
        b_ifo, b_g = bias[:3 * i], bias[3 * i:]
        for b in range(batch):
            ab, xb, cp, cb, hb = a[b], xa[b], c_prev[b], c[b], h[b]
            s_ifo, x_ifo, s_g, x_g = ab[:3 * i], xb[:3 * i], ab[3 * i:], xb[3 * i:]
            s_i, s_f, s_o = ab[:i], ab[i:2 * i], ab[2 * i:3 * i]
            for k in range(3 * i):
                s_ifo[k] = _sigmoid(s_ifo[k] + x_ifo[k] + b_ifo[k])
            for j in range(i):
                s_g[j] = _tanh(s_g[j] + x_g[j] + b_g[j])
            for j in range(i):
                cb[j] = s_f[j] * cp[j] + s_i[j] * s_g[j]
            for j in range(i):
                hb[j] = s_o[j] * _tanh(cb[j])

    @numba.njit(inline="always", **_JIT)
    def lstm_cell_grad(dh, dc, dh_out, dc_out, a, c, c_in, d, db, one):
        """Gradients of the frame's pre-activations into d [B][4i] (and summed into
        db [4i], float64) from dh + dh_out and dc + dc_out; dc becomes the gradient of
        the entering c, dh is left for the caller to overwrite."""
        batch, i = dh.shape
        for b in range(batch):
            ab, db_, cb, cib, dhb, dcb, dhob, dcob = a[b], d[b], c[b], c_in[b], dh[b], dc[b], dh_out[b], dc_out[b]
            s_i, s_f, s_o, s_g = ab[:i], ab[i:2 * i], ab[2 * i:3 * i], ab[3 * i:]
            d_i, d_f, d_o, d_g = db_[:i], db_[i:2 * i], db_[2 * i:3 * i], db_[3 * i:]
            for j in range(i):                  # dh + dh_out into d o and into d c (one tanh c)
                g, tc, so = dhb[j] + dhob[j], _tanh(cb[j]), s_o[j]
                d_o[j] = g * tc * so * (one - so)
                dcb[j] += dcob[j] + g * so * (one - tc * tc)
            for j in range(i):                  # d i, d f, d g; then d c into the entering c
                si, sf, sg, dcj = s_i[j], s_f[j], s_g[j], dcb[j]
                d_i[j] = dcj * sg * si * (one - si)
                d_f[j] = dcj * cib[j] * sf * (one - sf)
                d_g[j] = dcj * si * (one - sg * sg)
                dcb[j] = dcj * sf
            for k in range(4 * i):
                db[k] += db_[k]

    @numba.njit(inline="always", **_JIT)
    def gru_cell(ha, xa, bias, h_prev, a, hn, h, one):
        """ha = h_prev W_h [B][3i] → activated gates a, the candidate's product hn, new h."""
        batch, i = h.shape
        b_rz, b_n = bias[:2 * i], bias[2 * i:]
        for b in range(batch):
            hab, xb, ab, hpb, hnb, hb = ha[b], xa[b], a[b], h_prev[b], hn[b], h[b]
            s_rz, x_rz, h_rz = ab[:2 * i], xb[:2 * i], hab[:2 * i]
            s_r, s_z, s_n, x_n, h_n = ab[:i], ab[i:2 * i], ab[2 * i:], xb[2 * i:], hab[2 * i:]
            for k in range(2 * i):
                s_rz[k] = _sigmoid(x_rz[k] + b_rz[k] + h_rz[k])
            for j in range(i):
                hnb[j] = h_n[j]
            for j in range(i):
                s_n[j] = _tanh(x_n[j] + b_n[j] + s_r[j] * hnb[j])
            for j in range(i):                  # n + z (h_prev - n)
                hb[j] = s_n[j] + s_z[j] * (hpb[j] - s_n[j])

    @numba.njit(inline="always", **_JIT)
    def gru_cell_grad(dh, dh_out, a, h_in, hn, d, d_ha, db, one):
        """Gradients of xa (d, summed into db) and of h_prev W_h (d_ha) [B][3i] from
        dh + dh_out; dh becomes its direct path z dh into the entering h (the caller
        adds d_ha W_hᵀ)."""
        batch, i = dh.shape
        for b in range(batch):
            ab, db_, drb, hib, hnb, dhb, dhob = a[b], d[b], d_ha[b], h_in[b], hn[b], dh[b], dh_out[b]
            s_r, s_z, s_n = ab[:i], ab[i:2 * i], ab[2 * i:]
            d_r, d_z, d_n = db_[:i], db_[i:2 * i], db_[2 * i:]
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
            for k in range(3 * i):
                db[k] += db_[k]
