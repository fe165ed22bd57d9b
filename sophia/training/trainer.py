"""The training loop: BPTT(h; h') epochs, dev evaluation, annealing, workspace files.

:class:`Trainer` opens the train and dev splits, builds the :class:`Net`,
writes the workspace (see :mod:`sophia.workspace` for the layout),
compiles ``f_train_step`` and ``f_fwd_propagate`` and runs epochs:

1. train ``frames_per_epoch`` new frames from an endless iterator whose
   streams (and the net's stored states) carry on from the previous epoch,
   counting the *training streak* (target frames in a row within
   ``streak_tolerance``); the epoch ends early once it reaches
   ``target_train_streak``;
2. evaluate the dev loss per target frame and the largest absolute error of a
   dev target over one finite pass (``step_size = window_size``,
   ``eval_batch_size`` streams, stored states zeroed first);
   — with ``ema_decay``, of the running average of the weights, which is also
   what the epoch saves; training goes on from the live weights;
3. hand them and the streak to the :class:`Annealer` and obey its decision: save
   the best model (``params.npz``), save the pivot, or roll back to the pivot
   with a smaller learning rate and a reset optimizer; stop when it says so.

With ``update_type = "hessian_free"`` step 1 runs Hessian-free steps instead
(:mod:`sophia.training.hf_training`; the graph on the scan engine, the fused and
oneDNN engines having no R-op): one per window of the iterator, which reads
windows of whole sequences (``step_size == window_size`` and ``whole_sequences``:
HF starts each window from zero states, so nothing is carried); the gradient
comes from all streams, the curvature from the first ``hf_curvature_batch_fraction``
of them, and the epoch record adds the steps' mean ρ, the final λ and the mean CG
iterations. HF has no learning rate, so a rollback
reloads the pivot and resets HF (:meth:`HessianFree.rollback_reset`: λ back to
``hf_init_damping``, the CG seed direction to zero), and the annealer's learning
rate only counts rollbacks: it still starts at ``lr_init_val`` and shrinks by
``lr_decay_rate`` at each, so the run stops at the first rollback that takes it
below ``lr_lower_bound``.

A bidirectional model (``ModelOptions.bidirectional``) trains and evaluates on
windows of whole sequences too: ``step_size == window_size``
(:func:`~sophia.options.validate_training`), a window that holds the longest train
and dev sequence (:func:`check_whole_sequences`), and ``whole_sequences`` in both
iterators, since its backward direction reads each sequence from its last frame.

A non-finite loss (NaN or inf in training or evaluation) ends the epoch and
forces a rollback. Before epoch 1 the initial model is saved as best and
pivot, and its dev loss (epoch 0) seeds the annealer, so every later "best"
beats the model training started from. Every file is written atomically after
every epoch, the resume checkpoint last (:mod:`sophia.training.checkpoint`): a
run killed at any moment leaves a loadable workspace, and
:meth:`Trainer.resume` continues it from its last completed epoch exactly as
if it had never stopped.

Example
-------
>>> from sophia.options import ModelOptions, TrainOptions
>>> trainer = Trainer(ModelOptions(net_width=16, net_depth=1),
...                   TrainOptions(frames_per_epoch=5000, max_epochs=3),
...                   data_dir="data/demo-adding", save_to="workspaces/try")  # doctest: +SKIP
>>> result = trainer.run()                                                     # doctest: +SKIP
>>> result.best_dev_loss < result.baseline                                     # doctest: +SKIP
True
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sophia.graph import noise
from sophia.graph.engines import describe
from sophia.graph.modes import compile_mode, hessian_free_mode
from sophia.graph.net import Net
from sophia.graph.output_layout import num_channels
from sophia.optim.losses import CATEGORICAL
from sophia.options import (ModelOptions, OptionError, TrainOptions, to_dict, validate_training,
                            with_output_activation)
from sophia.training import checkpoint, hf_training
from sophia.training.annealer import Annealer, Decision
from sophia.data.dataset import Dataset, check_targets, check_tokens, id_order
from sophia.training.baselines import (categorical_baseline, gaussian_baseline, mean_baseline,
                                       quantile_baseline)
from sophia.data.vocab import VOCAB_FILE, read_vocab
from sophia.training.iterator import BPTTIterator
from sophia.training.linear_start import start_linear
from sophia.training.memory import keep_freed_memory
from sophia.training.metrics import format_epoch_line, plot_learning_curve
from sophia.training.progress import Progress
from sophia.workspace import (CURVE, METRICS, PARAMS, PIVOT, RESUME, RunOptions, Workspace,
                              WorkspaceError, load_params, load_run_options, save_run_options,
                              set_params)

FINAL_TRAIN_SAMPLE = 2000            # training sequences the final report evaluates at most
# Training options a resumed run cannot change: they shape the carried states,
# the iterator's buffers or the optimizer's state.
FIXED_ON_RESUME = ("batch_size", "window_size", "step_size", "force_type", "update_type",
                   "ema_decay")


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with: the best model's losses per target frame (the training
    loss over at most ``FINAL_TRAIN_SAMPLE`` sequences of the split, drawn with the seed)."""

    workspace: str
    epochs: int
    best_dev_loss: float
    best_train_loss: float
    baseline: float
    stop_reason: str


