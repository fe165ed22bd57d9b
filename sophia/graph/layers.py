"""Layers: the units a Net stacks. Each builds plain symbolic expressions.

The contract of a :class:`Layer`:

- it declares its learnable parameters in ``v_params`` (``{name: shared}``, names
  like ``layer0.W_x``), any non-learned state of its own in ``v_buffers``
  (batch-norm population statistics) and the widths of its recurrent state in
  ``state_widths`` (``()`` for FC, ``(i,)`` for GRU ``h``, ``(i, i)`` for LSTM ``h, c``);
- :meth:`Layer.build` takes the layer below's output [T][B][j], the time signal
  [T][B] and its previous stored state, and returns a :class:`LayerOutput`: its
  output [T][B][i], its state at ``carry_frame`` (the stored state for the next
  window) and the updates of its buffers.

A frame whose time signal is ≤ 0 starts a new sequence: the state entering that
frame is replaced by the initial state (learned, or zeros).

Gate layouts: LSTM ``[input, forget, output, candidate]``; GRU ``[reset, update, candidate]``;
the plain RNN has one block.

Example
-------
>>> import numpy as np, pytensor.tensor as tt
>>> from sophia.options import ModelOptions
>>> layer = LSTMLayer("layer0", 3, 4, ModelOptions(), np.random.default_rng(0), "float64")
>>> out = layer.build(tt.tensor3(), tt.matrix(), [tt.matrix(), tt.matrix()], carry_frame=0, training=True)
>>> out.s_output_tbi.ndim, len(out.s_next_states)
(3, 2)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytensor.tensor as tt

from sophia.graph.clock import TimeGate
from sophia.graph.engines import ENGINES
from sophia.graph.init import Uniform, fixed_shared, matrix_init, stacked
from sophia.graph.norms import BatchNorm, LayerNorm, step_index, weight_norm

ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": tt.tanh,
    "sigmoid": tt.sigmoid,
    "relu": lambda x: tt.maximum(x, 0.0),
    "elu": lambda x: tt.switch(x > 0, x, tt.expm1(x)),
    "softplus": tt.softplus,
}


@dataclass
class LayerOutput:
    """What :meth:`Layer.build` returns.

    s_output_tbi : output sequence [T][B][i]
    s_next_states : the layer's states at ``carry_frame``, each [B][width]
    updates : ``{v_buffer: new_value}`` to apply when the graph runs (training only)
    """

    s_output_tbi: object
    s_next_states: list
    updates: dict = field(default_factory=dict)


class Layer:
    """Base class: parameter registry, weight construction, norms, residual gate.

    Parameters
    ----------
    name : prefix of every parameter name
    input_dim : width j of what comes in (the layer below, plus any ID embedding)
    width : width i of the layer's output
    options : sophia.options.ModelOptions (read, never changed)
    rng : numpy Generator used for initialisation
    dtype : 'float32' (training, serving) or 'float64' (gradient checks)
    residual : apply the residual gate (the Net sets it where widths match)
    """

    unit = ""                    # the unit_type it implements ("fc", "lstm", "gru")
    state_widths: tuple = ()

    def __init__(self, name, input_dim, width, options, rng, dtype, residual=False):
        self.name, self.input_dim, self.width = name, input_dim, width
        self.options, self.rng, self.dtype = options, rng, dtype
        self.v_params, self.v_buffers = {}, {}
        self.norms = {}
        if residual:
            self.v_res_k_i = self._shared("res_k", np.ones(width))

    # -- construction helpers -------------------------------------------------
    def _shared(self, key, value):
        full = f"{self.name}.{key}"
        v = fixed_shared(np.asarray(value, dtype=self.dtype), full)
        self.v_params[full] = v
        return v

    def _matrix(self, key, value):
        """A weight matrix, weight-normalised (V, g) when the option is on."""
        if not self.options.weight_norm:
            return self._shared(key, value)
        v_V_jg = self._shared(f"{key}_V", value)
        v_g_g = self._shared(f"{key}_g", np.sqrt((np.asarray(value) ** 2).sum(axis=0)))
        return weight_norm(v_V_jg, v_g_g)

    def _norm(self, key, width, with_beta):
        """The layer or batch norm of one path, or None; registered under ``key``."""
        o, full = self.options, f"{self.name}.{key}"
        if o.layer_norm:
            norm = LayerNorm(full, width, self.dtype)
        elif o.batch_norm:
            norm = BatchNorm(full, width, o.batch_norm_steps, o.batch_norm_momentum, self.dtype, with_beta)
            self.v_buffers.update(norm.v_buffers)
        else:
            return None
        self.v_params.update(norm.v_params)
        self.norms[key] = norm
        return norm

    # -- graph helpers ----------------------------------------------------------
    @staticmethod
    def _apply_norm(norm, s_a, s_step, training, stats):
        """Normalise ``s_a`` with ``norm`` (None = identity); batch statistics of a
        training graph are appended to ``stats`` as (norm, mean, var)."""
        if norm is None:
            return s_a
        if isinstance(norm, LayerNorm):
            return norm(s_a)
        out, mean, var = norm(s_a, s_step, training)
        if training:
            stats.append((norm, mean, var))
        return out

    def _project(self, s_below_tbj, s_W_jg, v_b_g, norm, s_step_tb, training, stats):
        """Input path for all frames at once, outside the recurrence: norm(x W) + b."""
        return self._project_weights(s_below_tbj, s_W_jg, norm, s_step_tb, training, stats) + v_b_g

    def _project_weights(self, s_below_tbj, s_W_jg, norm, s_step_tb, training, stats):
        """norm(x W) [T][B][g] for all frames at once, as one matmul over T·B rows."""
        # no arithmetic on symbolic shapes (-1 and static widths): JAX needs them concrete
        s_a = tt.dot(s_below_tbj.reshape((-1, self.input_dim)), s_W_jg)
        s_a = s_a.reshape((s_below_tbj.shape[0], s_below_tbj.shape[1], -1))
        return self._apply_norm(norm, s_a, s_step_tb, training, stats)

    def _residual(self, s_out_tbi, s_skip_tbi):
        if not hasattr(self, "v_res_k_i"):
            return s_out_tbi
        g = tt.sigmoid(self.v_res_k_i)
        return g * s_out_tbi + (1.0 - g) * s_skip_tbi

    def _step_index(self, s_time_tb):
        if not self.options.batch_norm:
            return None
        return step_index(s_time_tb, self.options.batch_norm_steps)

    @staticmethod
    def _population_updates(stats, s_step_t):
        """Buffer updates from batch statistics [T][1][g] gathered in a training graph."""
        updates = {}
        for norm, s_mean, s_var in stats:
            s_mean_tg = s_mean.reshape((s_mean.shape[0], s_mean.shape[-1]))
            s_var_tg = s_var.reshape((s_var.shape[0], s_var.shape[-1]))
            updates.update(norm.population_updates(s_mean_tg, s_var_tg, s_step_t))
        return updates

    def build(self, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame, training,
              engine="scan", unroll=False, s_skip_tbi=None):
        """Build the layer's graph for one window; returns a :class:`LayerOutput`.

        ``s_skip_tbi`` is the input the residual gate mixes in (the layer below's
        output without the ID embedding); ``carry_frame`` is the frame whose state
        is stored for the next window; ``training`` selects batch statistics and
        the clock leak; ``engine`` names how a recurrence runs (recurrent layers:
        :mod:`sophia.graph.engines`); ``unroll`` builds the scan engine's loop as a
        Python loop instead of ``scan``.
        """
        raise NotImplementedError


class FCLayer(Layer):
    """Fully connected: act(norm(x W) + b), applied to every frame; no state."""

    unit = "fc"

    def __init__(self, name, input_dim, width, options, rng, dtype, residual=False,
                 activation=None, normalize=True):
        super().__init__(name, input_dim, width, options, rng, dtype, residual)
        activation = activation or options.fc_activation
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        self.activation = ACTIVATIONS[activation]
        self.s_W_ji = self._matrix("W", matrix_init(options, False, False)((input_dim, width), rng))
        self.v_b_i = self._shared("b", np.zeros(width))
        self.norm = self._norm("norm", width, with_beta=False) if normalize else None

    def build(self, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame, training,
              engine="scan", unroll=False, s_skip_tbi=None):
        stats = []
        s_step_tb = self._step_index(s_time_tb)
        s_a = self._project(s_below_tbj, self.s_W_ji, self.v_b_i, self.norm, s_step_tb, training, stats)
        s_out = self._residual(self.activation(s_a), s_skip_tbi)
        updates = self._population_updates(stats, s_step_tb[:, 0]) if stats else {}
        return LayerOutput(s_out, [], updates)


class RecurrentLayer(Layer):
    """Shared machinery of gated recurrent layers: initial states, resets, the
    time gate, the recurrence over the window and batch-norm bookkeeping.

    Subclasses define ``n_gates``, ``state_names`` and :meth:`_step`.
    """

    n_gates = 1
    state_names = ("h",)
    inner_norms = ("norm_h",)   # norms applied inside the step (their statistics are per frame)

    def __init__(self, name, input_dim, width, options, rng, dtype, residual=False):
        super().__init__(name, input_dim, width, options, rng, dtype, residual)
        self.state_widths = (width,) * len(self.state_names)
        g = self.n_gates
        self.s_W_x_jg = self._matrix("W_x", stacked(matrix_init(options, False, False), input_dim, width, g, rng))
        self.s_W_h_ig = self._matrix("W_h", stacked(matrix_init(options, True, True), width, width, g, rng))
        self.v_b_g = self._shared("b", self._bias_init())
        self.norm_x = self._norm("norm_x", g * width, with_beta=False)
        self.norm_h = self._norm("norm_h", g * width, with_beta=False)
        self.initial = [self._shared(f"{s}0", np.zeros(width)) if options.learn_init_states
                        else tt.zeros((width,), dtype=dtype) for s in self.state_names]
        self.gate = None
        if options.learn_clock_params:
            self.gate = TimeGate(f"{name}.clock", width, options, rng, dtype)
            self.v_params.update(self.gate.v_params)

    def _bias_init(self):
        return np.zeros(self.n_gates * self.width)

    def _split(self, s_a):
        w = self.width
        return [s_a[:, n * w:(n + 1) * w] for n in range(self.n_gates)]

    def build(self, s_below_tbj, s_time_tb, s_prev_states, *, carry_frame, training,
              engine="scan", unroll=False, s_skip_tbi=None):
        """The recurrence run by ``engine`` (a name of :data:`sophia.graph.engines.ENGINES`,
        chosen by :func:`sophia.graph.engines.choose`), then the residual gate."""
        s_h_tbi, s_next_states, updates = ENGINES[engine].recurrence(
            self, s_below_tbj, s_time_tb, s_prev_states, carry_frame=carry_frame,
            training=training, unroll=unroll)
        return LayerOutput(self._residual(s_h_tbi, s_skip_tbi), s_next_states, updates)

    def _step(self, frame, prev, training, stats):
        """New states from one frame's inputs and the (reset-applied) previous states."""
        raise NotImplementedError


