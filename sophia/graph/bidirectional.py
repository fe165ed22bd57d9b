"""Bidirectional layers: a forward and a backward recurrence, outputs side by side.

A :class:`BidirectionalLayer` holds two recurrent layers of the same unit and
width: ``forward`` reads each sequence from its first frame to its last (its
parameters have the unidirectional names, ``layer0.W_x``), ``backward`` from
its last frame to its first (``layer0.backward.W_x``). Its output [T][B][2·i]
is the forward output [T][B][i] followed by the backward one, frame by frame,
so the layer above (or the output layer) sees ``2·net_width`` units.

The rule of the backward direction, per stream of a window:

- a *sequence* is a run of frames from a reset frame (time signal ≤ 0, or the
  window's first frame) up to the frame before the next reset frame (or the
  window's last frame); each padding frame (time −1) is a sequence of its own;
- every sequence is reversed in place (:func:`reversal_index`), so the backward
  recurrence starts at the sequence's last real frame, from the initial state:
  its time signal there is 0 and elsewhere the time left to that last frame
  (:func:`backward_time`), which also drives the clock gate;
- it runs on the engine chosen for the forward direction (the two are the same
  unit with the same options and sizes), and its output is put back in the
  forward order by the same index (the reversal is its own inverse).

The backward direction carries no state between windows (it always starts from
the initial state), so a bidirectional layer is right only where every window
holds whole sequences: training needs ``step_size = window_size`` at least the
longest sequence (:func:`sophia.options.validate_training`, the trainer's data
check), evaluation runs whole sequences, and the server refuses such models.

Example
-------
>>> import numpy as np, pytensor as th, pytensor.tensor as tt
>>> s_time_tb = tt.matrix()
>>> f = th.function([s_time_tb], reversal_index(s_time_tb))
>>> f(np.array([[0.], [1.], [2.], [0.], [1.], [-1.]])).ravel().tolist()
[2, 1, 0, 4, 3, 5]
"""
from __future__ import annotations

import pytensor.tensor as tt

from sophia.graph.layers import Layer, LayerOutput


def sequence_bounds(s_time_tb):
    """``(s_first_tb, s_last_tb)``, int64 [T][B]: the first and the last frame of the
    sequence each frame belongs to, in its stream (the sequences as the module
    docstring defines them)."""
    s_steps, s_batch = s_time_tb.shape[0], s_time_tb.shape[1]
    s_zeros_tb = tt.zeros_like(s_time_tb, dtype="int64")
    s_t_tb = tt.arange(s_steps, dtype="int64")[:, None] + s_zeros_tb
    s_b_tb = tt.arange(s_batch, dtype="int64")[None, :] + s_zeros_tb
    s_start_tb = tt.or_(s_time_tb <= 0, tt.eq(s_t_tb, 0))
    s_end_tb = tt.concatenate([s_start_tb[1:], tt.ones_like(s_start_tb[:1])], axis=0)
    s_seq_tb = tt.cumsum(s_start_tb.astype("int64"), axis=0) - 1    # sequence number in its stream
    # row n: sequence n of each stream (at most T of them), summing the one frame index
    # that marks its first (last) frame
    s_first_by_seq_tb = tt.inc_subtensor(s_zeros_tb[s_seq_tb, s_b_tb], s_t_tb * s_start_tb)
    s_last_by_seq_tb = tt.inc_subtensor(s_zeros_tb[s_seq_tb, s_b_tb], s_t_tb * s_end_tb)
    return s_first_by_seq_tb[s_seq_tb, s_b_tb], s_last_by_seq_tb[s_seq_tb, s_b_tb]


def reversal_index(s_time_tb):
    """The frame each frame of a window takes its value from when every sequence is
    reversed in place: int64 [T][B], ``first + last - t`` for frame t of a sequence
    spanning frames first..last (:func:`sequence_bounds`). Its own inverse."""
    s_first_tb, s_last_tb = sequence_bounds(s_time_tb)
    s_t_tb = tt.arange(s_time_tb.shape[0], dtype="int64")[:, None]
    return s_first_tb + s_last_tb - s_t_tb


def reverse_sequences(s_x, s_index_tb):
    """``s_x`` [T][B] or [T][B][...] read at frame ``s_index_tb[t, b]`` of stream b
    (with :func:`reversal_index`: every sequence reversed in place)."""
    s_b_tb = tt.arange(s_index_tb.shape[1], dtype="int64")[None, :] + tt.zeros_like(s_index_tb)
    return s_x[s_index_tb, s_b_tb]


def backward_time(s_time_tb):
    """The time signal of the reversed window [T][B]: at each frame, the time from the
    frame it holds to the last frame of its sequence. It is 0 at the first frame the
    backward direction reads (a reset) and, for strictly increasing times, positive
    after; a padding frame is a sequence of its own (0)."""
    _, s_last_tb = sequence_bounds(s_time_tb)
    return reverse_sequences(s_time_tb, s_last_tb) - reverse_sequences(s_time_tb, reversal_index(s_time_tb))


class BidirectionalLayer(Layer):
    """A forward and a backward recurrent layer of one unit, outputs concatenated.

    Parameters
    ----------
    name : prefix of every parameter name (the backward layer's: ``name.backward``)
    unit_layer : the RecurrentLayer class of both directions
    input_dim : width j of what comes in
    width : width i of each direction (the layer's output is 2·i wide)
    options, rng, dtype : as for :class:`~sophia.graph.layers.Layer`
    residual : apply the residual gate to the 2·i outputs (the Net sets it where
        the input is 2·i wide); the directions have none of their own

    ``state_widths`` are the forward direction's: only it has stored states (the
    backward direction starts every sequence from its initial state).
    """

    def __init__(self, name, unit_layer, input_dim, width, options, rng, dtype, residual=False):
        super().__init__(name, input_dim, 2 * width, options, rng, dtype, residual)
        self.unit = unit_layer.unit
        self.forward = unit_layer(name, input_dim, width, options, rng, dtype)
        self.backward = unit_layer(f"{name}.backward", input_dim, width, options, rng, dtype)
        self.state_widths = self.forward.state_widths
        for direction in (self.forward, self.backward):
            self.v_params.update(direction.v_params)
            self.v_buffers.update(direction.v_buffers)

    def build(self, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame, training,
              engine="scan", unroll=False, s_skip_tbi=None):
        """Both directions run by ``engine``; the states at ``carry_frame`` are the
        forward direction's (see :class:`BidirectionalLayer`)."""
        fwd = self.forward.build(s_below_tbj, s_time_tb, s_prev_states, carry_frame=carry_frame,
                                 training=training, engine=engine, unroll=unroll)
        s_rev_tb = reversal_index(s_time_tb)
        s_zero_states = [tt.zeros((s_below_tbj.shape[1], w), dtype=self.dtype)
                         for w in self.backward.state_widths]
        bwd = self.backward.build(reverse_sequences(s_below_tbj, s_rev_tb), backward_time(s_time_tb),
                                  s_zero_states, carry_frame=carry_frame, training=training,
                                  engine=engine, unroll=unroll)
        s_out_tbi = tt.concatenate([fwd.s_output_tbi, reverse_sequences(bwd.s_output_tbi, s_rev_tb)], axis=2)
        return LayerOutput(self._residual(s_out_tbi, s_skip_tbi), fwd.s_next_states,
                           {**fwd.updates, **bwd.updates})
