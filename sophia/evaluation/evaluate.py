"""One evaluation: the model through the serving step, the baselines, the metrics, the files.

A bidirectional model, which the server refuses, runs over whole sequences instead
(:mod:`sophia.evaluation.whole`). Several workspaces are scored as one ensemble: each
member runs on its own and their outputs are combined by
:func:`sophia.evaluation.ensemble.combine`.

- :data:`BASELINES` -- the baselines run by default; :data:`ALL_BASELINES` adds
  the optional classical ones (:mod:`sophia.evaluation.classical`).
- :func:`open_split` -- a dataset split whose dims must be the model's.
- :func:`evaluate` -- run everything; write ``.output`` files, ``report.json`` and
  (optionally) the plot; return the report.
- :func:`format_table` -- the report's overall metrics as a text table.

What the report holds and how each number is defined: docs/EVALUATION.md.

Example
-------
>>> report = evaluate("runs/co2", "data/co2", "test", out="runs/co2/eval/test")   # doctest: +SKIP
>>> print(format_table(report))                                         # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from sophia.atomic import atomic_write_bytes
from sophia.data.dataset import Dataset, DatasetError, check_tokens, infer_dims
from sophia.evaluation import EvalError
from sophia.evaluation import baselines as bl
from sophia.evaluation import classical
from sophia.evaluation.ensemble import check_members, combine
from sophia.evaluation.inference import id_indices, run_model
from sophia.evaluation.metrics import POINT_METRICS, mase_scale, point_metrics
from sophia.evaluation.plot import plot_predictions, require_matplotlib
from sophia.evaluation.probabilistic import (PROBABILISTIC_METRICS, central_interval, inside,
                                             interval_bounds, probabilistic_metrics)
from sophia.evaluation.tracking import DEFAULT_STEP, check_step, tracked_interval
from sophia.graph.output_layout import channel_names, channels_tck, point_channel
from sophia.evaluation.whole import WholeSequenceModel, run_whole_sequences
from sophia.serving.model import MODE, load_model
from sophia.serving.paths import ModelLoadError
from sophia.workspace import OPTIONS, Workspace, WorkspaceError, load_ids, load_model_options

BASELINES = ("mean", "persistence", "seasonal", "ar")      # the default set
CLASSICAL = classical.KINDS                               # optional: statsmodels' ETS, ARIMA
ALL_BASELINES = BASELINES + CLASSICAL
NEEDS_DEV = ("ar",) + CLASSICAL
REPORT = "report.json"
PLOT = "predictions.png"
FORMAT = "sophia-eval-1"


def open_split(data_dir, split, model, workspace) -> Dataset:
    """Open ``data_dir``'s ``split`` for ``model``; raise :class:`EvalError` naming
    the list file or ``options.json`` field when it is missing or its dims differ,
    or (a token model) the file and frame of an input that is not a token index."""
    options_file = os.path.join(workspace, OPTIONS + ".json")
    expected = (model.input_dim, model.target_dim)
    # From the sizes alone, then (if that is ambiguous) with one of the model's dims given.
    for given in ((0, 0), (0, expected[1]), (expected[0], 0)):
        try:
            dims = infer_dims(str(data_dir), *given)
        except DatasetError:
            continue
        if dims != expected:
            raise EvalError(f"{data_dir}: the data have input_dim {dims[0]}, target_dim {dims[1]}, "
                            f"but {options_file} says input_dim {expected[0]}, "
                            f"target_dim {expected[1]}")
        break
    try:
        dataset = Dataset.open(str(data_dir), split, *expected)
        if getattr(model, "vocab_size", 0):         # token inputs: each an index in [0, V)
            check_tokens(dataset, model.vocab_size)
        return dataset
    except DatasetError as error:
        raise EvalError(str(error)) from None


def _load(workspace: str, mode: str):
    """``(model, run)``: the serving model and :func:`run_model` (frame by frame), or, for a
    bidirectional model, which needs whole sequences, :class:`WholeSequenceModel` and
    :func:`run_whole_sequences`. Raises ModelLoadError naming the file."""
    if os.path.isdir(workspace) and _bidirectional(workspace):
        return WholeSequenceModel(workspace), run_whole_sequences
    return load_model(workspace, mode=mode), run_model


def _bidirectional(workspace: str) -> bool:
    try:
        return load_model_options(Workspace(workspace, create=False)).bidirectional
    except WorkspaceError:
        return False              # load_model names the problem


def _targets(dataset) -> list[np.ndarray]:
    return [np.asarray(dataset.target(i), np.float64) for i in range(len(dataset))]


def _baseline_predictions(chosen, targets, train_targets, dev_targets, mean_k, season, max_ar):
    """``({name: [prediction_tk per sequence]}, {name: its fitted parameters})``."""
    predictions, params = {}, {}
    if "mean" in chosen:
        predictions["mean"] = [bl.mean_forecast(t, mean_k) for t in targets]
        params["mean"] = {"mean": mean_k.tolist()}
    if "persistence" in chosen:
        predictions["persistence"] = [bl.persistence(t, mean_k) for t in targets]
        params["persistence"] = {"fallback": "train mean"}
    if "seasonal" in chosen:
        predictions["seasonal"] = [bl.seasonal_naive(t, season, mean_k) for t in targets]
        params["seasonal"] = {"season": season, "fallback": "train mean"}
    if "ar" in chosen:
        order, coef_kq, dev_mse = bl.choose_ar_order(train_targets, dev_targets, max_ar, mean_k)
        predictions["ar"] = [bl.ar_forecast(t, coef_kq, mean_k) for t in targets]
        params["ar"] = {"order": order, "coefficients": coef_kq.tolist(), "dev_mse": dev_mse}
    for kind in (k for k in CLASSICAL if k in chosen):
        models = classical.choose(kind, train_targets, dev_targets, mean_k, season)
        predictions[kind] = [classical.forecast(models, t, mean_k) for t in targets]
        params[kind] = [{"chosen": fitted.describe() if fitted else None, "dev_mse": dev_mse}
                        for fitted, dev_mse in models]
    return predictions, params


def _score(predictions, targets, scale, tolerance):
    """Overall and per-sequence metrics of every method."""
    overall, per_sequence = {}, [{} for _ in targets]
    width = targets[0].shape[1] if targets else 0
    all_targets = np.concatenate(targets) if targets else np.zeros((0, width))
    for method, outputs in predictions.items():
        stacked = np.concatenate(outputs) if outputs else np.zeros((0, width))
        overall[method] = point_metrics(stacked, all_targets, scale, tolerance)
        for n, (output_tk, target_tk) in enumerate(zip(outputs, targets)):
            per_sequence[n][method] = point_metrics(output_tk, target_tk, scale, tolerance)
    return overall, per_sequence


def _score_distribution(outputs, targets, options, overall, per_sequence, tracked) -> None:
    """Add the model's probabilistic metrics to its overall and per-sequence entries;
    with ``tracked`` (each sequence's tracked ``(lower_tk, upper_tk)``,
    :mod:`sophia.evaluation.tracking`) also ``coverage_tracked``."""
    width = targets[0].shape[1] if targets else options.target_dim
    stacked = np.concatenate(outputs) if outputs else np.zeros((0, len(channel_names(options)) * width))
    all_targets = np.concatenate(targets) if targets else np.zeros((0, width))
    overall["model"].update(probabilistic_metrics(stacked, all_targets, options))
    for n, (output_tK, target_tk) in enumerate(zip(outputs, targets)):
        per_sequence[n]["model"].update(probabilistic_metrics(output_tK, target_tk, options))
    if tracked is not None:
        hits = [inside(lower_tk, upper_tk, t) for (lower_tk, upper_tk), t in zip(tracked, targets)]
        for n, hits_n in enumerate(hits):
            per_sequence[n]["model"]["coverage_tracked"] = _share(hits_n)
        overall["model"]["coverage_tracked"] = _share(np.concatenate(hits) if hits else [])


def _share(hits) -> float:
    return float(np.mean(hits)) if len(hits) else math.nan


def _load_members(workspaces, mode):
    """``[(path, model, run, ids)]`` per workspace (absolute paths), checked to agree
    (:func:`~sophia.evaluation.ensemble.check_members`). Raises EvalError naming the
    file or field."""
    members = []
    for workspace in workspaces:
        workspace = os.path.abspath(workspace)
        try:
            model, run = _load(workspace, mode)
            ws = Workspace(workspace, create=False)
            members.append((workspace, model, run, load_ids(ws, load_model_options(ws))))
        except (ModelLoadError, WorkspaceError) as error:
            raise EvalError(str(error)) from None
    try:
        check_members([(os.path.join(path, OPTIONS + ".json"), model.net.options)
                       for path, model, _, _ in members])
    except ValueError as error:
        raise EvalError(str(error)) from None
    return members


def _run_members(members, dataset, streams):
    """The outputs [T][output_dim] per sequence: the one member's, or the ensemble's
    combination of every member's."""
    try:
        runs = [run(model, dataset, ids, streams) for _, model, run, ids in members]
    except DatasetError as error:
        raise EvalError(str(error)) from None
    if len(runs) == 1:
        return runs[0]
    options = members[0][1].net.options
    return [combine([r[n] for r in runs], options) for n in range(len(dataset))]


