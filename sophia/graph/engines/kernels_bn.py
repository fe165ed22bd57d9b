"""Per-frame kernels of recurrent batch norm for the fused engine (Cooijmans et al. 2016).

Batch norm normalises each unit over the batch: its statistics are sums over the
[B] rows of a frame, so these kernels make two passes over a frame's rows where the
kernels of :mod:`~sophia.graph.engines.kernels` make one. They compute the function
of :class:`sophia.graph.norms.BatchNorm`: n = (x − mean) / sqrt(var + ε), y = γ n + β,
mean and the biased var over the batch (training), or the population's mean and var
of each row's time step (``POPULATION``: one row of statistics per batch row, given).

- :func:`batch_norm_frame` and its gradient: one frame [B][g] of the input path,
  which the fused engine normalises outside the recurrence
  (:mod:`~sophia.graph.engines.fused_bn`);
- :func:`lstm_bn_cell`, :func:`gru_bn_cell` and their gradients: one frame of the
  recurrence, the recurrent product ``h W_h`` normalised over the batch, for LSTM also
  the cell before its ``tanh``; with peepholes and the clock gate as the option
  kernels run them (``flags``: ``kernels.PEEPHOLE``, ``kernels.CLOCK``, :data:`POPULATION`).

Conventions are those of :mod:`~sophia.graph.engines.kernels`: ``one`` is 1 in the
arrays' dtype; sums over the batch and each unit's 1 / sd run in float64, in the
caller's ``scratch`` [:data:`SCRATCH_ROWS`][g] (g the widest normalised row); gradient
accumulators are float64. Statistics arrays are [R][w], R = 1 in training (the frame's,
written by the kernel) and R = B with ``POPULATION`` (read). The gradients are those of training graphs (batch statistics).
Called as native code through :mod:`~sophia.graph.engines.native`.
"""
from __future__ import annotations

import functools

import numpy as np

from sophia.graph.engines.kernels import AVAILABLE, CLOCK, EPSILON, PEEPHOLE

POPULATION = 8            # the statistics are the population's, one row per batch row
SCRATCH_ROWS = 3          # float64 rows of the scratch: two sums over the batch, one per-unit factor

