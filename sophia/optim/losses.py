"""Losses over windows with missing targets: regression (l2, l1, huber),
categorical (xent, bce) and probabilistic (gaussian, quantile).

A NaN target element means "no target here": it contributes nothing to the loss
or its gradient. Losses are summed over target elements and reported per *target
frame* (a frame of one stream with at least one target element), so figures
compare across batch sizes, windows and tasks that give a target only at the
last frame.

The categorical losses take the output layer's *logits* (before the output
activation) and are computed in the stable forms:

- ``xent``: softmax cross-entropy ``-Σ_k t_k · log_softmax(z)_k`` per target frame
  against a one-hot target frame; an all-NaN frame has no target. With label
  smoothing ε the target is ``(1 − ε) t + ε / k`` (Szegedy et al. 2016, §7), which
  keeps the logits finite at the optimum.
- ``bce``: binary cross-entropy of independent sigmoids, ``softplus(z) − t·z`` per
  target element in {0, 1} (= ``−t log σ(z) − (1−t) log(1−σ(z))``); NaN elements
  are masked as in the regression losses.

The probabilistic losses take the channel-major outputs of
:mod:`sophia.graph.output_layout` ([T][B][C·k]) and a target [T][B][k]:

- ``gaussian``: the negative log-likelihood of a normal distribution with mean μ
  and log-variance s, ``½ (log 2π + s + (t − μ)² e^(−s))`` per target element (the
  ``½ log 2π`` constant included, so the figure is the true NLL in nats); using s,
  not σ, keeps it free of divisions and logs of small numbers.
- ``quantile``: the pinball loss ``max(τ u, (τ − 1) u)``, u = t − q_τ, averaged over
  the Q levels τ and summed over target elements (so with the one level 0.5 it is
  half the absolute error).

:func:`masked_hits` counts what they get right (argmax for xent, σ(z) > 0.5 for bce).

Example
-------
>>> import pytensor as th, pytensor.tensor as tt, numpy as np
>>> y, t = tt.tensor3(), tt.tensor3()
>>> f = th.function([y, t], masked_loss(y, t, "l2"))
>>> total, frames = f(np.zeros((2, 1, 1)), np.array([[[np.nan]], [[2.0]]]))
>>> float(total), float(frames)
(4.0, 1.0)
"""
from __future__ import annotations

import math

import pytensor.tensor as tt
from pytensor.tensor.special import log_softmax


def _l2(s_err, delta):
    return tt.sqr(s_err)


def _l1(s_err, delta):
    return tt.abs(s_err)


def _huber(s_err, delta):
    a = tt.abs(s_err)
    return tt.switch(a <= delta, 0.5 * tt.sqr(s_err), delta * (a - 0.5 * delta))


LOSSES = {"l2": _l2, "l1": _l1, "huber": _huber}
CATEGORICAL = ("xent", "bce")
PROBABILISTIC = ("gaussian", "quantile")
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def masked_loss(s_output_tbk, s_target_tbk, loss_type: str, huber_delta: float = 1.0,
                quantiles=(), label_smoothing: float = 0.0):
    """Summed loss over the target elements that are not NaN, and the number of target frames.

    Parameters
    ----------
    s_output_tbk, s_target_tbk : tensors [T][B][k]; for xent and bce, ``s_output_tbk``
        are the logits (the output activation is part of the loss); for gaussian
        and quantile, ``s_output_tbk`` is [T][B][C·k], channel-major
    loss_type : 'l2' (squared error), 'l1' (absolute error), 'huber', 'xent', 'bce',
        'gaussian' or 'quantile'
    quantiles : the levels of the quantile channels, ascending (loss_type quantile)
    label_smoothing : ε of the smoothed one-hot target (loss_type xent; 0: none)

    Returns
    -------
    (s_loss_sum, s_n_frames): scalars; the loss per target frame is their ratio.
    """
    if loss_type not in LOSSES and loss_type not in CATEGORICAL + PROBABILISTIC:
        raise ValueError(f"loss_type must be one of {', '.join((*LOSSES, *CATEGORICAL, *PROBABILISTIC))}; "
                         f"got {loss_type!r}")
    if loss_type == "gaussian":
        return _gaussian(s_output_tbk, s_target_tbk)
    if loss_type == "quantile":
        return _pinball(s_output_tbk, s_target_tbk, quantiles)
    if loss_type == "xent":
        return _xent(s_output_tbk, s_target_tbk, label_smoothing)
    if loss_type == "bce":
        return _bce(s_output_tbk, s_target_tbk)
    s_valid, s_err = _masked_error(s_output_tbk, s_target_tbk)
    s_elementwise = tt.switch(s_valid, LOSSES[loss_type](s_err, huber_delta), 0.0)
    s_n_frames = tt.sum(tt.any(s_valid, axis=-1)).astype(s_output_tbk.dtype)
    return tt.sum(s_elementwise), s_n_frames


