"""The reference engine: a recurrent layer's own step function, frame by frame.

The step (:meth:`RecurrentLayer._step`: the unit's gates, peepholes and inner
norms) runs under ``scan``, or as one unrolled graph with ``unroll``; around it,
the reset to the initial state at frames whose time signal is ≤ 0, the clock
gate's leaky update and the batch-norm statistics of every frame. Every option
runs here, and every other engine is tested against it
(``tests/test_engines.py``).
"""
from __future__ import annotations

import pytensor.tensor as tt

from sophia.graph.norms import BatchNorm
from sophia.graph.recurrence import recur

NAME = "scan"


def supports(layer, *, training: bool, unroll: bool) -> str:
    """'' : the reference runs every layer."""
    return ""


def recurrence(layer, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame: int, training: bool,
               unroll: bool = False):
    """``(s_h_tbi, s_next_states, updates)``: every frame's output [T][B][i], the states
    at ``carry_frame`` (each [B][width]) and the population-statistics updates of
    batch norm (training only)."""
    stats = []
    s_step_tb = layer._step_index(s_time_tb)
    frames = {
        "xa": layer._project(s_below_tbj, layer.s_W_x_jg, layer.v_b_g, layer.norm_x, s_step_tb, training, stats),
        "reset": (s_time_tb <= 0)[:, :, None],
    }
    if layer.gate is not None:
        frames["gate"] = layer.gate.openness(s_time_tb, training)
    if s_step_tb is not None:
        frames["bn_step"] = s_step_tb
    n_states, names = len(layer.state_names), list(frames)
    inner = [layer.norms[k] for k in layer.inner_norms if isinstance(layer.norms.get(k), BatchNorm)]
    n_stats = 2 * len(inner) if training else 0

    def step(*args):
        frame = dict(zip(names, args[:len(names)]))
        prev = [tt.switch(frame["reset"], s0, s) for s0, s in zip(layer.initial, args[len(names):])]
        inner_stats = []
        new = layer._step(frame, prev, training, inner_stats)
        if frame.get("gate") is not None:
            k = frame["gate"]
            new = [k * s + (1.0 - k) * p for s, p in zip(new, prev)]
        return new + [x for _, mean, var in inner_stats for x in (mean, var)]

    outputs = recur(step, [frames[n] for n in names], s_prev_states, n_extras=n_stats,
                    unroll=unroll, n_steps=None if not unroll else _static_length(s_below_tbj))
    states_tbi, extras = outputs[:n_states], outputs[n_states:]
    stats += [(norm, extras[2 * n], extras[2 * n + 1]) for n, norm in enumerate(inner)] if training else []
    updates = layer._population_updates(stats, s_step_tb[:, 0]) if stats else {}
    return states_tbi[0], [s[carry_frame] for s in states_tbi], updates


def _static_length(s_tbj) -> int:
    length = s_tbj.type.shape[0]
    if length is None:
        raise ValueError("unroll_scan needs a window of static length: build the input "
                         "port with a fixed time dimension")
    return length
