"""Per-frame cell kernels of the fused recurrences (``sophia/graph/engines/fused.py``).

One kernel call does all the elementwise work of one frame of an LSTM or GRU layer
— bias, gate nonlinearities, state update, and in the backward pass the gradients of
the pre-activations and of the bias — in a single pass over the [B][g] rows, written
into preallocated arrays. The matmuls stay ``np.dot`` on BLAS, called by the Ops.

The Ops call these kernels as native functions over raw pointers
(``sophia/graph/engines/native.py``), compiled by Numba once per machine and loaded from
disk afterwards; calling them here, on arrays, is what the tests compare with.
The plain LSTM and GRU cells are inlined into those wrappers at Numba's level
(``inline="always"``), so each is typed, lowered and optimised once, inside its
wrapper: a shorter cold compile, the same speed. The option cells (peepholes, layer
norm, clock gate) and the batch-norm cells (``kernels_bn.py``) are functions of their
own that the wrapper calls: inlined into a wrapper over that many raw pointers, their
loops were left unvectorised, several times slower per frame
(``bench/train_speed.py --option_sets`` measures the layers that use them). They are
compiled once per set of option bits (:func:`lstm_options_kernels` and friends).
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

import functools

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


# -- the unit options: peepholes, layer norm, the clock gate -----------------------------
# The kernels below run every option the fused Ops support, compiled once per set of
# option bits (``flags``); the tests on the options sit outside the loops over units, so
# LLVM vectorises each loop. Row statistics (layer norm) are summed in float64.
PEEPHOLE, LAYER_NORM, CLOCK = 1, 2, 4
EPSILON = 1e-5                      # as sophia.graph.norms.EPSILON

if AVAILABLE:
    def _like(x, one):
        """``x`` in ``one``'s dtype (specialised per dtype below)."""

    @overload(_like, jit_options=_JIT)
    def _like_impl(x, one):
        if getattr(one, "bitwidth", 64) == 32:
            return lambda x, one: np.float32(x)
        return lambda x, one: np.float64(x)

    @numba.njit(inline="always", **_JIT)
    def _normalise_row(x, n, gamma, beta, one):
        """Layer norm of the row ``x`` in place: n = (x − mean) / sd, x = γ n + β; returns 1 / sd."""
        width = x.shape[0]
        total = 0.0
        for k in range(width):
            total += x[k]
        mean = _like(total / width, one)
        total = 0.0
        for k in range(width):
            total += (x[k] - mean) * (x[k] - mean)
        r = _like(1.0 / np.sqrt(total / width + EPSILON), one)
        for k in range(width):
            n[k] = (x[k] - mean) * r
        for k in range(width):
            x[k] = gamma[k] * n[k] + beta[k]
        return r

    @numba.njit(inline="always", **_JIT)
    def _normalise_row_grad(dy, n, r, gamma, d_gamma, dx, one):
        """Backward of :func:`_normalise_row`: from dy, the gradient of its output, add
        dy · n into d_gamma (float64) and write the gradient of its input into dx."""
        width = dy.shape[0]
        s1, s2 = 0.0, 0.0
        for k in range(width):
            gd = gamma[k] * dy[k]
            s1 += gd
            s2 += gd * n[k]
            d_gamma[k] += dy[k] * n[k]
        m1, m2 = _like(s1 / width, one), _like(s2 / width, one)
        for k in range(width):
            dx[k] = r * (gamma[k] * dy[k] - m1 - n[k] * m2)

    # -- the parts the option and batch-norm LSTM cells share, for one batch row --------
    @numba.njit(inline="always", **_JIT)
    def _lstm_new_cell(ab, cp, cn, peep, i, peephole):
        """The input, forget and candidate gates of the pre-activations ab [4i] activated
        in place (the first two seeing the entering cell cp [i] through the peepholes),
        and the new cell cn [i]."""
        s_i, s_f, s_g = ab[:i], ab[i:2 * i], ab[3 * i:]
        if peephole:
            for j in range(i):
                s_i[j] += cp[j] * peep[j]
                s_f[j] += cp[j] * peep[i + j]
        for j in range(i):
            s_i[j] = _sigmoid(s_i[j])
        for j in range(i):
            s_f[j] = _sigmoid(s_f[j])
        for j in range(i):
            s_g[j] = _tanh(s_g[j])
        for j in range(i):
            cn[j] = s_f[j] * cp[j] + s_i[j] * s_g[j]

    @numba.njit(inline="always", **_JIT)
    def _lstm_output_gate(s_o, cn, peep, i, peephole):
        """The output gate s_o [i] activated in place, seeing the new cell cn through its peephole."""
        if peephole:
            for j in range(i):
                s_o[j] += cn[j] * peep[2 * i + j]
        for j in range(i):
            s_o[j] = _sigmoid(s_o[j])

    @numba.njit(inline="always", **_JIT)
    def _blend(k, new, prev, out, one):
        """The clock gate's blend of one row: out = k new + (1 − k) prev."""
        for j in range(out.shape[0]):
            out[j] = k[j] * new[j] + (one - k[j]) * prev[j]

    @numba.njit(inline="always", **_JIT)
    def _lstm_clock_grad(dhb, dcb, dhob, dcob, hn, cn, hib, cib, k, dk, b, d_o, d_i, i, one, clock):
        """From dh + dh_out and dc + dc_out of row b: the gradients of the new h and c
        (before the clock's blend) into d_o and d_i, that of the openness k into dk[b],
        and the blend's direct paths into the entering states left in dhb, dcb (zero
        without a clock)."""
        if clock:
            kb, dkb = k[b], dk[b]
            for j in range(i):
                gh, gc, kj = dhb[j] + dhob[j], dcb[j] + dcob[j], kb[j]
                dkb[j] = gh * (hn[j] - hib[j]) + gc * (cn[j] - cib[j])
                dhb[j], dcb[j] = (one - kj) * gh, (one - kj) * gc
                d_o[j], d_i[j] = kj * gh, kj * gc
        else:
            for j in range(i):
                d_o[j], d_i[j] = dhb[j] + dhob[j], dcb[j] + dcob[j]
                dhb[j], dcb[j] = 0, 0

    @numba.njit(inline="always", **_JIT)
    def _lstm_normed_output_grad(s_o, ncb, gamma_c, beta_c, d_o, d_y, i, one):
        """Through h = σ(o) tanh(y), y = γ_c n_c + β_c: d_o [i] (the gradient of h) becomes
        that of o's pre-activation; d_y [i] gets that of y."""
        for j in range(i):
            so = s_o[j]
            ty = _tanh(gamma_c[j] * ncb[j] + beta_c[j])
            gh = d_o[j]
            d_o[j] = gh * ty * so * (one - so)
            d_y[j] = gh * so * (one - ty * ty)

    @numba.njit(inline="always", **_JIT)
    def _peephole_output_grad(d_o, cn, d_i, peep, d_peep, i):
        """The output peephole's part: into d_i (the new cell's gradient) and d_peep."""
        for j in range(i):
            d_i[j] += d_o[j] * peep[2 * i + j]
            d_peep[2 * i + j] += d_o[j] * cn[j]

    @numba.njit(inline="always", **_JIT)
    def _peephole_input_grad(d_i, d_f, cib, dcb, peep, d_peep, i):
        """The input and forget peepholes' part: into dcb (the entering cell's gradient) and d_peep."""
        for j in range(i):
            dcb[j] += d_i[j] * peep[j] + d_f[j] * peep[i + j]
            d_peep[j] += d_i[j] * cib[j]
            d_peep[i + j] += d_f[j] * cib[j]

    # Closures over their option bits: Numba cannot cache them on disk (native.py keeps their machine code).
    _SPECIALISED = dict(_JIT, cache=False)

    @functools.cache
    def lstm_options_kernels(flags: int) -> tuple:
        """``(lstm_options_cell, lstm_options_cell_grad)`` for the options of ``flags``
        (``PEEPHOLE | LAYER_NORM | CLOCK``), which are constants of the compiled code:
        Numba drops the branches of the options that are off before it types the rest,
        so a kernel with one option compiles in about half the time of one that reads
        the bits per call (``bench/step_profile.py`` with cold caches times each kernel)."""
        peephole, norm, clock = bool(flags & PEEPHOLE), bool(flags & LAYER_NORM), bool(flags & CLOCK)

        @numba.njit(**_SPECIALISED)
        def lstm_options_cell(a, xa, bias, h_prev, c_prev, peep, gamma_h, beta_h, gamma_c, beta_c, k,
                              n_h, rstd_h, n_c, rstd_c, c_new, h_new, c, h, one):
            """One LSTM frame with the options of ``flags``. a = h_prev W_h [B][4i] becomes
            the activated gates; n_h [B][4i], rstd_h [B] are the normalised product and its
            1/sd (layer norm), n_c [B][i], rstd_c [B] the normalised cell; c_new, h_new [B][i]
            the states before the clock gate's blend with k [B][i], c, h after it (with no
            clock, c_new and h_new may be c and h). peep [3i]: the input, forget, output
            peepholes; gamma_h, beta_h [4i], gamma_c, beta_c [i]: the norms' gains and biases."""
            batch, i = c.shape
            for b in range(batch):
                ab, xb, hp, cp = a[b], xa[b], h_prev[b], c_prev[b]
                cn, hn, cb, hb = c_new[b], h_new[b], c[b], h[b]
                if norm:
                    rstd_h[b] = _normalise_row(ab, n_h[b], gamma_h, beta_h, one)
                for q in range(4 * i):
                    ab[q] += xb[q] + bias[q]
                _lstm_new_cell(ab, cp, cn, peep, i, peephole)
                s_o = ab[2 * i:3 * i]
                _lstm_output_gate(s_o, cn, peep, i, peephole)
                if norm:
                    ncb = n_c[b]
                    for j in range(i):
                        hn[j] = cn[j]
                    rstd_c[b] = _normalise_row(hn, ncb, gamma_c, beta_c, one)
                    for j in range(i):
                        hn[j] = s_o[j] * _tanh(hn[j])
                else:
                    for j in range(i):
                        hn[j] = s_o[j] * _tanh(cn[j])
                if clock:
                    _blend(k[b], cn, cp, cb, one)
                    _blend(k[b], hn, hp, hb, one)

        @numba.njit(**_SPECIALISED)
        def lstm_options_cell_grad(dh, dc, dh_out, dc_out, a, c_new, h_new, h_in, c_in, n_h, rstd_h,
                                   n_c, rstd_c, peep, gamma_h, gamma_c, beta_c, k, d, d_ha, dk,
                                   db, d_peep, d_gamma_h, d_gamma_c, d_beta_c, one):
            """Backward of :func:`lstm_options_cell` for one frame. From dh + dh_out and
            dc + dc_out (the gradients of the frame's h and c): d [B][4i] = the gradient of
            the pre-activations (= of xa; summed into db), d_ha [B][4i] = of h_prev W_h (d
            itself without layer norm), dk [B][i] = of the clock's openness; the parameters'
            gradients are summed into the float64 d_peep [3i], d_gamma_h [4i], d_gamma_c and
            d_beta_c [i]. dc becomes the gradient of the entering c; dh that of the entering
            h by the clock's direct path (zero without a clock): the caller adds d_ha W_hᵀ."""
            batch, i = dh.shape
            for b in range(batch):
                ab, db_, cn, hn, hib, cib = a[b], d[b], c_new[b], h_new[b], h_in[b], c_in[b]
                dhb, dcb, dhob, dcob = dh[b], dc[b], dh_out[b], dc_out[b]
                s_o = ab[2 * i:3 * i]
                d_i, d_o, d_g = db_[:i], db_[2 * i:3 * i], db_[3 * i:]
                # d_i holds the gradient of c_new until the last loop; d_g that of the cell norm's output
                _lstm_clock_grad(dhb, dcb, dhob, dcob, hn, cn, hib, cib, k, dk, b, d_o, d_i, i, one, clock)
                if norm:
                    ncb = n_c[b]
                    _lstm_normed_output_grad(s_o, ncb, gamma_c, beta_c, d_o, d_g, i, one)
                    for j in range(i):
                        d_beta_c[j] += d_g[j]
                    _normalise_row_grad(d_g, ncb, rstd_c[b], gamma_c, d_gamma_c, d_g, one)
                    for j in range(i):
                        d_i[j] += d_g[j]
                else:
                    for j in range(i):
                        so, tc, gh = s_o[j], _tanh(cn[j]), d_o[j]
                        d_o[j] = gh * tc * so * (one - so)
                        d_i[j] += gh * so * (one - tc * tc)
                if peephole:
                    _peephole_output_grad(d_o, cn, d_i, peep, d_peep, i)
                s_i, s_f, s_g, d_f = ab[:i], ab[i:2 * i], ab[3 * i:], db_[i:2 * i]
                for j in range(i):                  # d i, d f, d g; then d c into the entering c
                    si, sf, sg, gc = s_i[j], s_f[j], s_g[j], d_i[j]
                    d_f[j] = gc * cib[j] * sf * (one - sf)
                    d_g[j] = gc * si * (one - sg * sg)
                    d_i[j] = gc * sg * si * (one - si)
                    dcb[j] += gc * sf
                if peephole:
                    _peephole_input_grad(d_i, d_f, cib, dcb, peep, d_peep, i)
                for q in range(4 * i):
                    db[q] += db_[q]
                if norm:
                    _normalise_row_grad(db_, n_h[b], rstd_h[b], gamma_h, d_gamma_h, d_ha[b], one)

        return lstm_options_cell, lstm_options_cell_grad

    @functools.cache
    def gru_options_kernels(flags: int) -> tuple:
        """``(gru_options_cell, gru_options_cell_grad)`` for the options of ``flags``
        (``LAYER_NORM | CLOCK``), constants of the compiled code as in
        :func:`lstm_options_kernels`."""
        norm, clock = bool(flags & LAYER_NORM), bool(flags & CLOCK)

        @numba.njit(**_SPECIALISED)
        def gru_options_cell(ha, xa, bias, h_prev, gamma_h, beta_h, k, n_h, rstd_h, a, hn, h_new, h, one):
            """One GRU frame with the options of ``flags`` (layer norm on h_prev W_h, the
            clock gate): ha = h_prev W_h [B][3i] (normalised in place, n_h [B][3i] and
            rstd_h [B] kept), a the activated gates, hn the candidate's recurrent product,
            h_new the state before the clock's blend with k [B][i], h after it (with no
            clock, h_new may be h)."""
            batch, i = h.shape
            for b in range(batch):
                hab = ha[b]
                if norm:
                    rstd_h[b] = _normalise_row(hab, n_h[b], gamma_h, beta_h, one)
                xb, ab, hpb, hnb, hb = xa[b], a[b], h_prev[b], hn[b], h_new[b]
                s_rz, x_rz, h_rz = ab[:2 * i], xb[:2 * i], hab[:2 * i]
                s_r, s_z, s_n, x_n, h_n = ab[:i], ab[i:2 * i], ab[2 * i:], xb[2 * i:], hab[2 * i:]
                for q in range(2 * i):
                    s_rz[q] = _sigmoid(x_rz[q] + bias[q] + h_rz[q])
                for j in range(i):
                    hnb[j] = h_n[j]
                for j in range(i):
                    s_n[j] = _tanh(x_n[j] + bias[2 * i + j] + s_r[j] * hnb[j])
                for j in range(i):
                    hb[j] = s_n[j] + s_z[j] * (hpb[j] - s_n[j])
                if clock:
                    _blend(k[b], hb, hpb, h[b], one)

        @numba.njit(**_SPECIALISED)
        def gru_options_cell_grad(dh, dh_out, a, h_in, hn, h_new, n_h, rstd_h, gamma_h, k, d, d_ha, dk,
                                  db, d_gamma_h, d_beta_h, one):
            """Backward of :func:`gru_options_cell` for one frame: from dh + dh_out, d [B][3i]
            = the gradient of xa (summed into db), d_ha [B][3i] = of h_prev W_h before the
            norm, dk [B][i] = of the clock's openness; d_gamma_h, d_beta_h [3i] summed in
            float64. dh becomes the gradient of the entering h by the direct paths (the
            caller adds d_ha W_hᵀ)."""
            batch, i = dh.shape
            for b in range(batch):
                ab, db_, drb, hib, hnb, hwb, dhb, dhob = a[b], d[b], d_ha[b], h_in[b], hn[b], h_new[b], dh[b], dh_out[b]
                s_r, s_z, s_n = ab[:i], ab[i:2 * i], ab[2 * i:]
                d_r, d_z, d_n = db_[:i], db_[i:2 * i], db_[2 * i:]
                dr_r, dr_z, dr_n = drb[:i], drb[i:2 * i], drb[2 * i:]
                if clock:
                    kb, dkb = k[b], dk[b]
                    for j in range(i):
                        g, kj = dhb[j] + dhob[j], kb[j]
                        dkb[j] = g * (hwb[j] - hib[j])
                        dhb[j] = kj * g                     # the gradient of h_new, for now
                        dr_r[j] = (one - kj) * g            # the direct path, for now
                else:
                    for j in range(i):
                        dhb[j] += dhob[j]
                        dr_r[j] = 0
                for j in range(i):                  # d n = dh (1 - z) (1 - n²)
                    d_n[j] = dhb[j] * (one - s_z[j]) * (one - s_n[j] * s_n[j])
                for j in range(i):                  # d z = dh (h_prev - n) σ'(z)
                    d_z[j] = dhb[j] * (hib[j] - s_n[j]) * s_z[j] * (one - s_z[j])
                for j in range(i):                  # dh: z dh + the clock's direct path
                    dhb[j] = dhb[j] * s_z[j] + dr_r[j]
                for j in range(i):                  # d r = d n · hn σ'(r)
                    d_r[j] = d_n[j] * hnb[j] * s_r[j] * (one - s_r[j])
                for j in range(i):
                    dr_r[j] = d_r[j]
                for j in range(i):
                    dr_z[j] = d_z[j]
                for j in range(i):
                    dr_n[j] = d_n[j] * s_r[j]
                for q in range(3 * i):
                    db[q] += db_[q]
                if norm:
                    for q in range(3 * i):
                        d_beta_h[q] += drb[q]
                    _normalise_row_grad(drb, n_h[b], rstd_h[b], gamma_h, d_gamma_h, drb, one)

        return gru_options_cell, gru_options_cell_grad

    def on_arrays(specialised, k: int, name: str):
        """The kernel ``specialised(flags)[k]`` as a function of ``(*arrays, one, flags)``,
        for callers with arrays and the bits in hand (the tests)."""
        def call(*args):
            *arrays, flags = args
            specialised(flags)[k](*arrays)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = f":func:`{specialised.__name__}`'s {name} on arrays: ``(..., one, flags)``."
        return call

    lstm_options_cell = on_arrays(lstm_options_kernels, 0, "lstm_options_cell")
    lstm_options_cell_grad = on_arrays(lstm_options_kernels, 1, "lstm_options_cell_grad")
    gru_options_cell = on_arrays(gru_options_kernels, 0, "gru_options_cell")
    gru_options_cell_grad = on_arrays(gru_options_kernels, 1, "gru_options_cell_grad")

    @numba.njit(inline="always", **_JIT)
    def layer_norm_rows(x, gamma, beta, n, rstd, y, one):
        """Layer norm of every row of x [R][g]: y = γ n + β with n = (x − mean) / sd
        [R][g] and rstd = 1 / sd [R] kept for the gradient; gamma, beta [g]."""
        for r in range(x.shape[0]):
            yr, xr = y[r], x[r]
            for k in range(xr.shape[0]):
                yr[k] = xr[k]
            rstd[r] = _normalise_row(yr, n[r], gamma, beta, one)

    @numba.njit(inline="always", **_JIT)
    def layer_norm_rows_grad(dy, n, rstd, gamma, dx, d_gamma, d_beta, one):
        """Backward of :func:`layer_norm_rows`: dx [R][g] from dy [R][g]; the gradients
        of γ and β [g] summed into the float64 d_gamma and d_beta."""
        for r in range(dy.shape[0]):
            dyr = dy[r]
            for k in range(dyr.shape[0]):
                d_beta[k] += dyr[k]
            _normalise_row_grad(dyr, n[r], rstd[r], gamma, d_gamma, dx[r], one)

    @numba.njit(inline="always", **_JIT)
    def clock_openness(time, tau_raw, shift, r_raw, leak, k, one):
        """The Phased-LSTM gate's openness k [R][i] at the times [R] (the rows of a
        window's [T][B]) from its raw period, shift and open ratio [i], as
        :meth:`sophia.graph.clock.TimeGate.openness` computes it; leak [1] is α (0 at
        inference)."""
        rows, i = k.shape
        two, alpha = one + one, leak[0]
        for r in range(rows):
            kr, t = k[r], time[r]
            for j in range(i):
                tau = abs(tau_raw[j]) + _like(1e-3, one)
                ratio = min(max(abs(r_raw[j]), _like(1e-3, one)), one)
                cycles = (t - shift[j]) / tau
                phase = cycles - np.floor(cycles)
                opening = two * phase / ratio
                if phase < ratio / two:
                    kr[j] = opening
                elif phase < ratio:
                    kr[j] = two - opening
                else:
                    kr[j] = alpha * phase

    @numba.njit(inline="always", **_JIT)
    def clock_openness_grad(time, tau_raw, shift, r_raw, leak, dk, d_tau, d_shift, d_r, one):
        """Backward of :func:`clock_openness`: from dk [R][i], the gradients of the raw
        period, shift and open ratio [i] summed into the float64 d_tau, d_shift, d_r
        (the phase's floor has no gradient; abs and the clip of the ratio pass it as
        PyTensor's do)."""
        rows, i = dk.shape
        two, alpha = one + one, leak[0]
        for r in range(rows):
            dkr, t = dk[r], time[r]
            for j in range(i):
                tau = abs(tau_raw[j]) + _like(1e-3, one)
                raw = abs(r_raw[j])
                ratio = min(max(raw, _like(1e-3, one)), one)
                cycles = (t - shift[j]) / tau
                phase = cycles - np.floor(cycles)
                if phase < ratio / two:
                    d_phase, d_ratio = two / ratio, -two * phase / (ratio * ratio)
                elif phase < ratio:
                    d_phase, d_ratio = -two / ratio, two * phase / (ratio * ratio)
                else:
                    d_phase, d_ratio = alpha, _like(0.0, one)
                g = dkr[j] * d_phase
                d_shift[j] -= g / tau
                d_tau[j] -= g * cycles / tau * np.sign(tau_raw[j])
                if _like(1e-3, one) <= raw <= one:
                    d_r[j] += dkr[j] * d_ratio * np.sign(r_raw[j])
