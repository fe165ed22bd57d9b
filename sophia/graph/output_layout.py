"""The output layout: how many values a net gives per target element, and what they are.

A point model (``output_activation`` identity, softmax or sigmoid) gives one value per
target element. A probabilistic model gives C *channels* per target element:

==================  ===  =====================================================
output_activation   C    channels, in order
==================  ===  =====================================================
``gaussian``        2    mean μ, log-variance s = log σ²
``quantile``        Q    the quantiles at ``quantiles`` (Q levels), ascending
==================  ===  =====================================================

The output frame is **channel-major**: its width is ``target_dim × C`` and value
``c·k + e`` is channel c of target element e (k = ``target_dim``), so the first k
values are the means (gaussian) or the lowest quantiles. This one layout is the
output of ``f_infer``, the server's reply and ``sophia-eval``'s ``.output`` files.

Quantiles never cross, by construction: the output layer's raw values z_c give
``q_0 = z_0`` and ``q_c = q_{c-1} + softplus(z_c)``, in training and serving alike
(float addition of a value ≥ 0 never decreases a number).

- :func:`num_channels`, :func:`channel_names`, :func:`point_channel` -- the layout of
  a :class:`~sophia.options.ModelOptions`.
- :func:`activate` -- the symbolic output activation of the probabilistic layouts.
- :func:`channels_tck` -- a numpy output [T][C·k] as [T][C][k].

Example
-------
>>> from sophia.options import ModelOptions
>>> o = ModelOptions(target_dim=2, output_activation="quantile", quantiles=(0.1, 0.5, 0.9))
>>> num_channels(o), channel_names(o), point_channel(o)
(3, ['q0.1', 'q0.5', 'q0.9'], 1)
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt

PROBABILISTIC = ("gaussian", "quantile")
GAUSSIAN_CHANNELS = ("mean", "log_variance")


def num_channels(options) -> int:
    """C: values per target element (1 for point models)."""
    if options.output_activation == "gaussian":
        return len(GAUSSIAN_CHANNELS)
    if options.output_activation == "quantile":
        return len(options.quantiles)
    return 1


def channel_names(options) -> list[str]:
    """Each channel's name: ``value``; ``mean, log_variance``; or ``q<level>``."""
    if options.output_activation == "gaussian":
        return list(GAUSSIAN_CHANNELS)
    if options.output_activation == "quantile":
        return [f"q{q:g}" for q in options.quantiles]
    return ["value"]


def point_channel(options) -> int:
    """The channel that is the point forecast: the mean (gaussian), the level nearest
    0.5 (quantile; the lower of two as near), the only one otherwise."""
    if options.output_activation == "quantile":
        return int(np.argmin([abs(q - 0.5) for q in options.quantiles]))
    return 0


def activate(s_z_tbK, options):
    """The probabilistic output activation of the output layer's raw values [T][B][C·k].

    gaussian: identity (μ and s are free). quantile: per target element, the first
    level free and each next one the previous plus ``softplus`` of its raw value, so
    the levels ascend. Returns a tensor of the same shape.
    """
    if options.output_activation != "quantile" or len(options.quantiles) == 1:
        return s_z_tbK
    k = options.target_dim
    levels = [s_z_tbK[:, :, :k]]
    for c in range(1, len(options.quantiles)):
        levels.append(levels[-1] + tt.softplus(s_z_tbK[:, :, c * k:(c + 1) * k]))
    return tt.concatenate(levels, axis=2)


def channel(s_output_tbK, options, c: int):
    """Channel ``c`` [T][B][k] of a symbolic output [T][B][C·k]."""
    k = options.target_dim
    return s_output_tbK[:, :, c * k:(c + 1) * k]


def channels_tck(output_tK: np.ndarray, num: int) -> np.ndarray:
    """A numpy output [T][C·k] as [T][C][k] (a view)."""
    output_tK = np.asarray(output_tK)
    return output_tK.reshape(output_tK.shape[0], num, output_tK.shape[1] // num)