def open_data(data_dir: str, model: ModelOptions, ids: list[str] | None = None,
              loss_type: str = "l2"):
    """Open train and dev; fill in dims, ``num_ids`` and the output activation
    ``loss_type`` trains (:func:`~sophia.options.with_output_activation`).

    ``ids`` (a loaded model's ``ids.order``) replaces ``id_order(train)``.
    Returns ``(train, dev, model_options, ids)``; raises DatasetError for bad
    data (for xent and bce, targets that do not fit the loss, naming the file
    and frame: :func:`~sophia.data.dataset.check_targets`; with ``vocab_size``,
    inputs that are not token indices: :func:`~sophia.data.dataset.check_tokens`;
    a bad ``vocab.json``: :func:`~sophia.data.vocab.read_vocab`), OptionError for a
    ``num_ids`` that contradicts the data or an output activation that
    contradicts ``loss_type``.
    """
    input_dim = 1 if model.vocab_size else model.input_dim        # token inputs: one index a frame
    train = Dataset.open(data_dir, "train", input_dim, model.target_dim)
    dev = Dataset.open(data_dir, "dev", train.input_dim, train.target_dim)
    for split in (train, dev):
        check_targets(split, loss_type)
        if model.vocab_size:
            check_tokens(split, model.vocab_size)
    vocab_file = os.path.join(data_dir, VOCAB_FILE)
    if os.path.exists(vocab_file):
        read_vocab(vocab_file, model.vocab_size)
    model = with_output_activation(model, loss_type)
    ids = id_order(train) if ids is None else ids
    num_ids = model.num_ids
    if model.learn_id_embedding:
        if num_ids not in (0, len(ids)):
            raise OptionError(f"num_ids is {num_ids}, but the training data has {len(ids)} "
                              "sequence IDs (set num_ids = 0 to take it from the data)")
        num_ids = len(ids)
    model = dataclasses.replace(model, input_dim=train.input_dim, target_dim=train.target_dim,
                                num_ids=num_ids).validate()
    return train, dev, model, ids


def check_batch_norm(model: ModelOptions, train_options: TrainOptions, dataset: Dataset) -> None:
    """Raise OptionError if batch norm cannot train on this data with these options.

    Batch statistics need B >= 2 synchronized streams whose frame t is the same
    time step: frame indices, not timestamps.
    """
    if not model.batch_norm:
        return
    if train_options.update_type == "hessian_free":
        raise OptionError("batch_norm cannot train with update_type 'hessian_free': HF steps do "
                          "not update the population statistics")
    if dataset.has_time:
        raise OptionError(f"batch_norm needs frame-indexed sequences, but {dataset.root} has "
                          ".time files; train without batch_norm (layer_norm works with them)")
    if train_options.batch_size < 2:
        raise OptionError(f"batch_norm needs batch_size >= 2; got {train_options.batch_size}")


