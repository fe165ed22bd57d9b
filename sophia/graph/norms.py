"""Normalizations of a layer's paths: weight, layer and recurrent batch norm.

- :func:`weight_norm`  — W = V · g / ‖V‖ per output column (Salimans & Kingma 2016).
- :class:`LayerNorm`   — normalise each frame over its units (Ba et al. 2016).
- :class:`BatchNorm`   — normalise each unit over the batch, with separate
  population statistics per time step (Cooijmans et al. 2016).

Each returns plain symbolic expressions; parameters are registered by the caller.
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt

from sophia.graph.init import fixed_shared

EPSILON = 1e-5


def _epsilon(s_x):
    """EPSILON in ``s_x``'s dtype: a Python float would make a float32 graph float64."""
    return np.asarray(EPSILON, dtype=s_x.dtype)


def weight_norm(v_V_jg, v_g_g):
    """Weight-normalised matrix [j][g]: each column of ``v_V_jg`` scaled to norm ``v_g_g``."""
    s_sq_norm_g = tt.sum(tt.sqr(v_V_jg), axis=0)
    return v_V_jg * (v_g_g / tt.sqrt(s_sq_norm_g + _epsilon(s_sq_norm_g)))


class LayerNorm:
    """Layer normalization over the last axis, with learned gain and bias.

    Parameters live in ``v_params`` under ``<name>.gamma`` and ``<name>.beta``.
    """

    def __init__(self, name: str, width: int, dtype: str):
        self.v_params = {
            f"{name}.gamma": fixed_shared(np.ones(width, dtype), f"{name}.gamma"),
            f"{name}.beta": fixed_shared(np.zeros(width, dtype), f"{name}.beta"),
        }
        self.v_gamma_g, self.v_beta_g = self.v_params.values()

    def __call__(self, s_a):
        """Normalised ``s_a`` (any shape [..][g])."""
        mean = tt.mean(s_a, axis=-1, keepdims=True)
        var = tt.mean(tt.sqr(s_a - mean), axis=-1, keepdims=True)
        return (s_a - mean) / tt.sqrt(var + _epsilon(var)) * self.v_gamma_g + self.v_beta_g


class BatchNorm:
    """Recurrent batch normalization with per-time-step population statistics.

    In training the statistics are the batch's, per frame: this needs the streams of
    a minibatch synchronized, so frame t is the same time step in every stream. At
    inference each stream reads the population statistics of its own time step
    (the time signal, clipped to ``steps − 1``).

    ``v_params``: ``<name>.gamma`` (init 0.1) and, if ``with_beta``, ``<name>.beta``
    (also ``v_gamma_g`` and ``v_beta_g``, None without β).
    ``v_buffers``: ``<name>.pop_mean`` and ``<name>.pop_var``, both [steps][g].
    """

    def __init__(self, name: str, width: int, steps: int, momentum: float, dtype: str,
                 with_beta: bool = False):
        self.name, self.steps, self.momentum = name, steps, momentum
        self.v_params = {f"{name}.gamma": fixed_shared(np.full(width, 0.1, dtype), f"{name}.gamma")}
        if with_beta:
            self.v_params[f"{name}.beta"] = fixed_shared(np.zeros(width, dtype), f"{name}.beta")
        self.v_gamma_g, self.v_beta_g = self.v_params[f"{name}.gamma"], self.v_params.get(f"{name}.beta")
        self.v_buffers = {
            f"{name}.pop_mean": fixed_shared(np.zeros((steps, width), dtype), f"{name}.pop_mean"),
            f"{name}.pop_var": fixed_shared(np.ones((steps, width), dtype), f"{name}.pop_var"),
        }

    def __call__(self, s_a, s_step, training: bool):
        """Normalise ``s_a`` of shape [..][B][g] over its batch axis (−2).

        ``s_step`` is the int time-step index of each stream, shape [..][B].
        Returns ``(s_normalised, s_mean, s_var)``; in training the statistics are the
        batch's ([..][1][g], to be handed to :meth:`population_updates`), at
        inference they are the population's and the last two are None.
        """
        if training:
            mean = tt.mean(s_a, axis=-2, keepdims=True)
            var = tt.mean(tt.sqr(s_a - mean), axis=-2, keepdims=True)
        else:
            mean_sg, var_sg = self.v_buffers.values()
            mean, var = mean_sg[s_step], var_sg[s_step]
        out = (s_a - mean) / tt.sqrt(var + _epsilon(var)) * self.v_params[f"{self.name}.gamma"]
        if f"{self.name}.beta" in self.v_params:
            out = out + self.v_params[f"{self.name}.beta"]
        return (out, mean, var) if training else (out, None, None)

    def population_updates(self, s_mean_tg, s_var_tg, s_step_t) -> dict:
        """Running-average updates of the population statistics.

        ``s_mean_tg``/``s_var_tg``: batch statistics per frame [T][g]; ``s_step_t``: the
        time step of each frame [T] (int). Returns ``{v_buffer: new_value}``.
        """
        updates = {}
        for v_pop, s_stat in zip(self.v_buffers.values(), (s_mean_tg, s_var_tg)):
            old = v_pop[s_step_t]
            updates[v_pop] = tt.set_subtensor(old, old + self.momentum * (s_stat - old))
        return updates


def step_index(s_time_tb, steps: int):
    """Int time-step index [T][B] of each frame for batch-norm statistics."""
    return tt.cast(tt.clip(tt.round(s_time_tb), 0, steps - 1), "int32")