class LSTMLayer(RecurrentLayer):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, forget gate of Gers et
    al. 2000), optional peepholes, layer/batch norm on the x, h and cell paths."""

    unit = "lstm"
    n_gates = 4
    state_names = ("h", "c")
    inner_norms = ("norm_h", "norm_c")

    def __init__(self, name, input_dim, width, options, rng, dtype, residual=False):
        super().__init__(name, input_dim, width, options, rng, dtype, residual)
        self.norm_c = self._norm("norm_c", width, with_beta=True)
        # [3·i]: the input, forget and output gates' peepholes end to end (no axis letter is 3·i)
        self.v_peep = self._shared("peep", Uniform(options.init_scale)((3 * width,), rng)) if options.peephole else None

    def _bias_init(self):
        b = np.zeros(4 * self.width)
        b[:self.width] = self.options.input_bias
        b[self.width:2 * self.width] = self.options.forget_bias
        return b

    def _step(self, frame, prev, training, stats):
        h_prev, c_prev = prev
        step_b = frame.get("bn_step")
        ha = self._apply_norm(self.norm_h, tt.dot(h_prev, self.s_W_h_ig), step_b, training, stats)
        i, f, o, g = self._split(frame["xa"] + ha)
        if self.v_peep is not None:
            s_peep_in_i, s_peep_forget_i, s_peep_out_i = self._split_peep()
            i, f = i + c_prev * s_peep_in_i, f + c_prev * s_peep_forget_i
        c = tt.sigmoid(f) * c_prev + tt.sigmoid(i) * tt.tanh(g)
        if self.v_peep is not None:
            o = o + c * s_peep_out_i
        h = tt.sigmoid(o) * tt.tanh(self._apply_norm(self.norm_c, c, step_b, training, stats))
        return [h, c]

    def _split_peep(self):
        w = self.width
        return [self.v_peep[n * w:(n + 1) * w] for n in range(3)]


class GRULayer(RecurrentLayer):
    """Gated recurrent unit (Cho et al. 2014), reset applied after the recurrent
    product as in cuDNN; layer/batch norm on the x and h paths."""

    unit = "gru"
    n_gates = 3
    state_names = ("h",)

    def _step(self, frame, prev, training, stats):
        (h_prev,) = prev
        ha = self._apply_norm(self.norm_h, tt.dot(h_prev, self.s_W_h_ig), frame.get("bn_step"), training, stats)
        x_r, x_z, x_n = self._split(frame["xa"])
        h_r, h_z, h_n = self._split(ha)
        r, z = tt.sigmoid(x_r + h_r), tt.sigmoid(x_z + h_z)
        n = tt.tanh(x_n + r * h_n)
        return [(1.0 - z) * n + z * h_prev]


class RNNLayer(RecurrentLayer):
    """The plain recurrent layer (Elman 1990): h = tanh(x W_x + h W_h + b), with
    layer/batch norm on the x and h paths; the unit of Martens & Sutskever 2011."""

    unit = "rnn"
    n_gates = 1
    state_names = ("h",)

    def _step(self, frame, prev, training, stats):
        (h_prev,) = prev
        ha = self._apply_norm(self.norm_h, tt.dot(h_prev, self.s_W_h_ig), frame.get("bn_step"), training, stats)
        return [tt.tanh(frame["xa"] + ha)]


UNIT_LAYERS = {"fc": FCLayer, "rnn": RNNLayer, "lstm": LSTMLayer, "gru": GRULayer}
