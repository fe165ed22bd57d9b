"""Regression losses over windows with missing targets.

A NaN target element means "no target here": it contributes nothing to the loss
or its gradient. Losses are summed over target elements and reported per *target
frame* (a frame of one stream with at least one target element), so figures
compare across batch sizes, windows and tasks that give a target only at the
last frame.

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

import pytensor.tensor as tt


def _l2(s_err, delta):
    return tt.sqr(s_err)


def _l1(s_err, delta):
    return tt.abs(s_err)


def _huber(s_err, delta):
    a = tt.abs(s_err)
    return tt.switch(a <= delta, 0.5 * tt.sqr(s_err), delta * (a - 0.5 * delta))


LOSSES = {"l2": _l2, "l1": _l1, "huber": _huber}


def masked_loss(s_output_tbk, s_target_tbk, loss_type: str, huber_delta: float = 1.0):
    """Summed loss over the target elements that are not NaN, and the number of target frames.

    Parameters
    ----------
    s_output_tbk, s_target_tbk : tensors [T][B][k]
    loss_type : 'l2' (squared error), 'l1' (absolute error) or 'huber'

    Returns
    -------
    (s_loss_sum, s_n_frames): scalars; the loss per target frame is their ratio.
    """
    if loss_type not in LOSSES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSSES)}; got {loss_type!r}")
    s_valid, s_err = _masked_error(s_output_tbk, s_target_tbk)
    s_elementwise = tt.switch(s_valid, LOSSES[loss_type](s_err, huber_delta), 0.0)
    s_n_frames = tt.sum(tt.any(s_valid, axis=-1)).astype(s_output_tbk.dtype)
    return tt.sum(s_elementwise), s_n_frames


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