def evaluate(workspace, data_dir, split: str = "test", baselines=BASELINES, season: int = 1,
             max_ar: int = 24, tolerance: float = 0.04, out=None, plot: bool = False,
             streams: int = 8, mode: str = MODE, warmup: int = 0,
             track_step: float = DEFAULT_STEP) -> dict:
    """Evaluate a workspace's model, or an ensemble's, on a split, beside the chosen baselines.

    ``workspace`` is one path or a list of them: several are one ensemble (their
    outputs combined, :mod:`sophia.evaluation.ensemble`), which must agree on
    :data:`~sophia.evaluation.ensemble.AGREE`; the report's ``workspace`` is the
    first, ``members`` all of them.

    Side effects, under ``out`` (when given): ``<path>.output`` for each sequence
    (float32 little-endian [T][output_dim], every channel of a probabilistic model,
    channel-major; the dataset's relative path),
    ``report.json`` and, with ``plot``, ``predictions.png``; each file written
    atomically. Returns the report (a JSON-ready dict; NaN as None).

    ``baselines`` are names from :data:`ALL_BASELINES` (``ets`` and ``arima``
    need statsmodels). Every method is scored on the target values from frame
    ``warmup`` of each sequence on; the frames before are still predicted from.
    A probabilistic model's interval is also tracked (:mod:`sophia.evaluation.tracking`,
    from the first scored frame, with ``track_step``; 0: not) and scored as
    ``coverage_tracked``.

    Raises :class:`EvalError` naming the file or field for a missing or bad
    workspace, a missing split, dims that differ from the model's, an unknown
    baseline, ``ets``/``arima`` without statsmodels, bad numbers (``track_step``
    included), or ``plot``
    without matplotlib.
    """
    unknown = [b for b in baselines if b not in ALL_BASELINES]
    if unknown:
        raise EvalError(f"--baselines: unknown {', '.join(unknown)} (choose from {', '.join(ALL_BASELINES)})")
    if any(b in CLASSICAL for b in baselines):
        try:
            classical.require_statsmodels()
        except classical.MissingStatsmodels as error:
            raise EvalError(f"--baselines {','.join(b for b in baselines if b in CLASSICAL)}: "
                            f"{error}") from None
    for name, value, low in (("--season", season, 1), ("--max_ar", max_ar, 1), ("--streams", streams, 1),
                             ("--warmup", warmup, 0)):
        if value < low:
            raise EvalError(f"{name} must be >= {low}, got {value}")
    if not tolerance >= 0:
        raise EvalError(f"--tolerance must be >= 0, got {tolerance}")
    try:
        check_step(track_step)
    except ValueError as error:
        raise EvalError(f"--track_step: {error}") from None
    if plot:
        require_matplotlib()
    workspaces = [workspace] if isinstance(workspace, (str, os.PathLike)) else list(workspace)
    if not workspaces:
        raise EvalError("no workspace given")
    members = _load_members(workspaces, mode)
    workspace, model, _, ids = members[0]
    dataset = open_split(data_dir, split, model, workspace)
    train_targets = _targets(open_split(data_dir, "train", model, workspace))
    needs_dev = any(b in NEEDS_DEV for b in baselines)
    dev_targets = _targets(open_split(data_dir, "dev", model, workspace)) if needs_dev else []
    outputs = _run_members(members, dataset, streams)
    targets = _targets(dataset)
    options = model.net.options
    probabilistic = options.output_activation in PROBABILISTIC_METRICS
    point_outputs = ([channels_tck(o, model.channels)[:, point_channel(options)] for o in outputs]
                     if probabilistic else outputs)
    mean_k = bl.train_mean(train_targets)
    scale = mase_scale(train_targets, season)
    baseline_predictions, params = _baseline_predictions(
        baselines, targets, train_targets, dev_targets, mean_k, season, max_ar)
    predictions = {"model": point_outputs, **baseline_predictions}
    scored = [_after_warmup(t, warmup) for t in targets]
    tracked = ([tracked_interval(o, t, options, track_step) for o, t in zip(outputs, scored)]
               if probabilistic and track_step > 0 else None)
    overall, per_sequence = _score(predictions, scored, scale, tolerance)
    metric_names = list(POINT_METRICS)
    if probabilistic:
        metric_names += PROBABILISTIC_METRICS[options.output_activation]
        metric_names += ["coverage_tracked"] if tracked is not None else []
        _score_distribution(outputs, scored, options, overall, per_sequence, tracked)
    rows = id_indices(dataset, ids)
    report = {
        "format": FORMAT, "workspace": workspace, "members": [m[0] for m in members],
        "data_dir": os.path.abspath(data_dir),
        "split": split, "input_dim": model.input_dim, "target_dim": model.target_dim,
        "output_activation": options.output_activation, "output_dim": model.output_dim,
        "channels": channel_names(options),
        "interval": ({**dict(zip(("lower", "upper"), central_interval(options))),
                      "track_step": track_step} if probabilistic else None),
        "season": season, "max_ar": max_ar, "tolerance": tolerance, "warmup": warmup,
        "mase_scale": scale,
        "methods": list(predictions), "metrics": metric_names, "baselines": params,
        "overall": overall,
        "sequences": [{"path": s.path, "seq_id": s.seq_id,
                       "id_index": rows[n] if model.num_ids is not None else None,
                       "length": s.length, "output": s.path + ".output",
                       "metrics": per_sequence[n]} for n, s in enumerate(dataset.sequences)],
    }
    report = _json_ready(report)
    if out is not None:
        _write(Path(out), dataset, outputs, report)
        if plot:
            bands = [interval_bounds(o, options) for o in outputs] if probabilistic else None
            plot_predictions(Path(out) / PLOT, [s.path for s in dataset.sequences], targets,
                             predictions, bands=bands, tracked=tracked)
    return report


