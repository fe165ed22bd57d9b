"""The Net: input → [token embedding] [+ ID embedding] → net_depth unit layers → linear output → output activation.

With ``ModelOptions.vocab_size`` > 0 each input frame is one token index in
``[0, vocab_size)`` (``input_dim`` 1, stored as float32): the first layer reads the
row ``v_token_embedding_ve[index]`` of a learned table instead of the frame. The
lookup is outside every recurrence, so each engine runs it; the indices are
checked where they enter (:func:`sophia.data.dataset.check_tokens`, the server's
:func:`sophia.serving.protocol.check_tokens`), the graph only casts them.

With ``ModelOptions.bidirectional`` each unit layer is a
:class:`~sophia.graph.bidirectional.BidirectionalLayer` (a forward and a backward
recurrence, 2·net_width outputs); such a net is right only on windows of whole
sequences (see that module).

With ``ModelOptions.input_skip`` the output layer's pre-activation also gets
``input_tbj · v_input_skip_jK``, a learned linear map of the input frame (after
``input_noise``; built at zero, and a new training run starts it at the
least-squares fit, :mod:`sophia.training.linear_start`): a linear autoregression
on whatever a frame carries (its lags, with the real task's ``--lags``) beside the
recurrent layers, LSTNet's highway (Lai et al., *Modeling Long- and Short-Term
Temporal Patterns with Deep Neural Networks*, SIGIR 2018). It is outside every
recurrence, so any engine runs the layers as before.

The output activation (``ModelOptions.output_activation``) is identity for
regression, a softmax over the k units (class probabilities) for ``xent`` and k
sigmoids for ``bce``; the loss stage reads the logits before it, so
``f_infer`` and the server return probabilities while the loss stays stable.
A probabilistic model (``gaussian``, ``quantile``) has C output channels per target
element, channel-major (:mod:`sophia.graph.output_layout`): its output layer is
``target_dim × C`` wide, and the loss reads the activated outputs.

Graph assembly goes in named stages — ports → forward → loss → grads → optimizer
→ compile — and each stage is a method, so tests can compile any prefix of it.

Compiled functions (sizes that shape a graph are arguments, never options edits):

``f_train_step(input_tbj, time_tb, id_tb, target_tbk, lr) -> (loss_sum, n_frames, grad_norm, max_error[, n_correct, n_judged])``
    One BPTT(h; h') window: forward over h = ``window_size`` frames from the stored
    state, loss on the last h' = ``step_size`` frames (and the largest absolute error
    of a target element there, before the update), gradient through all h frames,
    parameter update. As a side effect it stores the state at frame h' − 1
    (the next window, shifted by h', starts there), updates the optimizer state and
    the batch-norm population statistics, and with ``dropout`` or ``input_noise``
    moves the noise generator on (:mod:`sophia.graph.noise`).
``f_fwd_propagate(input_tbj, time_tb, id_tb, target_tbk) -> (loss_sum, n_frames, max_error[, n_correct, n_judged])``
    The same forward and loss without any update of parameters (evaluation,
    inference behaviour: population statistics, no clock leak), and the largest
    absolute error of a target element; stores the state at the window's last frame.
``f_infer(input_tbj, time_tb, id_tb) -> output_tbk``
    Outputs for a window of any fixed length (one frame for real-time serving),
    ``target_dim × C`` wide for a probabilistic model (every channel);
    stores the state at its last frame. Works for any number of streams: the
    stored states take the batch size of the values put into them.

The loss per target frame is ``loss_sum / n_frames``. For the categorical losses
(xent, bce) both loss functions also return ``n_correct, n_judged`` (see
:func:`~sophia.optim.losses.masked_hits`; accuracy = their ratio) and the max
error is that of the probabilities; for gaussian and quantile it is that of the
point forecast (:meth:`Net.point`: the mean, the median quantile).

How each recurrent layer runs (scan, the fused Ops, oneDNN) is chosen once per
graph by :func:`sophia.graph.engines.choose` (:meth:`Net.choose_engines`) and
passed to the layers; every compile function takes an ``engine`` to prefer.

Regularisation noise lives in the training graph only (:meth:`Net.forward`'s
``noise``): Gaussian ``input_noise`` on the input frames, and ``dropout`` on every
hidden layer's output [T][B][i] as it enters the layer above or the output layer.
Both act on whole sequences between layers, outside every recurrence, so each
engine receives its layer's input as it would any other; the recurrent path
(h → h inside the recurrence), the ID embedding and the input frames are never
dropped. ``f_fwd_propagate`` and ``f_infer`` draw nothing (inverted dropout needs no
rescaling there), so they do not depend on these options.

Example
-------
>>> import numpy as np
>>> from sophia.options import ModelOptions
>>> net = Net(ModelOptions(input_dim=2, target_dim=1, net_width=4, net_depth=1), dtype="float64")
>>> f_infer, v_states = net.compile_infer(window_size=1, mode="FAST_COMPILE")
>>> net.reset_states(v_states, batch_size=3)
>>> f_infer(np.zeros((1, 3, 2)), np.zeros((1, 3)), np.zeros((1, 3), "int32")).shape
(1, 3, 1)
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytensor as th
import pytensor.tensor as tt

from sophia.graph.init import Uniform, fixed_shared
from sophia.graph import engines, output_layout
from sophia.graph.bidirectional import BidirectionalLayer
from sophia.graph.layers import UNIT_LAYERS, FCLayer, RecurrentLayer
from sophia.graph.modes import compile_mode
from sophia.graph.noise import Noise, shared_generator
from pytensor.tensor.special import softmax

from sophia.optim.losses import CATEGORICAL, masked_hits, masked_loss, masked_max_error
from sophia.optim.updates import Optimizer
from sophia.options import OUTPUT_OF_LOSS, ModelOptions, OptionError


OUTPUT_ACTIVATIONS = {"identity": lambda s_z_tbk: s_z_tbk,
                      "softmax": lambda s_z_tbk: softmax(s_z_tbk, axis=-1),
                      "sigmoid": tt.sigmoid}


def _rows(v_table, s_index_tb):
    """Rows of an embedding table [n][e] by index [T][B] -> [T][B][e] (rows by the flat
    indices, reshaped by -1: JAX-friendly)."""
    return v_table[s_index_tb.flatten()].reshape((s_index_tb.shape[0], s_index_tb.shape[1], -1))


def _in_own_dtype(method):
    """Build the graph with ``floatX`` set to the net's dtype, so Python float
    constants (epsilons, leak rates) never upcast a float32 graph to float64."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with th.config.change_flags(floatX=self.dtype):
            return method(self, *args, **kwargs)
    return wrapper