def _xent(s_logit_tbk, s_target_tbk, label_smoothing=0.0):
    s_valid_tb = tt.any(~tt.isnan(s_target_tbk), axis=-1)
    s_target = tt.switch(tt.isnan(s_target_tbk), 0.0, s_target_tbk)
    if label_smoothing:
        k = s_target_tbk.shape[-1].astype(s_logit_tbk.dtype)
        s_target = (1.0 - label_smoothing) * s_target + label_smoothing / k
    s_loss_tb = -tt.sum(s_target * log_softmax(s_logit_tbk, axis=-1), axis=-1)
    s_n_frames = tt.sum(s_valid_tb).astype(s_logit_tbk.dtype)
    return tt.sum(tt.switch(s_valid_tb, s_loss_tb, 0.0)), s_n_frames


def _bce(s_logit_tbk, s_target_tbk):
    s_valid = ~tt.isnan(s_target_tbk)
    s_target = tt.switch(s_valid, s_target_tbk, 0.0)
    s_elementwise = tt.switch(s_valid, tt.softplus(s_logit_tbk) - s_target * s_logit_tbk, 0.0)
    s_n_frames = tt.sum(tt.any(s_valid, axis=-1)).astype(s_logit_tbk.dtype)
    return tt.sum(s_elementwise), s_n_frames


def _gaussian(s_output_tbK, s_target_tbk):
    k = s_target_tbk.shape[-1]
    s_valid, s_err = _masked_error(s_output_tbK[:, :, :k], s_target_tbk)
    s_logvar = tt.switch(s_valid, s_output_tbK[:, :, k:2 * k], 0.0)
    s_nll = HALF_LOG_2PI + 0.5 * (s_logvar + tt.sqr(s_err) * tt.exp(-s_logvar))
    s_n_frames = tt.sum(tt.any(s_valid, axis=-1)).astype(s_output_tbK.dtype)
    return tt.sum(tt.switch(s_valid, s_nll, 0.0)), s_n_frames


def _pinball(s_output_tbK, s_target_tbk, quantiles):
    if not len(quantiles):
        raise ValueError("loss_type quantile needs the quantile levels")
    k = s_target_tbk.shape[-1]
    s_total = 0.0
    for c, tau in enumerate(quantiles):
        s_valid, s_err = _masked_error(s_output_tbK[:, :, c * k:(c + 1) * k], s_target_tbk)
        s_total = s_total + tt.maximum(-tau * s_err, (1.0 - tau) * s_err)  # u = −err
    s_loss = tt.switch(s_valid, s_total, 0.0) / len(quantiles)
    s_n_frames = tt.sum(tt.any(s_valid, axis=-1)).astype(s_output_tbK.dtype)
    return tt.sum(s_loss), s_n_frames


def masked_hits(s_logit_tbk, s_target_tbk, loss_type: str):
    """``(s_n_correct, s_n_judged)`` of a categorical loss, in the logits' dtype.

    xent: target frames (not all NaN) whose argmax output is the target's class;
    bce: target elements (not NaN) where ``σ(z) > 0.5`` equals ``t = 1``.
    Accuracy is their ratio.
    """
    dtype = s_logit_tbk.dtype
    if loss_type == "xent":
        s_valid_tb = tt.any(~tt.isnan(s_target_tbk), axis=-1)
        s_target = tt.switch(tt.isnan(s_target_tbk), -1.0, s_target_tbk)
        s_right_tb = tt.eq(tt.argmax(s_logit_tbk, axis=-1), tt.argmax(s_target, axis=-1))
        return tt.sum(s_valid_tb & s_right_tb).astype(dtype), tt.sum(s_valid_tb).astype(dtype)
    if loss_type == "bce":
        s_valid = ~tt.isnan(s_target_tbk)
        s_right = tt.eq(s_logit_tbk > 0, tt.switch(s_valid, s_target_tbk, 0.0) > 0.5)
        return tt.sum(s_valid & s_right).astype(dtype), tt.sum(s_valid).astype(dtype)
    raise ValueError(f"accuracy needs loss_type xent or bce; got {loss_type!r}")


def masked_max_error(s_output_tbk, s_target_tbk):
    """Largest absolute error over the target elements that are not NaN (0 if none).

    The 1997 LSTM paper counts a sequence as wrong when its error exceeds 0.04 and
    stops training once every recent sequence is right: this is that measure.

    Parameters
    ----------
    s_output_tbk, s_target_tbk : tensors [T][B][k]

    Returns
    -------
    s_max_error : scalar, >= 0
    """
    return tt.max(tt.abs(_masked_error(s_output_tbk, s_target_tbk)[1]))


def _masked_error(s_output_tbk, s_target_tbk):
    """``(s_valid, s_err)``: where the target is not NaN, and output − target there (0
    elsewhere; the inner switch keeps NaN out of the gradient)."""
    s_valid = ~tt.isnan(s_target_tbk)
    return s_valid, tt.switch(s_valid, s_output_tbk - tt.switch(s_valid, s_target_tbk, 0.0), 0.0)