if AVAILABLE:
    import numba

    from sophia.graph.engines.kernels import (_JIT, _blend, _like, _lstm_clock_grad, _lstm_new_cell,
                                              _lstm_normed_output_grad, _lstm_output_gate, _peephole_input_grad,
                                              _peephole_output_grad, _tanh, gru_options_kernels, on_arrays)

    @numba.njit(inline="always", **_JIT)
    def _bn_stats(x, mean, var, scratch, one):
        """Mean and biased variance over the rows of x [B][w] into mean, var [w], in one
        pass: the float64 sums of x and x² (the variance their difference, never below 0)."""
        batch, width = x.shape
        s, q = scratch[0], scratch[1]
        for k in range(width):
            s[k], q[k] = 0.0, 0.0
        for b in range(batch):
            xb = x[b]
            for k in range(width):
                s[k] += xb[k]
                q[k] += np.float64(xb[k]) * xb[k]
        for k in range(width):
            m = s[k] / batch
            mean[k] = _like(m, one)
            var[k] = _like(max(q[k] / batch - m * m, 0.0), one)

    @numba.njit(inline="always", **_JIT)
    def _bn_normalise(x, mean, var, n, scratch, one):
        """n = (x − mean) / sqrt(var + ε) for the rows of x [B][w]; mean, var [R][w]
        (R = 1: the same for every row, its 1 / sd computed once into scratch[2])."""
        batch, width = x.shape
        eps = _like(EPSILON, one)
        if mean.shape[0] == 1:
            rstd, mb = scratch[2], mean[0]
            for k in range(width):
                rstd[k] = 1.0 / np.sqrt(var[0][k] + eps)
            for b in range(batch):
                xb, nb = x[b], n[b]
                for k in range(width):
                    nb[k] = (xb[k] - mb[k]) * _like(rstd[k], one)
            return
        for b in range(batch):
            xb, nb, mb, vb = x[b], n[b], mean[b], var[b]
            for k in range(width):
                nb[k] = (xb[k] - mb[k]) / np.sqrt(vb[k] + eps)

    @numba.njit(inline="always", **_JIT)
    def _bn_scale(n, gamma, beta, y):
        """y = γ n + β for the rows of n [B][w] (y may be n's input)."""
        for b in range(n.shape[0]):
            nb, yb = n[b], y[b]
            for k in range(n.shape[1]):
                yb[k] = gamma[k] * nb[k] + beta[k]

    @numba.njit(inline="always", **_JIT)
    def _bn_grad(dy, n, var, gamma, dx, scratch, d_gamma, d_beta, one):
        """Backward of the batch-statistics norm of x [B][w]: dx from dy (dx may be dy),
        with n and var [w] of the forward pass; Σ dy n and Σ dy summed into the
        float64 d_gamma and d_beta [w]."""
        batch, width = dy.shape
        s1, s2 = scratch[0], scratch[1]
        for k in range(width):
            s1[k], s2[k] = 0.0, 0.0
        for b in range(batch):
            dyb, nb = dy[b], n[b]
            for k in range(width):
                s1[k] += dyb[k]
                s2[k] += dyb[k] * nb[k]
        eps, scale = _like(EPSILON, one), scratch[2]
        for k in range(width):
            d_beta[k] += s1[k]
            d_gamma[k] += s2[k]
            scale[k] = gamma[k] / np.sqrt(var[k] + eps)
            s1[k], s2[k] = scale[k] * s1[k] / batch, scale[k] * s2[k] / batch
        for b in range(batch):                  # dx = γ / sd · (dy − mean(dy) − n mean(dy n))
            dyb, nb, dxb = dy[b], n[b], dx[b]
            for k in range(width):
                dxb[k] = _like(scale[k], one) * dyb[k] - _like(s1[k], one) - nb[k] * _like(s2[k], one)

    @numba.njit(inline="always", **_JIT)
    def batch_norm_frame(x, gamma, beta, n, mean, var, y, scratch, one):
        """Batch norm of one frame x [B][w] with its own statistics: mean, var [w]
        written, n [B][w] kept for the gradient, y = γ n + β [B][w] (y may be x)."""
        _bn_stats(x, mean, var, scratch, one)
        _bn_normalise(x, mean.reshape((1, -1)), var.reshape((1, -1)), n, scratch, one)
        _bn_scale(n, gamma, beta, y)

    @numba.njit(inline="always", **_JIT)
    def batch_norm_frame_grad(dy, n, var, gamma, dx, scratch, d_gamma, d_beta, one):
        """Backward of :func:`batch_norm_frame`: dx [B][w] from dy; d_gamma, d_beta [w] summed."""
        _bn_grad(dy, n, var, gamma, dx, scratch, d_gamma, d_beta, one)

    _SPECIALISED = dict(_JIT, cache=False)      # closures over their option bits, as in kernels.py

    @functools.cache
    def lstm_bn_kernels(flags: int) -> tuple:
        """``(lstm_bn_cell, lstm_bn_cell_grad)`` for the options of ``flags``
        (``PEEPHOLE | CLOCK | POPULATION``), constants of the compiled code as in
        :func:`kernels.lstm_options_kernels`."""
        peephole, clock, population = bool(flags & PEEPHOLE), bool(flags & CLOCK), bool(flags & POPULATION)

        @numba.njit(**_SPECIALISED)
        def lstm_bn_cell(a, xa, bias, h_prev, c_prev, peep, gamma_h, gamma_c, beta_c, k, mean_h, var_h, n_h,
                         mean_c, var_c, n_c, c_new, h_new, c, h, scratch, one):
            """One batch-normalised LSTM frame. a = h_prev W_h [B][4i] is normalised over the
            batch (n_h [B][4i] kept, statistics mean_h, var_h [R][4i]), then becomes the
            activated gates of γ_h n_h + xa + bias; the new cell c_new [B][i] is normalised
            (n_c, mean_c, var_c [R][i]) before its tanh: h_new = σ(o) tanh(γ_c n_c + β_c).
            peep [3i]: the peepholes (PEEPHOLE); c, h [B][i]: the states after the clock's
            blend with k [B][i] (CLOCK; without it c_new, h_new may be c, h)."""
            batch, i = c.shape
            if not population:
                _bn_stats(a, mean_h[0], var_h[0], scratch, one)
            _bn_normalise(a, mean_h, var_h, n_h, scratch, one)
            for b in range(batch):
                ab, xb, nb, cp, cn = a[b], xa[b], n_h[b], c_prev[b], c_new[b]
                for q in range(4 * i):
                    ab[q] = gamma_h[q] * nb[q] + xb[q] + bias[q]
                _lstm_new_cell(ab, cp, cn, peep, i, peephole)
            if not population:
                _bn_stats(c_new, mean_c[0], var_c[0], scratch, one)
            _bn_normalise(c_new, mean_c, var_c, n_c, scratch, one)
            _bn_scale(n_c, gamma_c, beta_c, h_new)                           # h_new holds the norm's y
            for b in range(batch):
                s_o, cn, hn = a[b][2 * i:3 * i], c_new[b], h_new[b]
                _lstm_output_gate(s_o, cn, peep, i, peephole)
                for j in range(i):
                    hn[j] = s_o[j] * _tanh(hn[j])
                if clock:
                    _blend(k[b], cn, c_prev[b], c[b], one)
                    _blend(k[b], hn, h_prev[b], h[b], one)

        @numba.njit(**_SPECIALISED)
        def lstm_bn_cell_grad(dh, dc, dh_out, dc_out, a, c_new, h_new, h_in, c_in, n_h, var_h, n_c, var_c,
                              peep, gamma_h, gamma_c, beta_c, k, d, d_ha, dk, scratch, db, d_peep,
                              d_gamma_h, d_beta_h, d_gamma_c, d_beta_c, one):
            """Backward of :func:`lstm_bn_cell` (training) for one frame. From dh + dh_out and
            dc + dc_out: d [B][4i] = the gradient of the pre-activations (= of xa; summed
            into db), d_ha [B][4i] = of h_prev W_h before its norm, dk [B][i] = of the
            clock's openness; d_peep [3i], d_gamma_h, d_beta_h [4i], d_gamma_c, d_beta_c [i]
            summed (float64; the h path has no β, d_beta_h is a scratch sum). dc becomes the
            gradient of the entering c, dh that of the entering h by the clock's direct
            path: the caller adds d_ha W_hᵀ."""
            batch, i = dh.shape
            for b in range(batch):
                ab, db_, cn, hn, hib, cib = a[b], d[b], c_new[b], h_new[b], h_in[b], c_in[b]
                dhb, dcb, dhob, dcob, ncb = dh[b], dc[b], dh_out[b], dc_out[b], n_c[b]
                s_o = ab[2 * i:3 * i]
                d_i, d_o, d_g = db_[:i], db_[2 * i:3 * i], db_[3 * i:]
                # d_i holds the gradient of c_new until the last loop; d_g that of the cell norm's y
                _lstm_clock_grad(dhb, dcb, dhob, dcob, hn, cn, hib, cib, k, dk, b, d_o, d_i, i, one, clock)
                _lstm_normed_output_grad(s_o, ncb, gamma_c, beta_c, d_o, d_g, i, one)
                if peephole:
                    _peephole_output_grad(d_o, cn, d_i, peep, d_peep, i)
            _bn_grad(d[:, 3 * i:], n_c, var_c[0], gamma_c, d[:, 3 * i:], scratch, d_gamma_c, d_beta_c, one)
            for b in range(batch):
                ab, db_, cib, dcb = a[b], d[b], c_in[b], dc[b]
                s_i, s_f, s_g = ab[:i], ab[i:2 * i], ab[3 * i:]
                d_i, d_f, d_g = db_[:i], db_[i:2 * i], db_[3 * i:]
                for j in range(i):                  # d i, d f, d g (the new cell's gradient: d i + d y)
                    si, sf, sg, gc = s_i[j], s_f[j], s_g[j], d_i[j] + d_g[j]
                    d_f[j] = gc * cib[j] * sf * (one - sf)
                    d_g[j] = gc * si * (one - sg * sg)
                    d_i[j] = gc * sg * si * (one - si)
                    dcb[j] += gc * sf
                if peephole:
                    _peephole_input_grad(d_i, d_f, cib, dcb, peep, d_peep, i)
                for q in range(4 * i):
                    db[q] += db_[q]
            _bn_grad(d, n_h, var_h[0], gamma_h, d_ha, scratch, d_gamma_h, d_beta_h, one)

        return lstm_bn_cell, lstm_bn_cell_grad

    @functools.cache
    def gru_bn_kernels(flags: int) -> tuple:
        """``(gru_bn_cell, gru_bn_cell_grad)`` for the options of ``flags`` (``CLOCK |
        POPULATION``), constants of the compiled code: the GRU option cell for ``CLOCK``."""
        population = bool(flags & POPULATION)
        gru_cell, gru_cell_grad = gru_options_kernels(flags & CLOCK)

        @numba.njit(**_SPECIALISED)
        def gru_bn_cell(ha, xa, bias, h_prev, gamma_h, k, mean_h, var_h, n_h, a, hn, h_new, h, scratch, one):
            """One batch-normalised GRU frame: ha = h_prev W_h [B][3i] normalised over the
            batch in place (γ_h n_h, n_h [B][3i] kept, statistics mean_h, var_h [R][3i]),
            then the cell of :func:`kernels.gru_options_cell` (the clock gate: CLOCK)."""
            if not population:
                _bn_stats(ha, mean_h[0], var_h[0], scratch, one)
            _bn_normalise(ha, mean_h, var_h, n_h, scratch, one)
            for b in range(ha.shape[0]):
                hab, nb = ha[b], n_h[b]
                for q in range(ha.shape[1]):
                    hab[q] = gamma_h[q] * nb[q]
            gru_cell(ha, xa, bias, h_prev, gamma_h, gamma_h, k, n_h, var_h[0], a, hn, h_new, h, one)

        @numba.njit(**_SPECIALISED)
        def gru_bn_cell_grad(dh, dh_out, a, h_in, hn, h_new, n_h, var_h, gamma_h, k, d, d_ha, dk, scratch, db,
                             d_gamma_h, d_beta_h, one):
            """Backward of :func:`gru_bn_cell` (training) for one frame: that of
            :func:`kernels.gru_options_cell_grad`, then d_ha [B][3i] through the norm (the
            gradient of h_prev W_h before it); d_gamma_h, d_beta_h [3i] summed (float64; the
            h path has no β, d_beta_h is a scratch sum)."""
            gru_cell_grad(dh, dh_out, a, h_in, hn, h_new, n_h, var_h[0], gamma_h, k, d, d_ha, dk,
                          db, d_gamma_h, d_beta_h, one)
            _bn_grad(d_ha, n_h, var_h[0], gamma_h, d_ha, scratch, d_gamma_h, d_beta_h, one)

        return gru_bn_cell, gru_bn_cell_grad

    lstm_bn_cell = on_arrays(lstm_bn_kernels, 0, "lstm_bn_cell")
    lstm_bn_cell_grad = on_arrays(lstm_bn_kernels, 1, "lstm_bn_cell_grad")
    gru_bn_cell = on_arrays(gru_bn_kernels, 0, "gru_bn_cell")
    gru_bn_cell_grad = on_arrays(gru_bn_kernels, 1, "gru_bn_cell_grad")
