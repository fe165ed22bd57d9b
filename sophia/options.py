"""Sophia's options: the architecture of a net, and how it is trained.

Two dataclasses keep apart what a saved model needs to be rebuilt
(:class:`ModelOptions`) and what only shapes a training run
(:class:`TrainOptions`). Both are plain values: nothing reads a global
options dict, and nothing in the package mutates an options object it was
given (use :func:`dataclasses.replace`).

This module is the one source of every option's default, type, meaning and
validation: ``train.py``'s OPTIONS block, configs and ``--set`` hold overrides
only, and ``docs/OPTIONS.md`` is generated from the fields here
(:func:`markdown_table`; ``python -m sophia.options > docs/OPTIONS.md``, checked
by ``tests/test_options.py``). Overrides come as ``{name: value}`` mappings;
:func:`apply_overrides` type-checks them and rejects unknown names with the list
of valid ones.

Example
-------
>>> from sophia.options import ModelOptions, apply_overrides
>>> m = apply_overrides(ModelOptions(), {"unit_type": "gru", "net_width": "32"})
>>> m.unit_type, m.net_width
('gru', 32)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

UNIT_TYPES = ("fc", "rnn", "lstm", "gru")
ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu", "elu", "softplus")
INIT_TYPES = ("uniform", "glorot", "sparse")
LOSS_TYPES = ("l2", "l1", "huber", "xent", "bce", "gaussian", "quantile")
OUTPUT_ACTIVATIONS = ("identity", "softmax", "sigmoid", "gaussian", "quantile")
# The output activation each loss trains: xent a softmax over the k units, bce k sigmoids,
# gaussian a mean and a log-variance per target element, quantile one value per level
# (the output layout: sophia/graph/output_layout.py).
OUTPUT_OF_LOSS = {"l2": "identity", "l1": "identity", "huber": "identity",
                  "xent": "softmax", "bce": "sigmoid", "gaussian": "gaussian", "quantile": "quantile"}
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
UPDATE_TYPES = ("sgd", "momentum", "nesterov", "hessian_free")
FORCE_TYPES = ("vanilla", "adadelta", "rmsprop", "adam", "amsgrad")
# Options the hessian_free update does not read (the first-order optimizer's, the
# regularisation of its training graph, the training streak, which HF steps do not
# count, and label smoothing: HF minimises the plain loss): a non-default value would
# be ignored.
HF_UNUSED = ("force_type", "rms_decay", "adadelta_decay", "adam_beta1", "adam_beta2",
                    "force_epsilon", "update_mu", "grad_norm_clip", "ema_decay",
                    "dropout", "weight_decay", "input_noise", "target_train_streak",
                    "label_smoothing")
HF_LOSS_TYPES = ("l2", "xent", "bce")  # matching losses: hessian_free builds their output Hessian
COMPILE_MODES = ("auto", "FAST_COMPILE", "FAST_RUN", "CVM", "NUMBA", "JAX")


class OptionError(ValueError):
    """An option has an unknown name, a wrong type or a value out of range."""


def _opt(default, help: str):
    """A field with its default and its one-line meaning (read by :func:`markdown_table`)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelOptions:
    """Everything needed to rebuild a net's graph and load its parameters."""

    input_dim: int = _opt(0, "input frame width; 0 = take it from the data")
    target_dim: int = _opt(0, "target frame width; 0 = take it from the data")
    unit_type: str = _opt("lstm", "fc | rnn (tanh) | lstm | gru")
    net_width: int = _opt(64, "units per hidden layer")
    net_depth: int = _opt(2, "number of hidden layers")
    fc_activation: str = _opt("tanh", "activation of hidden fc layers")
    peephole: bool = _opt(False, "LSTM peephole connections")
    weight_norm: bool = _opt(False, "weight normalization (Salimans & Kingma 2016)")
    layer_norm: bool = _opt(False, "layer normalization (Ba et al. 2016) on the input, recurrent and cell paths")
    batch_norm: bool = _opt(False, "recurrent batch normalization (Cooijmans et al. 2016), per-time-step statistics; needs batch_size >= 2 and no .time data")
    batch_norm_steps: int = _opt(200, "time steps with their own population statistics")
    batch_norm_momentum: float = _opt(0.1, "running-average rate of population statistics")
    residual_gate: bool = _opt(False, "out = g*layer(x) + (1-g)*x where widths match")
    input_skip: bool = _opt(False, "a linear path from each input frame straight to the outputs (before the output activation), beside the layers (LSTNet's highway, Lai et al. 2018); a new run starts it at the least-squares fit of the training targets, the output layer's weights at 0, so the net starts as that linear model (an AR model when frames carry lags); regression outputs and real-vector inputs only")
    bidirectional: bool = _opt(False, "each recurrent layer also runs backward over every sequence; outputs side by side (2*net_width); needs whole sequences (step_size = window_size >= the longest); not servable")
    learn_init_states: bool = _opt(True, "learned initial h (and c); zeros otherwise")
    learn_id_embedding: bool = _opt(False, "learned embedding of each stream's sequence ID, fed to every layer")
    id_embedding_dim: int = _opt(8, "width of that embedding")
    num_ids: int = _opt(0, "number of sequence IDs; 0 = take it from the data")
    vocab_size: int = _opt(0, "token inputs: each input frame is one token index in [0, vocab_size), embedded by a learned matrix; 0 = real-vector inputs")
    token_embedding_dim: int = _opt(32, "width of the token embedding that feeds the first layer (vocab_size > 0)")
    learn_clock_params: bool = _opt(False, "Phased-LSTM time gate (Neil et al. 2016) for lstm and gru; reads the time signal, so real timestamps work")
    clock_period_lo: float = _opt(0.0, "log-period init range, low end (tau = exp(U(lo, hi)))")
    clock_period_hi: float = _opt(3.0, "log-period init range, high end")
    clock_r_on: float = _opt(0.05, "initial open ratio of the time gate")
    clock_leak: float = _opt(0.001, "leak alpha of the closed gate while training")
    init_type: str = _opt("uniform", "uniform(+-init_scale) | glorot | sparse (Martens 2010)")
    init_scale: float = _opt(0.1, "half-width of the uniform initialisation")
    sparse_connections: int = _opt(15, "init_type sparse: non-zero incoming weights per unit, from N(0, init_scale^2)")
    orthogonal_recurrent: bool = _opt(True, "orthogonal init of square recurrent matrices (before init_type)")
    recurrent_spectral_radius: float = _opt(0.0, "rescale square recurrent matrices to this spectral radius; 0 = off")
    forget_bias: float = _opt(1.0, "initial LSTM forget-gate bias")
    input_bias: float = _opt(0.0, "initial LSTM input-gate bias (< 0: cells start closed)")
    output_activation: str = _opt("identity", "identity | softmax | sigmoid | gaussian | quantile: what the outputs are (softmax: class probabilities; gaussian: mean and log-variance; quantile: one value per level of quantiles); set by training from loss_type")
    quantiles: tuple[float, ...] = _opt(DEFAULT_QUANTILES, "loss_type quantile: the levels predicted, sorted, each in (0, 1); comma-separated on --set")

    def validate(self) -> "ModelOptions":
        """Raise :class:`OptionError` naming the first inconsistent option."""
        _check_choice("unit_type", self.unit_type, UNIT_TYPES)
        _check_choice("fc_activation", self.fc_activation, ACTIVATIONS)
        _check_choice("init_type", self.init_type, INIT_TYPES)
        _check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        _check_quantiles(self.quantiles)
        for name in ("input_dim", "target_dim", "num_ids", "vocab_size"):
            _check_range(name, getattr(self, name), lo=0)
        for name in ("net_width", "net_depth", "id_embedding_dim", "token_embedding_dim",
                     "batch_norm_steps", "sparse_connections"):
            _check_range(name, getattr(self, name), lo=1)
        _check_range("init_scale", self.init_scale, lo=0.0, lo_open=True)
        _check_range("clock_r_on", self.clock_r_on, lo=0.0, hi=1.0, lo_open=True)
        _check_range("clock_leak", self.clock_leak, lo=0.0)
        _check_range("recurrent_spectral_radius", self.recurrent_spectral_radius, lo=0.0)
        _check_range("batch_norm_momentum", self.batch_norm_momentum, lo=0.0, hi=1.0)
        if self.clock_period_hi < self.clock_period_lo:
            raise OptionError("clock_period_hi must be >= clock_period_lo "
                              f"(got {self.clock_period_hi} < {self.clock_period_lo})")
        if self.layer_norm and self.batch_norm:
            raise OptionError("layer_norm and batch_norm are exclusive: choose one")
        if self.learn_clock_params and self.unit_type == "fc":
            raise OptionError("learn_clock_params needs a recurrent unit_type (rnn, lstm or gru), not fc")
        if self.peephole and self.unit_type != "lstm":
            raise OptionError(f"peephole needs unit_type lstm, not {self.unit_type}")
        if self.vocab_size and self.input_dim not in (0, 1):
            raise OptionError(f"vocab_size {self.vocab_size} makes each input frame one token index, "
                              f"so input_dim must be 1 (or 0, from the data); got {self.input_dim}")
        if self.input_skip and self.vocab_size:
            raise OptionError("input_skip is a linear map of real-vector input frames; a token "
                              f"model's frames are indices (vocab_size {self.vocab_size})")
        if self.input_skip and self.output_activation in ("softmax", "sigmoid"):
            raise OptionError("input_skip starts a regression's outputs at a least-squares fit; "
                              f"{self.output_activation} outputs (loss_type xent or bce) are "
                              "class probabilities, so it does not apply")
        if self.bidirectional and self.unit_type == "fc":
            raise OptionError("bidirectional needs a recurrent unit_type (rnn, lstm or gru), not fc")
        if self.bidirectional and self.batch_norm:
            raise OptionError("bidirectional and batch_norm are exclusive: batch norm trains on "
                              "synchronized groups, whose padding frames run on without a reset, "
                              "so the backward direction could not start at each sequence's end "
                              "(layer_norm works with bidirectional)")
        return self