def _after_warmup(target_tk, warmup) -> np.ndarray:
    """``target_tk`` with its first ``warmup`` frames NaN: what is scored."""
    if warmup == 0:
        return target_tk
    scored_tk = np.array(target_tk, np.float64)
    scored_tk[:warmup] = np.nan
    return scored_tk


def _write(out: Path, dataset, outputs, report) -> None:
    for s, output_tk in zip(dataset.sequences, outputs):
        atomic_write_bytes(out / (s.path + ".output"), np.asarray(output_tk, "<f4").tobytes())
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(out / REPORT, text.encode("utf-8"))


def _json_ready(value):
    """``value`` with non-finite floats as None and numpy scalars as Python's."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def format_table(report) -> str:
    """The overall metrics of every method, one row each, as aligned text (a
    probabilistic model's NLL or pinball loss and coverage in extra columns)."""
    extra = [k for k in report["metrics"] if k not in POINT_METRICS]
    interval = report.get("interval") or {}
    names = {"nll": "NLL", "pinball": "pinball",
             "coverage": f"cover[{interval.get('lower', 0.1):g},{interval.get('upper', 0.9):g}]",
             "coverage_tracked": "tracked"}
    header = (["method", "RMSE", "MAE", "MASE", "max|err|", f"wrong@{report['tolerance']:g}", "N"]
              + [names.get(k, k) for k in extra])
    lines = [header]
    for method in report["methods"]:
        m = report["overall"][method]
        lines.append([method] + [_cell(m[k]) for k in ("rmse", "mae", "mase", "max_abs_error")]
                     + [str(m["num_wrong"]), str(m["count"])] + [_cell(m.get(k)) for k in extra])
    widths = [max(len(row[c]) for row in lines) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                               for c, (cell, w) in enumerate(zip(row, widths))) for row in lines)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4g}"