def check_whole_sequences(model: ModelOptions, train_options: TrainOptions, *splits: Dataset) -> None:
    """Raise OptionError if a bidirectional model's windows could not hold whole
    sequences: the longest sequence of ``splits`` must fit in ``window_size``
    (:func:`~sophia.options.validate_training` has checked ``step_size = window_size``)."""
    if not model.bidirectional:
        return
    window = train_options.window_size
    for split in splits:
        longest = max(split.sequences, key=lambda s: s.length, default=None)
        if longest is not None and longest.length > window:
            raise OptionError(f"bidirectional needs window_size >= the longest sequence, but "
                              f"{split.root}/{split.split}.list has {longest.path} of {longest.length} "
                              f"frames and window_size is {window}: the backward direction reads each "
                              f"sequence from its last frame; set window_size and step_size to at "
                              f"least {longest.length}")


def _ratio(right: float, judged: float) -> float:
    """``right / judged``, NaN when nothing was judged."""
    return right / judged if judged else math.nan


class Trainer:
    """One training run into one workspace.

    Parameters
    ----------
    model_options, train_options : the run's options (dims and num_ids may be 0: from the data)
    data_dir : dataset directory (see :mod:`sophia.data.dataset`)
    save_to : workspace directory (created; its files are replaced)
    seed : seeds the net's initialisation and the iterators' shuffling
    init_from : a workspace to start from: its ``params.npz`` and ``ids.order``
        (``model_options`` must be its architecture). It may equal ``save_to``,
        whose metrics log then goes on; otherwise an old log in ``save_to`` is removed.
    out, progress : streams for the log (stdout) and the progress bar (stderr)

    Side effects of construction: writes ``options.json``, ``ids.order``, the
    preprocessing files and the initial model as ``params.npz`` and the pivot, and
    removes an earlier run's resume checkpoint.
    Raises DatasetError, OptionError, WorkspaceError, or ValueError if the
    loaded parameters do not fit.
    """

    def __init__(self, model_options: ModelOptions, train_options: TrainOptions, data_dir: str,
                 save_to: str, *, seed: int = 0, init_from: str | None = None, out=None, progress=None):
        self._prepare(train_options, seed, data_dir, out, progress)
        init_values, ids = None, None
        if init_from is not None:                   # read before save_to (maybe the same) changes
            source = Workspace(init_from, create=False)
            init_values, ids = load_params(source), source.read_ids_order()
        self._open(model_options, ids)
        if init_values is not None:
            if num_channels(model_options) != num_channels(self.model_options):
                raise OptionError(f"--load_from {init_from}: its model has "
                                  f"{model_options.output_activation!r} outputs, but loss_type "
                                  f"{train_options.loss_type!r} trains "
                                  f"{self.model_options.output_activation!r} outputs (another "
                                  "output layer): train a new model")
            set_params(source, self.net, init_values)
        elif self.model_options.input_skip:         # a new net starts as the least-squares fit
            self.linear_start = start_linear(self.net, self.train_set)
        self.ws = Workspace(save_to)
        same = init_from is not None and Path(init_from).resolve() == self.ws.path.resolve()
        if not same and self.ws.has(METRICS):
            os.remove(self.ws.file(METRICS))       # a fresh run starts a fresh log
        if self.ws.has(RESUME):
            os.remove(self.ws.file(RESUME, ".npz"))  # an old run's state is not this run's
        self._write_setup()

    @classmethod
    def resume(cls, workspace: str, train_options: TrainOptions | None = None,
               data_dir: str | None = None, *, out=None, progress=None) -> "Trainer":
        """The run of ``workspace``, ready to continue from its last completed epoch.

        ``train_options`` (default: the saved ones) may change what does not shape
        the saved state (:data:`FIXED_ON_RESUME` lists what does); ``data_dir``
        (default: the saved one) must hold the same data. Writes nothing: changed
        training options go to ``options.json`` once :meth:`run` has restored the
        saved state, so a resume that fails leaves the workspace as it was.
        Raises WorkspaceError for a workspace without a checkpoint (naming
        ``--load_from``), OptionError for a change of a fixed option, DatasetError.
        """
        ws = Workspace(workspace, create=False)
        run = load_run_options(ws)
        saved = checkpoint.load(ws)
        train_options = run.train if train_options is None else train_options
        fixed = [f"{name}: saved {getattr(run.train, name)!r}, requested {getattr(train_options, name)!r}"
                 for name in FIXED_ON_RESUME if getattr(run.train, name) != getattr(train_options, name)]
        if fixed:
            raise OptionError("--resume cannot change options that shape the saved state: "
                              + "; ".join(fixed))
        self = cls.__new__(cls)
        self._prepare(train_options, run.seed, data_dir or run.data_dir, out, progress)
        self._open(run.model, ws.read_ids_order())
        if self.model_options.output_activation != run.model.output_activation:
            raise OptionError(f"--resume cannot change loss_type from {run.train.loss_type!r} to "
                              f"{train_options.loss_type!r}: the saved model has "
                              f"{run.model.output_activation!r} outputs")
        if self.model_options != run.model:
            raise WorkspaceError(f"{self.data_dir} no longer fits {ws.file('options', '.json')}: "
                                 f"input_dim/target_dim/num_ids {self.model_options.input_dim}/"
                                 f"{self.model_options.target_dim}/{self.model_options.num_ids}, saved "
                                 f"{run.model.input_dim}/{run.model.target_dim}/{run.model.num_ids}")
        set_params(ws, self.net, saved.net, RESUME)
        self.ws, self._checkpoint = ws, saved
        if train_options != run.train:
            self._changed_options = RunOptions(run.model, train_options, run.seed, self.data_dir)
        return self

    @property
    def finished(self) -> str:
        """The stop reason of a resumed run that had already finished ('' otherwise)."""
        return self._checkpoint.meta.get("finished", "") if self._checkpoint else ""

    def _prepare(self, train_options, seed, data_dir, out, progress) -> None:
        self.train_options, self.seed, self.data_dir = train_options.validate(), seed, data_dir
        self.out, self.progress = out or sys.stdout, progress or sys.stderr
        self._checkpoint, self.hf, self.linear_start = None, None, None
        self._changed_options = None        # a resume's new training options, saved once its state fits
        self.v_noise_rng = noise.shared_generator(seed)   # dropout and input_noise draw from it

    def _open(self, model_options: ModelOptions, ids: list[str] | None) -> None:
        """Open the data and build the net (its parameters freshly initialised)."""
        validate_training(model_options, self.train_options)
        self.train_set, self.dev_set, self.model_options, self.ids = open_data(
            self.data_dir, model_options, ids, self.train_options.loss_type)
        check_batch_norm(self.model_options, self.train_options, self.train_set)
        check_whole_sequences(self.model_options, self.train_options, self.train_set, self.dev_set)
        self.id_index = {seq_id: n for n, seq_id in enumerate(self.ids)}
        self.net = Net(self.model_options, seed=self.seed)

    def _write_setup(self) -> None:
        save_run_options(self.ws, RunOptions(self.model_options, self.train_options,
                                             self.seed, self.data_dir))
        self.ws.write_ids_order(self.ids)
        self.ws.copy_preprocessing(self.data_dir)
        values = self.net.get_values()
        for name in (PARAMS, PIVOT):
            self.ws.save_arrays(name, values)

    # -- the run -------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until the annealer stops; load the best model and return its losses.

        Side effects: prints the log, writes the workspace files every epoch, and
        keeps freed memory in the process (:func:`~sophia.training.memory.keep_freed_memory`).
        """
        keep_freed_memory()
        self.print_summary()
        self.compile()
        o = self.train_options
        windows = BPTTIterator(self.train_set, self.id_index, o.batch_size, o.window_size,
                               o.step_size, repeat=True, seed=self.seed,
                               synchronized=self.model_options.batch_norm,
                               whole_sequences=self._whole_sequences(training=True))
        self.baseline_accuracy = None
        if self.categorical:
            self.baseline, self.baseline_accuracy = categorical_baseline(self.train_set, self.dev_set,
                                                                          o.loss_type)
        elif o.loss_type == "gaussian":
            self.baseline = gaussian_baseline(self.train_set, self.dev_set)
        elif o.loss_type == "quantile":
            self.baseline = quantile_baseline(self.train_set, self.dev_set, self.model_options.quantiles)
        else:
            self.baseline = mean_baseline(self.dev_set, o.loss_type, o.huber_delta)
        annealer = Annealer.from_options(o)
        if self._checkpoint is None:
            self._windows, self.train_streak = iter(windows), 0
            self._start_epochs(annealer)
        else:
            self._restore(self._checkpoint, windows, annealer)
        decision = None
        while decision is None or not decision.stop:
            decision = self._epoch(annealer)
        return self._finish(annealer, decision)

    def print_summary(self) -> None:
        """Print the options (the ``hf_*`` ones only for a Hessian-free run), seed, data
        sizes, number of IDs and of weights."""
        t, d = self.train_set, self.dev_set
        lines = [f"Sophia training: {self.data_dir} -> {self.ws.path}",
                 f"  data: {len(t)} train / {len(d)} dev sequences ({t.num_frames} / {d.num_frames} "
                 f"frames), input_dim {t.input_dim}, target_dim {t.target_dim}, {len(self.ids)} IDs",
                 f"  seed {self.seed}, {self.net.num_weights():,} weights"]
        if self.linear_start is not None:
            rms = ", ".join(f"{v:.4g}" for v in self.linear_start["rms"])
            lines.append(f"  input_skip: starts at the least-squares fit of the training targets on "
                         f"the input frames (training RMS {rms}); the output layer's weights at 0")
        hf = self.train_options.update_type == "hessian_free"
        for title, options in (("model", self.model_options), ("train", self.train_options)):
            text = " ".join(f"{k}={v}" for k, v in to_dict(options).items()
                            if hf or not k.startswith("hf_"))     # HF's settings only where they apply
            lines += textwrap.wrap(text, 96, initial_indent=f"  {title}: ", subsequent_indent="    ")
        self._log("\n".join(lines))

    def compile(self) -> None:
        """Compile ``f_train_step`` (or, for ``hessian_free``, the HF driver ``hf``),
        ``f_reset`` and ``f_fwd_propagate``; print the times and engines."""
        o, mode = self.train_options, self.train_options.compile_mode
        start = time.monotonic()
        if o.update_type == "hessian_free":
            self.hf = hf_training.compile_hf(self.net, o)
            self.f_reset, self.v_states, self.optimizer = self.hf.rollback_reset, [], None
            trained = "HF functions"
        else:
            self.f_train_step, self.v_states, self.optimizer = self.net.compile_train_step(
                o, v_rng=self.v_noise_rng)
            self.f_reset = self.optimizer.compile_reset(compile_mode(mode))
            trained = "f_train_step"
        middle = time.monotonic()
        eval_options = dataclasses.replace(o, step_size=o.window_size, batch_size=self._eval_batch())
        self.f_fwd, self.v_eval_states = self.net.compile_fwd_propagate(eval_options)
        self._log(f"compiled ({mode}): {trained} {middle - start:.1f} s, "
                  f"f_fwd_propagate {time.monotonic() - middle:.1f} s")
        for graph, training in (("training", True), ("evaluation", False)):
            if training and self.hf is not None:
                self._log(f"  training engines: {hf_training.ENGINE_NOTE}, "
                          f"compiled {hessian_free_mode(mode)}")
                continue
            choices = self.net.choose_engines(mode, training=training, unroll=o.unroll_scan)
            self._log(f"  {graph} engines: {describe(choices)}")

    def evaluate(self, dataset: Dataset) -> float:
        """Loss per target frame of the current parameters over one pass of ``dataset``."""
        return self.measure(dataset)[0]

    @property
    def categorical(self) -> bool:
        """Whether the loss is xent or bce (outputs are probabilities, accuracy is reported)."""
        return self.train_options.loss_type in CATEGORICAL

    def measure(self, dataset: Dataset) -> tuple[float, float, float]:
        """``(loss per target frame, largest absolute error of a target element, accuracy)``
        of the current parameters over one pass of ``dataset`` (NaN, NaN, NaN without
        targets; the accuracy is NaN for the regression losses)."""
        o = self.train_options
        self.net.reset_states(self.v_eval_states)
        total, frames, max_error, hits = 0.0, 0.0, 0.0, np.zeros(2)
        for w in BPTTIterator(dataset, self.id_index, self._eval_batch(), o.window_size, o.window_size,
                              repeat=False, seed=self.seed, whole_sequences=self._whole_sequences()):
            loss_sum, n_frames, window_max, *counts = self.f_fwd(w.input_tbj, w.time_tb, w.id_tb,
                                                                 w.target_tbk)
            total, frames = total + float(loss_sum), frames + float(n_frames)
            max_error = max(max_error, float(window_max)) if math.isfinite(window_max) else math.inf
            hits += np.asarray(counts, dtype=np.float64) if counts else 0.0
        if not frames:
            return math.nan, math.nan, math.nan
        return total / frames, max_error, _ratio(*hits)

    def _whole_sequences(self, training: bool = False) -> bool:
        """Whether windows must hold whole sequences: for a bidirectional model (its
        backward direction starts at each sequence's last frame), and for the training
        windows of ``hessian_free`` (each starts from zero states)."""
        hf = training and self.train_options.update_type == "hessian_free"
        return self.model_options.bidirectional or hf

    def _eval_batch(self) -> int:
        return self.train_options.eval_batch_size or self.train_options.batch_size

    def _start_epochs(self, annealer: Annealer) -> None:
        """Evaluate the initial model (epoch 0) and make its dev loss the one to beat."""
        start = time.monotonic()
        loss, max_error, accuracy = self.measure(self.dev_set)
        annealer.start_from(loss)
        self.epoch_offset = max((r.get("epoch") or 0 for r in self.ws.read_metrics()), default=0)
        self._record({"epoch": self.epoch_offset, "dev_loss": loss, "dev_max_error": max_error,
                      "baseline": self.baseline, **self._accuracies(dev=accuracy),
                      "lr": annealer.lr, "decision": "initial model",
                      "eval_seconds": time.monotonic() - start})
        self._save_checkpoint(annealer)

    def _save_checkpoint(self, annealer: Annealer, finished: str = "") -> None:
        """Write the run's whole state (:mod:`sophia.training.checkpoint`), atomically."""
        position, arrays = self._windows.state()
        checkpoint.Checkpoint(
            net=self.net.get_values(), states=[v.get_value() for v in self.v_states],
            optimizer=[v.get_value() for v in self._optimizer_state()], iterator_arrays=arrays,
            meta={"annealer": annealer.state_dict(), "iterator": position,
                  "train_streak": self.train_streak, "epoch_offset": self.epoch_offset,
                  "metrics_records": self._records, "finished": finished,
                  "noise": noise.generator_state(self.v_noise_rng)},
            hf=self.hf.state_dict() if self.hf is not None else {}).save(self.ws)

    def _optimizer_state(self) -> list:
        """The first-order optimizer's state variables (none for ``hessian_free``)."""
        return [] if self.optimizer is None else self.optimizer.v_state

    def _restore(self, saved: checkpoint.Checkpoint, windows: BPTTIterator, annealer: Annealer) -> None:
        """Continue from ``saved``: the iterator, annealer, stored states, optimizer
        (or HF) state and metrics log as they were (the parameters were set by :meth:`resume`),
        then save the resume's changed training options. Raises WorkspaceError if the
        checkpoint does not fit this run (nothing written then)."""
        path = self.ws.file(RESUME, ".npz")
        meta = saved.meta
        try:
            self._windows = windows.restore(meta["iterator"], saved.iterator_arrays)
            annealer.load_state(meta["annealer"])
            self.train_streak, self.epoch_offset = int(meta["train_streak"]), int(meta["epoch_offset"])
            records = int(meta["metrics_records"])
            if "noise" in meta:                 # checkpoints of 0.2.0 have none (and no noise)
                noise.set_generator_state(self.v_noise_rng, meta["noise"])
            if self.hf is not None:
                self.hf.load_state(saved.hf)
        except (KeyError, TypeError, ValueError) as error:
            raise WorkspaceError(f"{path}: the saved training state does not fit this run: "
                                 f"{type(error).__name__}: {error}") from error
        for kind, variables, values in (("stored states", self.v_states, saved.states),
                                        ("optimizer state", self._optimizer_state(), saved.optimizer)):
            shapes = [v.get_value(borrow=True).shape for v in variables]
            if [np.shape(x) for x in values] != shapes:
                raise WorkspaceError(f"{path}: the {kind} do not fit this run's net and options")
            for v, value in zip(variables, values):
                v.set_value(np.asarray(value, dtype=v.dtype))
        if self._changed_options is not None:
            save_run_options(self.ws, self._changed_options)
        self.ws.keep_metrics(records)
        self._records = records
        plot_learning_curve(self.ws.read_metrics(), self.ws.file(CURVE))
        self._log(f"resumed {self.ws.path} after epoch {self.epoch_offset + annealer.epochs} "
                  f"(lr {annealer.lr:.3g}, best dev loss {annealer.best_loss:.4g})")

    def _epoch(self, annealer: Annealer) -> Decision:
        lr, epoch = annealer.lr, self.epoch_offset + annealer.epochs + 1
        if self.hf is None:
            train_loss, frames, seconds, finite, train_accuracy = self._train_frames(lr, f"epoch {epoch}")
            hf_fields = {}
        else:
            train_loss, frames, seconds, finite, hf_fields = self._hf_frames(f"epoch {epoch}")
            train_accuracy = None               # HF steps count no hits: no train accuracy
        start = time.monotonic()
        live = self._use_average()
        dev_loss, dev_max_error, dev_accuracy = (self.measure(self.dev_set) if finite
                                                 else (math.inf, math.inf, math.nan))
        prefix = ""
        if not math.isfinite(dev_loss):
            annealer.exhaust_patience()
            prefix = "non-finite loss; "
        streak = self.train_streak
        decision = annealer.observe(dev_loss, dev_max_error, streak)
        self._obey(decision)
        if live is not None and not decision.rollback:
            self.net.set_values(live)          # training goes on from the live weights
        self._record({"epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss,
                      "dev_max_error": dev_max_error, "train_streak": streak,
                      "baseline": self.baseline, **self._accuracies(train_accuracy, dev_accuracy),
                      "lr": lr, **hf_fields, "decision": prefix + decision.reason,
                      "frames": frames, "seconds": seconds,
                      "eval_seconds": time.monotonic() - start})
        self._save_checkpoint(annealer, decision.reason if decision.stop else "")
        return decision

    def _accuracies(self, train=None, dev=None) -> dict:
        """The accuracy fields of an epoch record: ``train_accuracy`` (over the epoch's
        training windows, live weights), ``dev_accuracy`` and ``baseline_accuracy`` (of
        always predicting the most frequent class); none for the regression losses."""
        if not self.categorical:
            return {}
        fields = {"dev_accuracy": dev, "baseline_accuracy": self.baseline_accuracy}
        return {"train_accuracy": train, **fields} if train is not None else fields

    def _use_average(self) -> dict | None:
        """With ``ema_decay``, put the running average of the weights into the net
        (what the epoch is evaluated and saved as) and return the live values to
        restore; else None."""
        if self.train_options.ema_decay == 0:
            return None
        live = self.net.get_values()
        self.net.set_values({**live, **dict(zip(self.net.v_params, self.optimizer.averaged_values()))})
        return live

    def _train_frames(self, lr: float, label: str):
        """Train ``frames_per_epoch`` new frames.

        Returns ``(train loss per target frame, frames, seconds, finite, accuracy)``;
        stops early, with ``finite`` False and an infinite loss, at the first
        non-finite loss or gradient norm. The loss is NaN if no frame had a target;
        the accuracy (of the categorical losses, counted before each update) is NaN
        then and for the regression losses.
        """
        total, target_frames, frames, hits = 0.0, 0.0, 0, np.zeros(2)
        lr_value = np.asarray(lr, dtype=self.net.dtype)
        bar = Progress(self.progress, label, self.train_options.frames_per_epoch)
        start = time.monotonic()
        try:
            while frames < self.train_options.frames_per_epoch:
                w = next(self._windows)
                loss_sum, n_frames, grad_norm, max_error, *counts = self.f_train_step(
                    w.input_tbj, w.time_tb, w.id_tb, w.target_tbk, lr_value)
                if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                    return math.inf, frames, time.monotonic() - start, False, math.nan
                total, target_frames = total + float(loss_sum), target_frames + float(n_frames)
                hits += np.asarray(counts, dtype=np.float64) if counts else 0.0
                frames += w.new_frames
                bar.update(frames)
                if self._streak_reached(n_frames, max_error):
                    break
        finally:
            bar.close()
        loss = total / target_frames if target_frames else math.nan
        return loss, frames, time.monotonic() - start, True, _ratio(*hits)

    def _hf_frames(self, label: str):
        """HF steps over ``frames_per_epoch`` new frames (:func:`hf_training.train_frames`).

        Returns ``(train loss per target frame, frames, seconds, finite, HF record fields)``.
        """
        o = self.train_options
        bar = Progress(self.progress, label, o.frames_per_epoch)
        start = time.monotonic()
        try:
            epoch = hf_training.train_frames(self.hf, self._windows, o.frames_per_epoch,
                                             o.hf_curvature_batch_fraction, bar.update)
        finally:
            bar.close()
        return epoch.loss, epoch.frames, time.monotonic() - start, epoch.finite, epoch.fields

    def _streak_reached(self, n_frames: float, max_error: float) -> bool:
        """Count a step's target frames into ``train_streak`` (target frames in a row with
        every element within ``streak_tolerance``; a step with a wrong one restarts it
        at 0, wherever in the step it was); True once ``target_train_streak`` is met."""
        o = self.train_options
        if n_frames > 0:
            right = float(max_error) <= o.streak_tolerance
            self.train_streak = self.train_streak + int(n_frames) if right else 0
        return 0 < o.target_train_streak <= self.train_streak

    def _obey(self, decision: Decision) -> None:
        """Save best / pivot, or roll back to the pivot (the optimizer and stored states
        reset; for ``hessian_free``, λ and the CG direction: ``f_reset`` is
        :meth:`HessianFree.rollback_reset`)."""
        if decision.rollback:
            self.train_streak = 0              # the streak belongs to the model rolled away from
            self.net.set_values(self.ws.load_arrays(PIVOT))
            self.f_reset()
            self.net.reset_states(self.v_states)
        values = self.net.get_values()
        if decision.save_best:
            self.ws.save_arrays(PARAMS, values)
        if decision.save_pivot:
            self.ws.save_arrays(PIVOT, values)

    def _record(self, record: dict) -> None:
        self._log(format_epoch_line(record))
        self.ws.append_metrics(record)
        records = self.ws.read_metrics()
        self._records = len(records)
        plot_learning_curve(records, self.ws.file(CURVE))

    def _finish(self, annealer: Annealer, decision: Decision) -> TrainResult:
        self.net.set_values(self.ws.load_arrays(PARAMS))
        sample = self._train_sample()
        dev_loss, train_loss = self.evaluate(self.dev_set), self.evaluate(sample)
        of = f" (on {len(sample):,} of {len(self.train_set):,} sequences)" if sample is not self.train_set else ""
        accuracy = ""
        if self.categorical:
            accuracy = (f"; dev accuracy {self.measure(self.dev_set)[2]:.4g} "
                        f"(majority {self.baseline_accuracy:.4g})")
        self._log(f"{decision.reason}; best model ({self.ws.file(PARAMS, '.npz')}): "
                  f"train {train_loss:.4g}{of}  dev {dev_loss:.4g}  (baseline {self.baseline:.4g})"
                  + accuracy)
        return TrainResult(os.fspath(self.ws.path), annealer.epochs, dev_loss, train_loss,
                           self.baseline, decision.reason)

    def _train_sample(self) -> Dataset:
        """The training split, or ``FINAL_TRAIN_SAMPLE`` of its sequences drawn with the
        seed if it is larger (a pass over 250,000 long sequences takes minutes)."""
        t = self.train_set
        if len(t) <= FINAL_TRAIN_SAMPLE:
            return t
        rng = np.random.default_rng(self.seed)
        return t.subset(np.sort(rng.choice(len(t), FINAL_TRAIN_SAMPLE, replace=False)))

    def _log(self, text: str) -> None:
        print(text, file=self.out, flush=True)
