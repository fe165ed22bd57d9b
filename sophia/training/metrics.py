"""Per-epoch metrics: the console line and the learning-curve plot.

A record is the dict the trainer appends to ``metrics.jsonl`` each epoch::

    {"epoch": 3, "train_loss": 0.1, "dev_loss": 0.12, "dev_max_error": 0.9,
     "baseline": 0.3, "lr": 1e-3, "decision": "new best", "frames": 123456,
     "seconds": 12.3}

Hessian-free runs add ``hf_steps``, ``hf_rejected``, ``hf_rho`` (mean ρ),
``hf_damping`` (λ after the epoch) and ``hf_cg_iterations`` (mean per step).
Runs with a categorical loss (xent, bce) add ``train_accuracy``, ``dev_accuracy``
and ``baseline_accuracy`` (always predicting the most frequent class); their
``baseline`` is the entropy of the training targets' class prior. A gaussian run's
``baseline`` is the NLL of one normal distribution fitted to the training targets, a
quantile run's the pinball loss of their empirical quantiles. Every key is optional; a missing or null value is left out of the line and
the plot. Matplotlib is optional: :func:`plot_learning_curve` imports it
lazily (Agg canvas, no pyplot, no global backend change) and returns False
without it.

Example
-------
>>> format_epoch_line({"epoch": 3, "train_loss": 0.1, "dev_loss": 0.12,
...                    "baseline": 0.3, "lr": 1e-3, "frames": 123456,
...                    "seconds": 12.3, "decision": "new best"})
'epoch 3  train 0.1  dev 0.12  (baseline 0.3)  lr 0.001  10.0k frames/s  new best'
"""
from __future__ import annotations

import io
import math
import os
from typing import Any, Mapping, Sequence

from sophia.atomic import atomic_write_bytes


def format_epoch_line(record: Mapping[str, Any]) -> str:
    """One-line human summary of an epoch's record (fields that are absent are skipped)."""
    parts = []
    if record.get("epoch") is not None:
        parts.append(f"epoch {record['epoch']}")
    for key, label in (("train_loss", "train"), ("dev_loss", "dev")):
        if key in record:
            parts.append(f"{label} {_num(record[key])}")
    if record.get("baseline") is not None:
        parts.append(f"(baseline {_num(record['baseline'])})")
    accuracies = [f"{label} {_num(record[key])}" for key, label in
                  (("train_accuracy", "train"), ("dev_accuracy", "dev")) if key in record]
    if accuracies:
        majority = record.get("baseline_accuracy")
        parts.append("accuracy " + " ".join(accuracies)
                     + (f" (majority {_num(majority)})" if majority is not None else ""))
    if record.get("dev_max_error") is not None:
        parts.append(f"max |error| {_num(record['dev_max_error'])}")
    if record.get("train_streak"):
        parts.append(f"streak {record['train_streak']}")
    if record.get("lr") is not None:
        parts.append(f"lr {_num(record['lr'])}")
    if record.get("hf_steps") is not None:
        parts.append(f"HF {record['hf_steps']} steps ({record.get('hf_rejected', 0)} rejected) "
                     f"rho {_num(record.get('hf_rho'))} lambda {_num(record.get('hf_damping'))} "
                     f"CG {_num(record.get('hf_cg_iterations'))}/step")
    frames, seconds = record.get("frames"), record.get("seconds")
    if frames is not None and seconds:
        parts.append(f"{frames / seconds / 1000:.1f}k frames/s")
    if record.get("decision"):
        parts.append(str(record["decision"]))
    return "  ".join(parts)


def plot_learning_curve(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> bool:
    """Draw train and dev loss per epoch to a PNG at ``path``, log-scale y.

    The trivial-baseline loss (the last record's ``baseline``) is a dashed
    horizontal line; epochs whose ``decision`` mentions a rollback get a
    dotted vertical line.

    Side effect: replaces ``path`` atomically. Returns False and writes nothing
    if matplotlib is not installed or there are no records; True otherwise.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if not records:
        return False
    epochs = [r.get("epoch", n + 1) for n, r in enumerate(records)]
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positive = []
    for key, label in (("train_loss", "train"), ("dev_loss", "dev")):
        ys = [_positive_or_nan(r.get(key)) for r in records]
        positive += [y for y in ys if not math.isnan(y)]
        ax.plot(epochs, ys, marker=".", label=label)
    baselines = [r["baseline"] for r in records if _positive_or_nan(r.get("baseline")) > 0]
    if baselines:
        ax.axhline(baselines[-1], color="grey", linestyle="--", label="baseline")
        positive.append(baselines[-1])
    rollbacks = [e for e, r in zip(epochs, records) if "rollback" in str(r.get("decision", ""))]
    for n, epoch in enumerate(rollbacks):
        ax.axvline(epoch, color="red", linestyle=":", alpha=0.6, label="rollback" if n == 0 else None)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return True


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _positive_or_nan(value: Any) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        return math.nan
    return float(value)
