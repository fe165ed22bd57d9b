"""The files of a training workspace, and rebuilding a trained net from them.

This layout is a contract: the serving loader reads the same names.

============================  ==================================================
``options.json``              ``{"model": ..., "train": ..., "seed": ..., "data_dir": ...}``
                              (model options with dims and ``num_ids`` filled in)
``params.npz``                the best parameters and buffers (``Net.get_values()``):
                              the model to serve
``ids.order``                 the training sequence IDs, ';'-separated
``snapshots/pivot.npz``       the model a rollback returns to
``snapshots/previous.npz``    the model after the latest epoch
``annealer.json``             the annealing schedule's state
``metrics.jsonl``             one record per epoch
``learning_curve.png``        train/dev loss per epoch
============================  ==================================================

What is here:

- :class:`RunOptions` -- what ``options.json`` holds.
- :func:`save_run_options`, :func:`load_run_options` -- write / read it.
- :func:`load_net` -- a :class:`~sophia.graph.net.Net` with the best parameters.
- :func:`model_differences` -- explicit model overrides that contradict a loaded model.

Example
-------
>>> net, run = load_net("workspaces/demo")                        # doctest: +SKIP
>>> run.model.net_width == net.options.net_width                  # doctest: +SKIP
True
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from sophia.options import (ModelOptions, OptionError, TrainOptions, from_dict,
                            parse_value, to_dict)
from sophia.training.workspace import Workspace, WorkspaceError

OPTIONS = "options"                  # options.json
BEST = "params"                      # params.npz
PIVOT = "snapshots/pivot"
PREVIOUS = "snapshots/previous"
ANNEALER = "annealer"                # annealer.json
CURVE = "learning_curve.png"

# Model options that say "take it from the data" when 0.
INFERRED_WHEN_ZERO = ("input_dim", "target_dim", "num_ids")


@dataclass(frozen=True)
class RunOptions:
    """The content of ``options.json``."""

    model: ModelOptions
    train: TrainOptions
    seed: int
    data_dir: str


def save_run_options(ws: Workspace, run: RunOptions) -> None:
    """Write ``options.json`` atomically (``data_dir`` as an absolute path)."""
    ws.save_json(OPTIONS, {"model": to_dict(run.model), "train": to_dict(run.train),
                           "seed": int(run.seed), "data_dir": os.path.abspath(run.data_dir)})


def load_run_options(ws: Workspace) -> RunOptions:
    """Read ``options.json``; raise :class:`WorkspaceError` naming it if malformed."""
    d = ws.load_json(OPTIONS)
    path = ws.file(OPTIONS, ".json")
    if not isinstance(d, dict) or not {"model", "train", "seed"} <= set(d):
        raise WorkspaceError(f"{path}: expected keys model, train, seed")
    try:
        model = from_dict(ModelOptions, d["model"])
        train = from_dict(TrainOptions, d["train"])
    except (OptionError, TypeError, AttributeError) as error:
        raise WorkspaceError(f"{path}: {error}") from error
    if isinstance(d["seed"], bool) or not isinstance(d["seed"], int):
        raise WorkspaceError(f"{path}: seed must be an integer, got {d['seed']!r}")
    return RunOptions(model, train, d["seed"], str(d.get("data_dir", "")))


def load_net(path: str | os.PathLike, dtype: str = "float32"):
    """Build the net a workspace describes and load its best parameters.

    Returns ``(net, run_options)``. Compiles nothing. Raises
    :class:`WorkspaceError` for a missing or corrupt file, ValueError if
    ``params.npz`` does not fit the saved options.
    """
    from sophia.graph.net import Net         # PyTensor only where a net is built

    ws = Workspace(path, create=False)
    run = load_run_options(ws)
    net = Net(run.model, seed=run.seed, dtype=dtype)
    net.set_values(ws.load_arrays(BEST))
    return net, run


def model_differences(loaded: ModelOptions, overrides: Mapping[str, Any]) -> list[str]:
    """Overrides of model options that differ from a loaded model's, as
    ``'name: loaded X, requested Y'`` lines (typed with ``parse_value``).

    A 0 for a dim or ``num_ids`` means "from the data" and matches anything.
    """
    problems = []
    for name, value in overrides.items():
        wanted = parse_value(ModelOptions, name, value)
        if name in INFERRED_WHEN_ZERO and wanted == 0:
            continue
        if wanted != getattr(loaded, name):
            problems.append(f"{name}: loaded {getattr(loaded, name)!r}, requested {wanted!r}")
    return problems
