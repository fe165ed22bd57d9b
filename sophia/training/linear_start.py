"""The linear start of a net with ``input_skip``: training begins at the least-squares fit.

A net with ``ModelOptions.input_skip`` adds a linear map of each input frame to its
output layer's pre-activation (:mod:`sophia.graph.net`). A new run (not one loaded
with ``--load_from`` or resumed) starts it at the least-squares regression of the
training split's target frames on their input frames, with an intercept, and
zeroes the output layer's weights. The net's first output is then exactly that
linear model, a linear autoregression when the frames carry lags, and the
recurrent layers learn what it leaves; the annealer's epoch 0 scores it on dev,
so the best model kept is never worse there than the linear fit. The output
layer's bias holds the intercept and the residuals' spread, per layout
(:mod:`sophia.graph.output_layout`):

==================  =========================================================
identity            the intercept
gaussian            mean: the intercept; log-variance: log of the residuals'
                    mean square (the maximum-likelihood Gaussian of the fit)
quantile            level 0: intercept + the residuals' q_0 quantile; each next
                    level's raw value: softplus⁻¹ of the gap to the one below
                    (floored at 1e-6), so every level starts at the residuals'
==================  =========================================================

Each target element has its own regression, over the frames where it is not NaN.

- :func:`least_squares` -- per target element, weights [J][k], intercepts [k] and
  the residuals of the fit.
- :func:`start_linear` -- set a net's ``input_skip`` and output layer from a dataset.

Example
-------
>>> import numpy as np
>>> x_nj = np.arange(10.0)[:, None]
>>> w_jk, b_k, residuals = least_squares([(x_nj, 3 * x_nj - 1)])
>>> np.round(w_jk, 6).tolist(), np.round(b_k, 6).tolist(), float(np.abs(residuals[0]).max()) < 1e-9
([[3.0]], [-1.0], True)
"""
from __future__ import annotations

import numpy as np

from sophia.graph.output_layout import num_channels

SMALLEST_GAP = 1e-6          # the least gap between two quantile levels at the start
RIDGE = 1e-9                 # relative ridge on the normal equations, for collinear inputs


def least_squares(pairs) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Least squares with an intercept of each target element on the input frames.

    ``pairs``: a sequence of (input [T][J], target [T][k]) pairs, read twice (once
    for the normal equations, once for the residuals), NaN where a target element
    has no value. Returns ``(w_jk, b_k, residuals)``, float64: residuals[e] holds the
    errors of element e's fit on its non-NaN frames. An element without any value
    gets zero weights and intercept.
    """
    gram, moment = None, None
    for input_tj, target_tk in pairs:
        x_tJ = np.concatenate([np.asarray(input_tj, np.float64), np.ones((len(input_tj), 1))], axis=1)
        target_tk = np.asarray(target_tk, np.float64)
        if gram is None:
            k, big_j = target_tk.shape[1], x_tJ.shape[1]
            gram, moment = np.zeros((k, big_j, big_j)), np.zeros((k, big_j))
        for e in range(target_tk.shape[1]):
            valid = ~np.isnan(target_tk[:, e])
            gram[e] += x_tJ[valid].T @ x_tJ[valid]
            moment[e] += x_tJ[valid].T @ target_tk[valid, e]
    coef_kJ = np.zeros(moment.shape)
    for e in range(len(gram)):
        if gram[e][-1, -1] > 0:                       # the count of element e's values
            ridge = RIDGE * np.trace(gram[e]) / len(gram[e]) * np.eye(len(gram[e]))
            coef_kJ[e] = np.linalg.lstsq(gram[e] + ridge, moment[e], rcond=None)[0]
    residuals = [[] for _ in range(len(gram))]
    for input_tj, target_tk in pairs:
        fit_tk = np.asarray(input_tj, np.float64) @ coef_kJ[:, :-1].T + coef_kJ[:, -1]
        error_tk = np.asarray(target_tk, np.float64) - fit_tk
        for e in range(error_tk.shape[1]):
            residuals[e].append(error_tk[~np.isnan(error_tk[:, e]), e])
    return coef_kJ[:, :-1].T, coef_kJ[:, -1], [np.concatenate(r) for r in residuals]


def start_linear(net, dataset) -> dict:
    """Set ``net``'s ``input_skip`` and output layer so that it outputs the least-squares
    fit of ``dataset``'s targets on its input frames (the module docstring).

    Side effect: changes ``input_skip``, ``output.b`` and ``output.W`` (with
    ``weight_norm``, its gain ``output.W_g``) to zero.
    Returns ``{"weights": w_jk, "intercepts": b_k, "rms": residual RMS [k]}``.
    Raises ValueError for a net without ``input_skip``.
    """
    options = net.options
    if not options.input_skip:
        raise ValueError("start_linear needs a net with input_skip")
    pairs = [(dataset.input(i), dataset.target(i)) for i in range(len(dataset))]
    w_jk, b_k, residuals = least_squares(pairs)
    k, count = options.target_dim, num_channels(options)
    skip_jK = np.zeros((options.input_dim, k * count))
    bias_K = np.zeros(k * count)
    skip_jK[:, :k] = w_jk
    rms_k = np.array([np.sqrt(np.mean(r ** 2)) if len(r) else 1.0 for r in residuals])
    if options.output_activation == "gaussian":
        bias_K[:k] = b_k
        bias_K[k:] = np.log(np.maximum(rms_k ** 2, 1e-12))
    elif options.output_activation == "quantile":
        levels_ck = np.array([[np.quantile(r, q) if len(r) else 0.0 for r in residuals]
                              for q in options.quantiles])
        bias_K[:k] = b_k + levels_ck[0]
        gaps_ck = np.maximum(np.diff(levels_ck, axis=0), SMALLEST_GAP)
        bias_K[k:] = (gaps_ck + np.log(-np.expm1(-gaps_ck))).ravel()    # softplus⁻¹
    else:
        bias_K[:k] = b_k
    values = net.get_values()
    values.update({"input_skip": skip_jK, "output.b": bias_K})
    weight = "output.W_g" if "output.W_g" in values else "output.W"   # weight norm: its gain
    values[weight] = np.zeros_like(values[weight])
    net.set_values(values)
    return dict(weights=w_jk, intercepts=b_k, rms=rms_k)