@dataclass(frozen=True)
class TrainOptions:
    """How a net is trained: window sizes, loss, optimizer and annealing."""

    loss_type: str = _opt("l2", "l2 | l1 | huber | xent (softmax cross-entropy, one-hot targets) | bce (sigmoid binary cross-entropy, targets in {0, 1}) | gaussian (negative log-likelihood of a mean and variance) | quantile (pinball loss at the levels of quantiles)")
    huber_delta: float = _opt(1.0, "where huber turns from quadratic to linear")
    label_smoothing: float = _opt(0.0, "xent only: train against (1 − ε)·one-hot + ε/k (Szegedy et al. 2016), 0 ≤ ε < 1; the losses reported stay plain cross-entropy")
    batch_size: int = _opt(16, "streams trained in parallel")
    eval_batch_size: int = _opt(0, "streams evaluated in parallel (dev loss); 0 = batch_size")
    window_size: int = _opt(64, "h: frames of each BPTT window")
    step_size: int = _opt(32, "h': new frames per window (loss covers these)")
    update_type: str = _opt("sgd", "sgd | momentum | nesterov (first-order, with force_type) | hessian_free (Martens 2010; the hf_* options; loss l2, xent or bce, step_size = window_size)")
    update_mu: float = _opt(0.9, "momentum coefficient")
    force_type: str = _opt("adam", "vanilla | adadelta | rmsprop | adam | amsgrad (Adam with the largest second moment so far)")
    rms_decay: float = _opt(0.9, "rmsprop decay of the squared-gradient average")
    adadelta_decay: float = _opt(0.95, "adadelta decay of both running averages")
    adam_beta1: float = _opt(0.9, "adam/amsgrad first-moment decay")
    adam_beta2: float = _opt(0.999, "adam/amsgrad second-moment decay")
    force_epsilon: float = _opt(1e-6, "denominator guard of adadelta/rmsprop/adam/amsgrad")
    grad_norm_clip: float = _opt(0.0, "clip the gradient's global norm to this; 0 = off")
    ema_decay: float = _opt(0.0, "evaluate and save a bias-corrected running average of the weights (training goes on from the live ones); 0 = off")
    dropout: float = _opt(0.0, "training only: drop each element of every hidden layer's output (the input of the layer above and of the output layer; not the recurrent path, not the input frames) with this probability, the rest scaled by 1/(1-dropout); 0 = off")
    weight_decay: float = _opt(0.0, "decoupled weight decay (AdamW, Loshchilov & Hutter 2019): each step also p <- p - lr*weight_decay*p for the weight matrices and the ID embedding (not biases, norm or weight-norm gains, peepholes, clock, residual gates, initial states); 0 = off")
    input_noise: float = _opt(0.0, "training only: std of Gaussian noise added to every input frame element; 0 = off")
    frames_per_epoch: int = _opt(100_000, "training frames between dev evaluations")
    lr_init_val: float = _opt(1e-3, "initial learning rate")
    lr_lower_bound: float = _opt(1e-5, "stop when the learning rate falls below this")
    lr_decay_rate: float = _opt(0.5, "learning-rate factor at each rollback")
    max_retry: int = _opt(2, "worse evaluations tolerated before a rollback")
    patience_from_best: bool = _opt(False, "'worse' = no new best (else: not better than the previous); for noisy dev losses")
    diverge_ratio: float = _opt(10.0, "a dev loss above this x the best (best + (x-1)|best| for a negative best) counts as worse; 0 = off")
    max_epochs: int = _opt(0, "stop after this many epochs; 0 = no limit")
    max_hours: float = _opt(0.0, "stop after this many hours; 0 = no limit")
    target_dev_loss: float = _opt(0.0, "stop once the dev loss is at or below this; 0 = never")
    target_dev_max_error: float = _opt(0.0, "stop once every dev target is within this of the output, and keep that model; 0 = never")
    target_train_streak: int = _opt(0, "stop once this many training target frames in a row were right, and keep that model; 0 = never")
    streak_tolerance: float = _opt(0.04, "|error| up to which a training target frame counts as right")
    # hessian_free (sophia/optim/hessian_free.py: HFSettings takes its defaults from here)
    hf_max_cg_iters: int = _opt(250, "HF: most CG iterations per step (Martens 2010 §4.4)")
    hf_init_damping: float = _opt(1.0, "HF: initial damping lambda, also after a rollback (the papers tune it per problem)")
    hf_structural_damping: float = _opt(0.03, "HF: structural damping mu, times lambda, on the hidden states (HF-RNN code's ratio; Martens & Sutskever 2011 §3.2)")
    hf_curvature_batch_fraction: float = _opt(0.2, "HF: share of a window's streams the curvature products use (Martens & Sutskever 2011 use a smaller curvature batch; 1/5 assumed)")
    hf_cg_decay: float = _opt(0.95, "HF: CG starts from this times the previous solution (Martens 2010 §4.5)")
    hf_lm_shrink: float = _opt(2.0 / 3.0, "HF: lambda factor when rho > hf_rho_high (Martens 2010 §4.1)")
    hf_lm_grow: float = _opt(1.5, "HF: lambda factor when rho < hf_rho_low (Martens 2010 §4.1)")
    hf_rho_low: float = _opt(0.25, "HF: below this reduction ratio the model over-promised (Martens 2010 §4.1)")
    hf_rho_high: float = _opt(0.75, "HF: above this reduction ratio the model is trusted more (Martens 2010 §4.1)")
    hf_line_search_factor: float = _opt(0.8, "HF: line-search step factor, from alpha = 1 (Martens's hf code)")
    hf_armijo_c: float = _opt(0.01, "HF: sufficient-decrease constant c of the line search (Martens's hf code)")
    hf_cg_epsilon: float = _opt(5e-4, "HF: CG's relative-progress tolerance epsilon (Martens 2010 §4.4)")
    hf_backtrack_base: float = _opt(1.3, "HF: CG iterates kept for backtracking at ceil(base^j) (Martens 2010 §4.6)")
    hf_line_search_max_steps: int = _opt(60, "HF: line-search shrinks before the step is rejected (Sophia's choice)")
    unroll_scan: bool = _opt(False, "unrolled graph instead of scan (same results)")
    compile_mode: str = _opt("auto", "auto | FAST_COMPILE | FAST_RUN | CVM | NUMBA | JAX")

    def validate(self) -> "TrainOptions":
        """Raise :class:`OptionError` naming the first inconsistent option."""
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("update_type", self.update_type, UPDATE_TYPES)
        _check_choice("force_type", self.force_type, FORCE_TYPES)
        _check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        for name in ("batch_size", "window_size", "step_size", "frames_per_epoch"):
            _check_range(name, getattr(self, name), lo=1)
        _check_range("eval_batch_size", self.eval_batch_size, lo=0)
        if self.step_size > self.window_size:
            raise OptionError(f"step_size ({self.step_size}) must be <= window_size "
                              f"({self.window_size})")
        _check_range("max_retry", self.max_retry, lo=0)
        _check_range("lr_init_val", self.lr_init_val, lo=0.0, lo_open=True)
        _check_range("lr_lower_bound", self.lr_lower_bound, lo=0.0)
        _check_range("lr_decay_rate", self.lr_decay_rate, lo=0.0, hi=1.0, lo_open=True)
        _check_range("huber_delta", self.huber_delta, lo=0.0, lo_open=True)
        _check_range("label_smoothing", self.label_smoothing, lo=0.0, hi=1.0, hi_open=True)
        if self.label_smoothing and self.loss_type != "xent":
            raise OptionError(f"label_smoothing ({self.label_smoothing}) smooths one-hot targets and needs "
                              f"loss_type xent; got {self.loss_type!r}")
        for name in ("update_mu", "rms_decay", "adadelta_decay", "adam_beta1", "adam_beta2"):
            _check_range(name, getattr(self, name), lo=0.0, hi=1.0)
        for name in ("force_epsilon", "grad_norm_clip", "max_hours", "target_dev_loss",
                     "target_dev_max_error"):
            _check_range(name, getattr(self, name), lo=0.0)
        _check_range("max_epochs", self.max_epochs, lo=0)
        _check_range("ema_decay", self.ema_decay, lo=0.0, hi=1.0, hi_open=True)
        self._validate_regularisation()
        _check_range("target_train_streak", self.target_train_streak, lo=0)
        _check_range("streak_tolerance", self.streak_tolerance, lo=0.0)
        if self.diverge_ratio != 0:
            _check_range("diverge_ratio", self.diverge_ratio, lo=1.0)
        self._validate_hessian_free()
        return self

    def _validate_regularisation(self) -> None:
        """The ranges of ``dropout``, ``weight_decay`` and ``input_noise``."""
        _check_range("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        _check_range("weight_decay", self.weight_decay, lo=0.0)
        _check_range("input_noise", self.input_noise, lo=0.0)
        if self.lr_init_val * self.weight_decay >= 1.0:
            raise OptionError(f"lr_init_val * weight_decay must be < 1 (each step scales the "
                              f"weights by 1 - lr * weight_decay); got {self.lr_init_val} * "
                              f"{self.weight_decay}")

    def _validate_hessian_free(self) -> None:
        """The ``hf_*`` ranges, and the options that do not go with the update type."""
        for name in ("hf_max_cg_iters", "hf_line_search_max_steps"):
            _check_range(name, getattr(self, name), lo=1)
        _check_range("hf_init_damping", self.hf_init_damping, lo=0.0, lo_open=True)
        _check_range("hf_lm_shrink", self.hf_lm_shrink, lo=0.0, hi=1.0, lo_open=True)
        _check_range("hf_curvature_batch_fraction", self.hf_curvature_batch_fraction, lo=0.0, hi=1.0, lo_open=True)
        for name in ("hf_structural_damping", "hf_cg_epsilon"):
            _check_range(name, getattr(self, name), lo=0.0)
        for name in ("hf_cg_decay", "hf_rho_low", "hf_rho_high"):
            _check_range(name, getattr(self, name), lo=0.0, hi=1.0)
        _check_range("hf_lm_grow", self.hf_lm_grow, lo=1.0)
        _check_range("hf_line_search_factor", self.hf_line_search_factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _check_range("hf_armijo_c", self.hf_armijo_c, lo=0.0, hi=1.0, hi_open=True)
        _check_range("hf_backtrack_base", self.hf_backtrack_base, lo=1.0, lo_open=True)
        if self.hf_rho_low > self.hf_rho_high:
            raise OptionError(f"hf_rho_low ({self.hf_rho_low}) must be <= hf_rho_high ({self.hf_rho_high})")
        hf_names = [f.name for f in fields(self) if f.name.startswith("hf_")]
        if self.update_type != "hessian_free":
            changed = _non_defaults(self, hf_names)
            if changed:
                raise OptionError(f"{', '.join(changed)} only apply to update_type 'hessian_free', "
                                  f"not {self.update_type!r}: remove them or set update_type")
            return
        changed = _non_defaults(self, HF_UNUSED)
        if changed:
            raise OptionError(f"update_type 'hessian_free' does not use {', '.join(changed)}: "
                              "leave them at their defaults (HF's own settings are the hf_* options)")
        if self.loss_type not in HF_LOSS_TYPES:
            raise OptionError(f"update_type 'hessian_free' supports loss_type "
                              f"{' | '.join(HF_LOSS_TYPES)}, not {self.loss_type!r}")
        if self.step_size != self.window_size:
            raise OptionError(f"update_type 'hessian_free' needs step_size = window_size (got "
                              f"{self.step_size} and {self.window_size}): HF starts every window "
                              "from zero states, so no state is carried between windows and the "
                              "loss covers the whole window; make it hold whole sequences")


def validate_training(model: ModelOptions, train: TrainOptions) -> None:
    """Raise :class:`OptionError` for model and training options that do not go together.

    A bidirectional model needs ``step_size = window_size``: its backward direction
    reads each sequence from the last frame, so every window must hold whole
    sequences (the trainer checks that ``window_size`` covers the longest sequence
    when it opens the data) and no state is carried from one window to the next.
    """
    if model.bidirectional and train.step_size != train.window_size:
        raise OptionError(f"bidirectional needs step_size = window_size (got {train.step_size} and "
                          f"{train.window_size}): the backward direction reads each sequence from "
                          "its last frame, so every window must hold whole sequences; set both to "
                          "at least the longest sequence")


def with_output_activation(model: ModelOptions, loss_type: str) -> ModelOptions:
    """``model`` with the output activation that ``loss_type`` trains (:data:`OUTPUT_OF_LOSS`).

    Raises :class:`OptionError` if ``model`` already names another non-identity
    activation (a softmax model cannot be trained with l2, nor a sigmoid one with xent),
    or sets ``quantiles`` for a loss other than quantile.
    """
    wanted = OUTPUT_OF_LOSS[loss_type]
    if model.output_activation not in ("identity", wanted):
        raise OptionError(f"output_activation {model.output_activation!r} does not fit loss_type "
                          f"{loss_type!r} (which trains {wanted!r} outputs)")
    if wanted != "quantile" and tuple(model.quantiles) != DEFAULT_QUANTILES:
        raise OptionError(f"quantiles only apply to loss_type 'quantile', not {loss_type!r}: "
                          "remove it or set loss_type = \"quantile\"")
    return dataclasses.replace(model, output_activation=wanted)


def option_names(cls) -> list[str]:
    """Names of the fields of an options dataclass, in declaration order."""
    return [f.name for f in fields(cls)]


def parse_value(cls, name: str, value: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML value) to the
    type of field ``name`` of ``cls``; raise :class:`OptionError` if it does not fit."""
    field_types = {f.name: f.type for f in fields(cls)}
    if name not in field_types:
        raise OptionError(f"unknown option {name!r}; valid options are: "
                          + ", ".join(option_names(cls)))
    kind = field_types[name]
    try:
        if kind == "bool":
            return _to_bool(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if not math.isfinite(result):
                raise ValueError
            return result
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "tuple[float, ...]":
            return _to_floats(value)
    except (TypeError, ValueError):
        pass
    else:
        raise OptionError(f"option {name!r} has unsupported type {kind}")
    expected = "list of numbers (comma-separated on --set)" if kind.startswith("tuple") else kind
    raise OptionError(f"option {name!r} expects a {expected}, got {value!r}")


def apply_overrides(options, overrides: Mapping[str, Any]):
    """Return a copy of ``options`` with ``overrides`` applied, type-checked and validated.

    Raises :class:`OptionError` for an unknown name (listing the valid names),
    a value of the wrong type, or an inconsistent combination.
    """
    cls = type(options)
    changes = {name: parse_value(cls, name, value) for name, value in overrides.items()}
    return dataclasses.replace(options, **changes).validate()


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split one flat ``{name: value}`` mapping into (model, train) overrides.

    Raises :class:`OptionError` for a name that is neither, listing all valid names.
    """
    model_names, train_names = set(option_names(ModelOptions)), set(option_names(TrainOptions))
    model, train = {}, {}
    for name, value in overrides.items():
        if name in model_names:
            model[name] = value
        elif name in train_names:
            train[name] = value
        else:
            raise OptionError(f"unknown option {name!r}; valid options are: "
                              + ", ".join(option_names(ModelOptions) + option_names(TrainOptions)))
    return model, train


def markdown_table() -> str:
    """``docs/OPTIONS.md``: every option with its type, default and meaning, model first."""
    lines = ["# Options", "",
             "Generated from `sophia/options.py` by `python -m sophia.options > docs/OPTIONS.md`;",
             "`tests/test_options.py` checks that it is current. Change a run with `train.py`'s",
             "OPTIONS block, a TOML config of `name = value` overrides (`--config`) or",
             "`--set name=value`, later ones winning.", ""]
    for cls, title in ((ModelOptions, "Model: the architecture, saved with the model"),
                       (TrainOptions, "Training: free to change between runs")):
        lines += [f"## {title}", "", "| option | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type} | `{f.default!r}` | {_cell(f.metadata['help'])} |"
                  for f in fields(cls)]
        lines.append("")
    return "\n".join(lines)


def to_dict(options) -> dict:
    """The options as a plain JSON-ready dict."""
    return dataclasses.asdict(options)


def from_dict(cls, values: Mapping[str, Any]):
    """Rebuild options of class ``cls`` from :func:`to_dict`'s output, checking each value."""
    return apply_overrides(cls(), values)


def _cell(text: str) -> str:
    """``text`` inside a Markdown table cell (its ``|`` escaped)."""
    return text.replace("|", "\\|")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(value)


def _to_floats(value: Any) -> tuple[float, ...]:
    """A tuple of finite floats from a list/tuple (TOML, JSON) or a comma-separated string."""
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)):
        raise ValueError(value)
    result = []
    for item in value:
        if isinstance(item, bool):
            raise ValueError(item)
        number = float(item)
        if not math.isfinite(number):
            raise ValueError(item)
        result.append(number)
    return tuple(result)


def _check_quantiles(levels) -> None:
    """Quantile levels: non-empty, each strictly inside (0, 1), strictly increasing."""
    levels = tuple(levels)
    if not levels:
        raise OptionError("option 'quantiles' must list at least one level in (0, 1); got none")
    outside = [q for q in levels if not 0.0 < q < 1.0]
    if outside:
        raise OptionError(f"option 'quantiles' must hold levels strictly inside (0, 1); got {outside[0]!r}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise OptionError(f"option 'quantiles' must be sorted and distinct (strictly increasing); "
                          f"got {list(levels)}")


def _non_defaults(options, names) -> list[str]:
    """Those of ``names`` whose value in ``options`` differs from the field's default."""
    defaults = {f.name: f.default for f in fields(options)}
    return [name for name in names if getattr(options, name) != defaults[name]]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(f"option {name!r} must be one of {', '.join(choices)}; got {value!r}")


def _check_range(name, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        bounds = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        if hi is not None:
            bounds += f"{' and ' if bounds else ''}{'<' if hi_open else '<='} {hi}"
        raise OptionError(f"option {name!r} must be {bounds}; got {value!r}")


if __name__ == "__main__":
    print(markdown_table(), end="")
