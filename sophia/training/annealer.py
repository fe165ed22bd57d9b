"""Learning-rate annealing with patience: a small, pure state machine.

After each epoch the trainer hands the dev loss to :meth:`Annealer.observe`
and obeys the :class:`Decision` it gets back: save the best model, save the
pivot (the model a rollback returns to), roll back to the pivot, change the
learning rate, or stop. The annealer touches no files and no PyTensor
objects, so it can be tested with a scripted list of losses; its state is the
JSON-ready dict of :meth:`Annealer.state_dict`, which :meth:`Annealer.load_state`
restores (``train.py --resume``). Its settings are validated where every option
is, by :class:`sophia.options.TrainOptions`; build it with
:meth:`Annealer.from_options`.

Rules, applied to each observed loss (NaN or inf counts as worse):

- loss < best loss: ``save_best``.
- loss < previous loss, and not above ``diverge_ratio`` × best loss (for a loss
  that can be negative, as a log-likelihood: best + (ratio − 1)·|best|): retries reset
  to 0, ``save_pivot``. (A run that collapses from a good model back to a plateau
  would otherwise find "better than previous" epochs on the plateau's noise and
  never roll back.) With
  ``patience_from_best``, only a new best does that, and the pivot is always the
  best model: on a noisy dev loss, epochs that merely beat the previous one would
  keep resetting the patience, so the learning rate would never decay.
- otherwise retries += 1; when retries > ``max_retry``: lr *= ``lr_decay_rate``,
  ``rollback`` to the pivot, retries = 0, previous loss = the pivot's loss.
- stop when lr < ``lr_lower_bound``, epochs >= ``max_epochs`` (if > 0),
  elapsed hours >= ``max_hours`` (if > 0) or the loss <= ``target_loss`` (if > 0).
- the largest absolute error passed with the loss <= ``target_max_error`` (if > 0),
  or the training streak passed with it >= ``target_streak`` (if > 0):
  stop, and ``save_best`` whatever the loss (the model that met the goal is the one
  to keep), with no rollback.

Before the first finite loss there is no evaluated pivot: the trainer should
save the initial model as the pivot before the first epoch, so that an early
rollback restores it.

Example
-------
>>> a = Annealer(lr_init=1e-3, lr_lower_bound=1e-4, lr_decay_rate=0.5, max_retry=1)
>>> [a.observe(x).reason for x in (1.0, 0.8, 0.9, 0.95)]
['new best', 'new best', 'worse (retry 1/1)', 'rollback: lr 0.001 -> 0.0005']
>>> a.lr, a.previous_loss
(0.0005, 0.8)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_STATE_KEYS = ("lr", "best_loss", "pivot_loss", "previous_loss", "retries", "epochs")


@dataclass(frozen=True)
class Decision:
    """What the trainer must do after an epoch (immutable).

    Attributes
    ----------
    save_best : bool
        The model is the best so far: save it as the best model.
    save_pivot : bool
        Save the current model as the pivot.
    rollback : bool
        Restore the pivot's parameters and reset the optimizer's state.
    lr : float
        The learning rate to use from now on.
    stop : bool
        Training is over.
    reason : str
        Short text for the log, e.g. ``"worse (retry 1/2)"``.
    epoch : int
        How many epochs the annealer has observed, this one included.
    """

    save_best: bool
    save_pivot: bool
    rollback: bool
    lr: float
    stop: bool
    reason: str
    epoch: int


class Annealer:
    """Patience-based learning-rate schedule with rollback to a pivot.

    Parameters
    ----------
    lr_init : float
        Initial learning rate (> 0).
    lr_lower_bound : float
        Stop once the learning rate falls below this (>= 0).
    lr_decay_rate : float
        Factor applied to the learning rate at each rollback, in (0, 1].
    max_retry : int
        Worse evaluations tolerated in a row before a rollback (>= 0).
    max_epochs : int, optional
        Stop after this many observed epochs; 0 means no limit.
    max_hours : float, optional
        Stop once this many hours have passed since construction; 0 means no limit.
    target_loss : float, optional
        Stop once an observed loss is at or below this ("good enough"); 0 means never.
    target_max_error : float, optional
        Stop once an observed largest absolute error is at or below this (every
        target right to within it); 0 means never.
    diverge_ratio : float, optional
        A loss above this many times the best loss (``best + (ratio - 1) |best|``,
        which is the same for a positive best and still holds for a negative one)
        counts as worse even when it beats the previous one, so a collapsed run
        rolls back; 0 means off.
    patience_from_best : bool, optional
        Count the patience from the last new best instead of the last improvement on
        the previous evaluation.
    target_streak : int, optional
        Stop once an observed training streak (target frames in a row that were
        right) is at least this; 0 means never.
    clock : callable, optional
        Returns seconds as a float (default :func:`time.monotonic`); tests pass a
        fake clock.

    The settings are taken as given: :class:`sophia.options.TrainOptions`
    validates them (:meth:`from_options`).

    Attributes
    ----------
    lr, best_loss, pivot_loss, previous_loss : float
        Current state; losses are ``math.inf`` until a finite loss is seen.
    retries, epochs : int
        Worse evaluations since the last improvement or rollback; epochs observed.
    """

    def __init__(self, lr_init: float, lr_lower_bound: float, lr_decay_rate: float,
                 max_retry: int, max_epochs: int = 0, max_hours: float = 0.0,
                 target_loss: float = 0.0, diverge_ratio: float = 0.0,
                 target_max_error: float = 0.0, patience_from_best: bool = False,
                 target_streak: int = 0, clock: Callable[[], float] = time.monotonic):
        self.lr_lower_bound = float(lr_lower_bound)
        self.lr_decay_rate = float(lr_decay_rate)
        self.max_retry = int(max_retry)
        self.max_epochs = int(max_epochs)
        self.max_hours = float(max_hours)
        self.target_loss = float(target_loss)
        self.target_max_error = float(target_max_error)
        self.patience_from_best = bool(patience_from_best)
        self.target_streak = int(target_streak)
        self.diverge_ratio = float(diverge_ratio)
        self.lr = float(lr_init)
        self.best_loss = math.inf
        self.pivot_loss = math.inf
        self.previous_loss = math.inf
        self.retries = 0
        self.epochs = 0
        self._clock = clock
        self._start = clock()

    @classmethod
    def from_options(cls, train_options, clock: Callable[[], float] = time.monotonic) -> "Annealer":
        """An annealer configured by :class:`sophia.options.TrainOptions`."""
        o = train_options
        return cls(o.lr_init_val, o.lr_lower_bound, o.lr_decay_rate, o.max_retry,
                   max_epochs=o.max_epochs, max_hours=o.max_hours, target_loss=o.target_dev_loss,
                   diverge_ratio=o.diverge_ratio, target_max_error=o.target_dev_max_error,
                   patience_from_best=o.patience_from_best, target_streak=o.target_train_streak,
                   clock=clock)

    def start_from(self, loss: float) -> None:
        """Make ``loss`` (the starting model's) the best, pivot and previous loss to beat.

        A non-finite loss is ignored: the first finite evaluation then sets them.
        """
        if math.isfinite(loss):
            self.best_loss = self.pivot_loss = self.previous_loss = float(loss)

    def exhaust_patience(self) -> None:
        """Use up the retries, so the next worse evaluation rolls back at once
        (for a diverged run, where waiting is pointless)."""
        self.retries = self.max_retry

    def observe(self, dev_loss: float, max_error: float = math.nan, train_streak: int = 0) -> Decision:
        """Take one epoch's dev loss (and the largest absolute error and the training
        streak, which only the ``target_max_error`` and ``target_streak`` rules read)
        and return what to do.

        As a side effect, updates the annealer's state (``lr``, losses,
        ``retries``, ``epochs``). A NaN or infinite loss counts as worse.
        """
        loss = float(dev_loss) if math.isfinite(dev_loss) else math.inf
        self.epochs += 1
        goal = ("target_dev_max_error" if self.target_max_error > 0 and float(max_error) <= self.target_max_error
                else "target_train_streak" if 0 < self.target_streak <= train_streak else "")
        if goal:
            # The run's goal is met: keep this model (the best by loss may still err more).
            self.best_loss = loss
            return Decision(save_best=True, save_pivot=False, rollback=False, lr=self.lr,
                            stop=True, reason=f"stop: {goal} reached (model saved as best)",
                            epoch=self.epochs)
        save_best = loss < self.best_loss
        # "ratio x best", measured from the best, so that it holds for losses below 0 too
        # (a negative log-likelihood): above best + (ratio - 1) |best|.
        diverged = (self.diverge_ratio > 0 and math.isfinite(self.best_loss)
                    and loss > self.best_loss + (self.diverge_ratio - 1) * abs(self.best_loss))
        if self.patience_from_best:
            save_pivot = save_best
        else:
            save_pivot = loss < self.previous_loss and not diverged
        rollback = False
        if save_best:
            self.best_loss = loss
        if save_pivot:
            self.retries = 0
            self.pivot_loss = self.previous_loss = loss
            reason = "new best" if save_best else "better than previous"
        else:
            word = ("diverged" if diverged and loss < self.previous_loss
                    else "no new best" if self.patience_from_best else "worse")
            self.retries += 1
            self.previous_loss = loss
            reason = f"{word} (retry {self.retries}/{self.max_retry})"
            if self.retries > self.max_retry:
                rollback = True
                old_lr, self.lr = self.lr, self.lr * self.lr_decay_rate
                self.retries = 0
                self.previous_loss = self.pivot_loss
                reason = f"rollback: lr {old_lr:.3g} -> {self.lr:.3g}"
        stop_reason = self._stop_reason(loss)
        if stop_reason:
            kept = rollback or save_best        # say so: the last epoch's model was saved
            reason = f"{reason}; {stop_reason}" if kept else stop_reason
        return Decision(save_best=save_best, save_pivot=save_pivot, rollback=rollback,
                        lr=self.lr, stop=bool(stop_reason), reason=reason,
                        epoch=self.epochs)

    def elapsed_hours(self) -> float:
        """Hours since construction (or, after :meth:`load_state`, since the run began)."""
        return (self._clock() - self._start) / 3600.0

    def _stop_reason(self, loss: float) -> str:
        if self.target_loss > 0 and loss <= self.target_loss:
            return "stop: target_dev_loss reached"
        if self.lr < self.lr_lower_bound:
            return "stop: lr below lower bound"
        if self.max_epochs > 0 and self.epochs >= self.max_epochs:
            return "stop: max_epochs reached"
        if self.max_hours > 0 and self.elapsed_hours() >= self.max_hours:
            return "stop: max_hours reached"
        return ""

    def state_dict(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (infinite losses as None), elapsed time in
        seconds so that a resumed run keeps its time budget. Changes nothing."""
        d = {key: getattr(self, key) for key in _STATE_KEYS}
        for key in ("best_loss", "pivot_loss", "previous_loss"):
            d[key] = d[key] if math.isfinite(d[key]) else None
        d["elapsed_seconds"] = self._clock() - self._start
        return d

    def load_state(self, d: Mapping[str, Any]) -> None:
        """Take the state :meth:`state_dict` returned; raise ValueError if malformed.

        Side effect: replaces the learning rate, losses, counters and elapsed time.
        """
        missing = [k for k in _STATE_KEYS + ("elapsed_seconds",) if k not in d]
        if missing:
            raise ValueError(f"annealer state lacks {', '.join(missing)}")
        self.lr = float(d["lr"])
        for key in ("best_loss", "pivot_loss", "previous_loss"):
            setattr(self, key, math.inf if d[key] is None else float(d[key]))
        self.retries, self.epochs = int(d["retries"]), int(d["epochs"])
        self._start = self._clock() - float(d["elapsed_seconds"])
