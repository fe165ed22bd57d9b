"""The Phased-LSTM time gate (Neil et al. 2016), for LSTM and GRU layers.

Each unit has a learned period τ, shift s and open ratio r_on. At time t its phase
is φ = ((t − s) mod τ) / τ and its openness

    k = 2φ / r_on          if φ < r_on / 2      (opening)
        2 − 2φ / r_on      if φ < r_on          (closing)
        α φ                otherwise            (closed, leaking α while training)

A layer then keeps k of its new state and 1 − k of its previous one. The gate
reads the time signal, so real timestamps work, not only frame indices; and since
it depends on time alone it is computed for the whole window outside the
recurrence.
"""
from __future__ import annotations

import numpy as np
import pytensor.tensor as tt

from sophia.graph.init import fixed_shared


class TimeGate:
    """Learned per-unit oscillation gate.

    ``v_params``: ``<name>.tau`` (init exp(U(period_lo, period_hi))),
    ``<name>.shift`` (init U(0, τ)) and ``<name>.r_on`` (init ``r_on``), each [i].
    """

    def __init__(self, name: str, width: int, options, rng: np.random.Generator, dtype: str):
        tau = np.exp(rng.uniform(options.clock_period_lo, options.clock_period_hi, width))
        values = {"tau": tau, "shift": rng.uniform(0.0, tau), "r_on": np.full(width, options.clock_r_on)}
        self.v_params = {f"{name}.{key}": fixed_shared(value.astype(dtype), f"{name}.{key}")
                         for key, value in values.items()}
        self.v_tau_i, self.v_shift_i, self.v_r_on_i = self.v_params.values()
        self.leak = options.clock_leak

    def openness(self, s_time_tb, training: bool):
        """Gate openness k of every unit at every frame, shape [T][B][i].

        The leak α applies only when ``training``; at inference a closed gate is shut.
        """
        tau = tt.abs(self.v_tau_i) + 1e-3
        r_on = tt.clip(tt.abs(self.v_r_on_i), 1e-3, 1.0)
        cycles = (s_time_tb[:, :, None] - self.v_shift_i) / tau
        phase = cycles - tt.floor(cycles)
        opening = 2.0 * phase / r_on
        closing = 2.0 - opening
        closed = self.leak * phase if training else tt.zeros_like(phase)
        return tt.switch(phase < 0.5 * r_on, opening, tt.switch(phase < r_on, closing, closed))