@dataclass
class Ports:
    """Input ports of a window: p_input_tbj, p_time_tb, p_id_tb, p_target_tbk."""

    p_input_tbj: object
    p_time_tb: object
    p_id_tb: object
    p_target_tbk: object

    def inputs(self, with_target=True):
        ports = [self.p_input_tbj, self.p_time_tb, self.p_id_tb]
        return ports + [self.p_target_tbk] if with_target else ports


@dataclass
class Forward:
    """Forward stage: output [T][B][k] (after the output activation), the states at the
    carry frame, buffer updates, and the logits [T][B][k] before the output activation."""

    s_output_tbk: object
    s_next_states: list
    updates: dict
    s_logit_tbk: object = None


def _engine_layer(layer):
    """The layer an engine is chosen for: a bidirectional layer's forward direction
    (its backward direction, the same unit with the same options and sizes, runs on
    the same engine), else the layer itself."""
    return layer.forward if isinstance(layer, BidirectionalLayer) else layer


class Net:
    """A stack of layers with learnable parameters ``v_params`` and buffers ``v_buffers``.

    Parameters
    ----------
    options : ModelOptions with input_dim, target_dim (and num_ids with ID embedding) set
    seed : initialisation seed
    dtype : 'float32' (training, serving) or 'float64' (gradient checks)
    """

    def __init__(self, options: ModelOptions, seed: int = 0, dtype: str = "float32"):
        options.validate()
        if options.input_dim < 1 or options.target_dim < 1:
            raise OptionError("input_dim and target_dim must be set (>= 1) to build a net; "
                              f"got {options.input_dim} and {options.target_dim}")
        if options.learn_id_embedding and options.num_ids < 1:
            raise OptionError("learn_id_embedding needs num_ids >= 1 (the number of sequence IDs)")
        self.options, self.dtype = options, dtype
        if options.vocab_size and options.input_dim != 1:
            raise OptionError(f"vocab_size {options.vocab_size} takes one token index per input "
                              f"frame: input_dim must be 1, got {options.input_dim}")
        rng = np.random.default_rng(seed)
        emb = options.id_embedding_dim if options.learn_id_embedding else 0
        self.layers, below = [], options.token_embedding_dim if options.vocab_size else options.input_dim
        width = options.net_width * (2 if options.bidirectional else 1)     # each layer's output
        for depth in range(options.net_depth):
            residual = options.residual_gate and below == width
            unit_layer, name = UNIT_LAYERS[options.unit_type], f"layer{depth}"
            if options.bidirectional:
                layer = BidirectionalLayer(name, unit_layer, below + emb, options.net_width, options,
                                           rng, dtype, residual)
            else:
                layer = unit_layer(name, below + emb, options.net_width, options, rng, dtype, residual)
            self.layers.append(layer)
            below = width
        self.output_width = options.target_dim * output_layout.num_channels(options)
        self.output_layer = FCLayer("output", below + emb, self.output_width, options, rng, dtype,
                                    activation="identity", normalize=False)
        self.v_id_embedding_ne = None
        if emb:
            # one row per sequence ID of the training data, plus one for IDs never seen
            table = Uniform(options.init_scale)((options.num_ids + 1, emb), rng).astype(dtype)
            self.v_id_embedding_ne = fixed_shared(table, "id_embedding")
        self.v_token_embedding_ve = None
        if options.vocab_size:
            # one row per token; the first layer reads the row of each frame's index
            table = Uniform(options.init_scale)((options.vocab_size, options.token_embedding_dim), rng)
            self.v_token_embedding_ve = fixed_shared(table.astype(dtype), "token_embedding")
        self.v_input_skip_jK = None
        if options.input_skip:
            # zero until a training run starts it at the least-squares fit
            zeros = np.zeros((options.input_dim, self.output_width), dtype)
            self.v_input_skip_jK = fixed_shared(zeros, "input_skip")

    # -- parameters -------------------------------------------------------------
    @property
    def v_params(self) -> "OrderedDict[str, object]":
        params = OrderedDict()
        for layer in self.layers + [self.output_layer]:
            params.update(layer.v_params)
        if self.v_id_embedding_ne is not None:
            params["id_embedding"] = self.v_id_embedding_ne
        if self.v_token_embedding_ve is not None:
            params["token_embedding"] = self.v_token_embedding_ve
        if self.v_input_skip_jK is not None:
            params["input_skip"] = self.v_input_skip_jK
        return params

    @property
    def v_buffers(self) -> "OrderedDict[str, object]":
        buffers = OrderedDict()
        for layer in self.layers:
            buffers.update(layer.v_buffers)
        return buffers

    def num_weights(self) -> int:
        return int(sum(v.get_value(borrow=True).size for v in self.v_params.values()))

    def get_values(self) -> dict:
        """Copies of every parameter and buffer, by stable name (for ``.npz``)."""
        shared = {**self.v_params, **self.v_buffers}
        return {name: v.get_value().copy() for name, v in shared.items()}

    def set_values(self, values: dict) -> None:
        """Load parameters and buffers saved by :meth:`get_values`.

        Raises ValueError listing missing, unexpected or misshapen names.
        """
        shared = {**self.v_params, **self.v_buffers}
        problems = [f"missing {n}" for n in shared if n not in values]
        problems += [f"unexpected {n}" for n in values if n not in shared]
        problems += [f"{n}: shape {np.shape(values[n])}, expected {v.get_value(borrow=True).shape}"
                     for n, v in shared.items()
                     if n in values and np.shape(values[n]) != v.get_value(borrow=True).shape]
        if problems:
            raise ValueError("parameters do not fit this net: " + "; ".join(problems))
        for name, v in shared.items():
            v.set_value(np.asarray(values[name], dtype=self.dtype))

    # -- stored states ------------------------------------------------------------
    def state_widths(self) -> list:
        return [w for layer in self.layers for w in layer.state_widths]

    def new_states(self, batch_size: int, tag: str) -> list:
        """Zero-valued shared stored states, one [B][width] per layer state."""
        return [th.shared(np.zeros((batch_size, w), self.dtype), name=f"{tag}.state{n}")
                for n, w in enumerate(self.state_widths())]

    def reset_states(self, v_states, batch_size=None) -> None:
        """Set stored states to zero (with ``batch_size`` rows if given)."""
        for v, w in zip(v_states, self.state_widths()):
            rows = batch_size if batch_size is not None else v.get_value(borrow=True).shape[0]
            v.set_value(np.zeros((rows, w), self.dtype))

    # -- stages -------------------------------------------------------------------
    def ports(self, window_size=None, batch_size=None) -> Ports:
        """Symbolic inputs of ``window_size`` frames and ``batch_size`` streams (None:
        any). Unrolling needs the window size; JAX needs both wherever a gradient
        reshapes by them (its shapes must be concrete while it traces)."""
        t, b = window_size, batch_size
        return Ports(tt.tensor3("p_input_tbj", dtype=self.dtype, shape=(t, b, self.options.input_dim)),
                     tt.matrix("p_time_tb", dtype=self.dtype, shape=(t, b)),
                     tt.matrix("p_id_tb", dtype="int32", shape=(t, b)),
                     tt.tensor3("p_target_tbk", dtype=self.dtype, shape=(t, b, self.options.target_dim)))

    @_in_own_dtype
    def forward(self, ports: Ports, s_prev_states, *, carry_frame, training, unroll=False,
                choices=None, noise=None, dropout=0.0, input_noise=0.0) -> Forward:
        """Forward stage over one window from ``s_prev_states`` (flat list over layers).

        ``choices`` holds each hidden layer's :class:`~sophia.graph.engines.Choice`
        (default: :meth:`choose_engines` for the ``auto`` mode). ``noise`` (a
        :class:`~sophia.graph.noise.Noise`; training graphs only) draws N(0,
        ``input_noise``²) noise on the input frames and drops each hidden layer's
        output at rate ``dropout``; its generator update joins ``updates``.
        Raises ValueError for a ``dropout`` or ``input_noise`` without ``noise``."""
        if (dropout or input_noise) and noise is None:
            raise ValueError("dropout and input_noise need a Noise to draw from (training graphs only)")
        if choices is None:
            choices = self.choose_engines("auto", training=training, unroll=unroll)
        engine_of = dict(zip(self.layers, (c.engine for c in choices)))
        s_emb_tbe = None
        if self.v_id_embedding_ne is not None:
            s_emb_tbe = _rows(self.v_id_embedding_ne, ports.p_id_tb)
        s_below = ports.p_input_tbj
        if self.v_token_embedding_ve is not None:   # outside every recurrence: any engine runs it
            s_below = _rows(self.v_token_embedding_ve, tt.cast(ports.p_input_tbj[:, :, 0], "int32"))
        if input_noise:                             # on the input frames, or on token models' embeddings
            s_below = noise.gaussian(s_below, input_noise)
        s_input_tbj = s_below
        updates, next_states, n = {}, [], 0
        for layer in self.layers + [self.output_layer]:
            width = len(layer.state_widths)
            s_in = s_below if s_emb_tbe is None else tt.concatenate([s_below, s_emb_tbe], axis=2)
            out = layer.build(s_in, ports.p_time_tb, s_prev_states[n:n + width], carry_frame=carry_frame,
                              training=training, engine=engine_of.get(layer, "scan"), unroll=unroll,
                              s_skip_tbi=s_below)
            s_below, n = out.s_output_tbi, n + width
            if dropout and layer is not self.output_layer:
                s_below = noise.dropout(s_below, dropout)
            next_states += out.s_next_states
            updates.update(out.updates)
        if self.v_input_skip_jK is not None:
            s_below = s_below + tt.dot(s_input_tbj, self.v_input_skip_jK)
        if noise is not None:
            updates.update(noise.updates)
        return Forward(self._activate(s_below), next_states, updates, s_below)

    def _activate(self, s_z_tbK):
        """The output activation: a registered one, or a probabilistic layout's."""
        if self.options.output_activation in output_layout.PROBABILISTIC:
            return output_layout.activate(s_z_tbK, self.options)
        return OUTPUT_ACTIVATIONS[self.options.output_activation](s_z_tbK)

    def point(self, s_output_tbK):
        """The point forecast [T][B][k] of an output: the output itself, or a probabilistic
        layout's mean / median channel (:func:`~sophia.graph.output_layout.point_channel`)."""
        if self.options.output_activation not in output_layout.PROBABILISTIC:
            return s_output_tbK
        return output_layout.channel(s_output_tbK, self.options,
                                     output_layout.point_channel(self.options))

    @_in_own_dtype
    def loss(self, forward: Forward, ports: Ports, step_size: int, loss_type: str, huber_delta=1.0,
             label_smoothing=0.0):
        """Loss stage: (s_loss_sum, s_n_frames) over the last ``step_size`` frames.

        xent and bce read the logits and need the output activation they train
        (softmax, sigmoid); the regression losses read the outputs; ``label_smoothing``
        smooths xent's targets (:func:`~sophia.optim.losses.masked_loss`).
        Raises OptionError for a loss that does not fit the output activation."""
        self._check_loss(loss_type)
        s_out = forward.s_logit_tbk if loss_type in CATEGORICAL else forward.s_output_tbk
        return masked_loss(s_out[-step_size:], ports.p_target_tbk[-step_size:], loss_type, huber_delta,
                           self.options.quantiles, label_smoothing)

    @_in_own_dtype
    def hits(self, forward: Forward, ports: Ports, step_size: int, loss_type: str) -> list:
        """``[s_n_correct, s_n_judged]`` over the last ``step_size`` frames for xent and
        bce (:func:`~sophia.optim.losses.masked_hits`); ``[]`` for the regression losses."""
        if loss_type not in CATEGORICAL:
            return []
        return list(masked_hits(forward.s_logit_tbk[-step_size:], ports.p_target_tbk[-step_size:],
                                loss_type))

    def _check_loss(self, loss_type: str) -> None:
        wanted = OUTPUT_OF_LOSS.get(loss_type, "identity")
        if self.options.output_activation != wanted:
            raise OptionError(f"loss_type {loss_type!r} trains {wanted!r} outputs, but this net's "
                              f"output_activation is {self.options.output_activation!r}")

    @_in_own_dtype
    def grads(self, s_loss_sum, s_n_frames):
        """Gradient stage: gradients of the loss per target frame w.r.t. ``v_params``."""
        s_cost = s_loss_sum / tt.maximum(s_n_frames, 1.0)
        return tt.grad(s_cost, list(self.v_params.values()))

    # -- compiled functions ---------------------------------------------------------
    def choose_engines(self, mode_name: str, *, training: bool, unroll: bool = False,
                       prefer: str | None = None) -> list:
        """Each hidden layer's :class:`~sophia.graph.engines.Choice` in a graph compiled
        in ``mode_name`` (FC layers: ``Choice("scan", "")``, they have no recurrence)."""
        return [engines.choose(_engine_layer(layer), mode_name, training=training, unroll=unroll,
                               prefer=prefer)
                if isinstance(_engine_layer(layer), RecurrentLayer) else engines.Choice("scan", "")
                for layer in self.layers]

    def compile_plan(self, mode_name: str, *, training: bool, unroll: bool = False,
                     prefer: str | None = None):
        """``(Mode, choices)`` for a graph in ``mode_name``: the engines of
        :meth:`choose_engines`, and the mode, which for ``auto`` depends on whether a
        recurrence keeps a scan (see :mod:`sophia.graph.modes`)."""
        choices = self.choose_engines(mode_name, training=training, unroll=unroll, prefer=prefer)
        looped = any(isinstance(_engine_layer(layer), RecurrentLayer) and c.engine == "scan"
                     for layer, c in zip(self.layers, choices))
        return compile_mode(mode_name, looped), choices

    @_in_own_dtype
    def compile_train_step(self, train_options, mode=None, engine=None, v_rng=None):
        """Compile ``f_train_step`` for ``train_options``' batch, window and step sizes.

        Its ports have that window and batch size in their types (static shapes, which
        JAX needs); a window of another shape is a TypeError when called.

        Returns ``(f_train_step, v_states, optimizer)``; ``optimizer.compile_reset()``
        gives the function that resets all optimizer state. ``engine`` is the engine
        to prefer (:func:`sophia.graph.engines.choose`). ``v_rng`` is the shared
        generator that ``dropout`` and ``input_noise`` draw from
        (:func:`sophia.graph.noise.shared_generator`; default: a new one of seed 0);
        the caller keeps it to save and restore its state.
        """
        o = train_options
        mode, choices = self.compile_plan(mode or o.compile_mode, training=True, unroll=o.unroll_scan,
                                          prefer=engine)
        ports = self.ports(o.window_size, o.batch_size)
        v_states = self.new_states(o.batch_size, "train")
        noise = None
        if o.dropout or o.input_noise:
            noise = Noise(shared_generator(0) if v_rng is None else v_rng)
        fwd = self.forward(ports, v_states, carry_frame=o.step_size - 1, training=True, unroll=o.unroll_scan,
                           choices=choices, noise=noise, dropout=o.dropout, input_noise=o.input_noise)
        s_loss_sum, s_n_frames = self.loss(fwd, ports, o.step_size, o.loss_type, o.huber_delta)
        s_trained_sum = s_loss_sum          # what the gradient descends; the reported loss stays plain
        if o.label_smoothing:
            s_trained_sum, _ = self.loss(fwd, ports, o.step_size, o.loss_type, label_smoothing=o.label_smoothing)
        s_max_error = masked_max_error(self.point(fwd.s_output_tbk)[-o.step_size:],
                                       ports.p_target_tbk[-o.step_size:])
        p_lr = tt.scalar("p_lr", dtype=self.dtype)
        optimizer = Optimizer.from_options(list(self.v_params.values()),
                                           self.grads(s_trained_sum, s_n_frames), p_lr, o)
        updates = OrderedDict(optimizer.updates)
        updates.update(fwd.updates)
        updates.update(zip(v_states, fwd.s_next_states))
        f_train_step = th.function(ports.inputs() + [p_lr],
                                   [s_loss_sum, s_n_frames, optimizer.s_grad_norm, s_max_error]
                                   + self.hits(fwd, ports, o.step_size, o.loss_type),
                                   updates=updates, mode=mode,
                                   on_unused_input="ignore", name="f_train_step")
        return f_train_step, v_states, optimizer

    @_in_own_dtype
    def compile_fwd_propagate(self, train_options, batch_size=None, mode=None, engine=None):
        """Compile ``f_fwd_propagate`` over windows of ``window_size`` frames, loss and
        largest absolute error on all of them; window and batch size (``batch_size``,
        else the training batch) are static, as in ``f_train_step``.

        Returns ``(f_fwd_propagate, v_states)``.
        """
        o = train_options
        window, batch = o.window_size, batch_size or o.batch_size
        mode, choices = self.compile_plan(mode or o.compile_mode, training=False, unroll=o.unroll_scan,
                                          prefer=engine)
        ports = self.ports(window, batch)
        v_states = self.new_states(batch, "eval")
        fwd = self.forward(ports, v_states, carry_frame=window - 1, training=False, unroll=o.unroll_scan,
                           choices=choices)
        s_loss_sum, s_n_frames = self.loss(fwd, ports, window, o.loss_type, o.huber_delta)
        s_max_error = masked_max_error(self.point(fwd.s_output_tbk), ports.p_target_tbk)
        f = th.function(ports.inputs(), [s_loss_sum, s_n_frames, s_max_error]
                        + self.hits(fwd, ports, window, o.loss_type), updates=list(zip(v_states, fwd.s_next_states)),
                        mode=mode, on_unused_input="ignore",
                        name="f_fwd_propagate")
        return f, v_states

    @_in_own_dtype
    def compile_infer(self, window_size=1, mode="auto", unroll=False, engine=None):
        """Compile ``f_infer`` over windows of ``window_size`` frames (1 for serving; None:
        any number, not with ``unroll``).

        Returns ``(f_infer, v_states)``; set the states' batch size with :meth:`reset_states`.
        """
        mode, choices = self.compile_plan(mode, training=False, unroll=unroll, prefer=engine)
        ports = self.ports(window_size)
        v_states = self.new_states(1, "infer")
        carry_frame = -1 if window_size is None else window_size - 1
        fwd = self.forward(ports, v_states, carry_frame=carry_frame, training=False, unroll=unroll,
                           choices=choices)
        f = th.function(ports.inputs(with_target=False), fwd.s_output_tbk,
                        updates=list(zip(v_states, fwd.s_next_states)), mode=mode,
                        on_unused_input="ignore", name="f_infer")
        return f, v_states
