"""How a recurrence runs: one registry of engines, and the one function that chooses.

Every engine computes the same function of a recurrent layer's window (states
reset at frames whose time signal is ≤ 0, the states at ``carry_frame`` stored
for the next window); they differ in speed, in what they support, and in how
they compile:

=========  ===================================================================
``scan``   the reference: the layer's step function under ``scan`` (or unrolled);
           every option (:mod:`~sophia.graph.engines.scan`)
``fused``  one Op per window and one for its gradient, native cell kernels;
           LSTM and GRU with every option
           (:mod:`~sophia.graph.engines.fused`; peepholes, layer norm and the
           clock gate: :mod:`~sophia.graph.engines.fused_options`; batch norm:
           :mod:`~sophia.graph.engines.fused_bn`)
``onednn`` an LSTM training window on oneDNN's RNN primitive, small windows on
           the fused Ops' code (:mod:`~sophia.graph.engines.onednn_lstm`)
=========  ===================================================================

Each engine module has ``NAME``, ``supports(layer, training=, unroll=) -> reason``
('' where it runs the layer) and ``recurrence(layer, s_below_tbj, s_time_tb,
s_prev_states, carry_frame=, training=, unroll=) -> (s_h_tbi, s_next_states,
updates)``. :func:`choose` picks, per layer, the fastest engine that supports it
(``bench/train_speed.py`` and ``bench/lstm_engines.py`` measure them); the graph
builders pass the choice to each layer, and the trainer logs it
(:func:`describe`). ``tests/test_engines.py`` checks every engine against scan.

An engine receives its layer's whole input sequence ``s_below_tbj`` as a symbolic
input and its gradient flows back through it, so whatever the net does between
layers (training noise: dropout, input noise; :mod:`sophia.graph.noise`) runs
outside the recurrence and with every engine (``tests/test_regularisation.py``).

Example
-------
>>> from sophia.graph.net import Net                           # doctest: +SKIP
>>> net = Net(ModelOptions(input_dim=3, target_dim=1, peephole=True))  # doctest: +SKIP
>>> describe(net.choose_engines("auto", training=True))        # doctest: +SKIP
'layer 0: fused (peephole); layer 1: fused (peephole)'
"""
from __future__ import annotations

import os
from typing import NamedTuple

from sophia.graph.engines import fused, onednn_lstm, scan

ENGINES = {engine.NAME: engine for engine in (scan, fused, onednn_lstm)}
PREFERENCE = ("onednn", "fused", "scan")      # fastest first
OVERRIDE_VARIABLE = "SOPHIA_ENGINE"           # benchmarks only: prefer this engine where it runs


class Choice(NamedTuple):
    """The engine of one layer and why the faster ones were passed over ('' if none was)."""

    engine: str
    reason: str


def choose(layer, mode_name: str, *, training: bool, unroll: bool = False,
           prefer: str | None = None) -> Choice:
    """The engine for a recurrent ``layer`` in a graph compiled in ``mode_name``.

    The first of :data:`PREFERENCE` that supports the layer, starting at ``prefer``
    (an engine name; default: the environment's ``SOPHIA_ENGINE``, else the
    fastest). ``unroll`` and the JAX mode (which runs no Python Op) take scan.
    Raises ValueError for an unknown engine name.
    """
    prefer = prefer or os.environ.get(OVERRIDE_VARIABLE) or PREFERENCE[0]
    if prefer not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {prefer!r}")
    if mode_name == "JAX":
        return Choice("scan", "JAX mode")
    reasons = []
    for name in PREFERENCE[PREFERENCE.index(prefer):]:
        reason = ENGINES[name].supports(layer, training=training, unroll=unroll)
        if not reason:
            return Choice(name, reasons[0] if reasons else "")
        reasons.append(reason)
    raise AssertionError("the scan engine supports every layer")


def describe(choices) -> str:
    """``'layer 0: onednn; layer 1: scan (peephole)'`` for a list of :class:`Choice`."""
    return "; ".join(f"layer {n}: {c.engine}" + (f" ({c.reason})" if c.reason else "")
                     for n, c in enumerate(choices))
