"""Small real workspaces for the serving tests, and offline inference over them.

:func:`write_workspaces` writes two trained-looking workspaces (random but fixed
parameters) with ``input_dim`` 3 and ``target_dim`` 2, so they form one ensemble:

- ``lstm_ids``: 2-layer LSTM, width 8, learned ID embedding over 4 sequence IDs;
- ``gru_clock``: 2-layer GRU, width 8, Phased-LSTM time gates.

:class:`OfflineModel` rebuilds a workspace's net on its own (not through
``sophia.serving.model``) and runs ``f_infer`` over whole sequences at once,
the reference that streamed outputs must equal. :func:`counter_times` and
:func:`stamp_times` build the time signal a session gives its streams.
"""
from __future__ import annotations

import json
import os

import numpy as np

from sophia.graph.net import Net
from sophia.options import ModelOptions, TrainOptions, from_dict, to_dict
from sophia.workspace import Workspace

INPUT_DIM = 3
TARGET_DIM = 2
IDS = ["alpha", "beta", "gamma", "delta"]
SPECS = {
    "lstm_ids": dict(unit_type="lstm", learn_id_embedding=True, id_embedding_dim=3,
                     num_ids=len(IDS)),
    "gru_clock": dict(unit_type="gru", learn_clock_params=True, clock_period_lo=0.0,
                      clock_period_hi=1.5, clock_r_on=0.4),
}
REFERENCE_MODE = "FAST_COMPILE"


def write_workspace(path, seed=0, **overrides) -> str:
    """Write ``options.json``, ``params.npz`` and ``ids.order`` of a small net; returns path."""
    defaults = dict(input_dim=INPUT_DIM, target_dim=TARGET_DIM, net_width=8, net_depth=2,
                    init_scale=0.5)
    options = from_dict(ModelOptions, {**defaults, **overrides})
    net = Net(options, seed=seed, dtype="float32")
    rng = np.random.default_rng(seed + 100)
    values = {name: (value + rng.uniform(-0.3, 0.3, value.shape)).astype("float32")
              for name, value in net.get_values().items()}  # off the symmetric init
    ws = Workspace(path)
    ws.save_json("options", {"model": to_dict(options), "train": to_dict(TrainOptions()),
                             "seed": seed})
    ws.save_arrays("params", values)
    ws.write_ids_order(IDS)
    return str(path)


def write_workspaces(root) -> dict:
    """Write every workspace of :data:`SPECS` under ``root``; returns ``{name: path}``."""
    return {name: write_workspace(os.path.join(root, name), seed=n, **spec)
            for n, (name, spec) in enumerate(SPECS.items())}


class OfflineModel:
    """A workspace's net, built separately, run over whole sequences at once."""

    def __init__(self, path, engine=None):
        self.engine = engine             # the engine to prefer (default: the fastest)
        with open(os.path.join(path, "options.json"), encoding="utf-8") as f:
            options = from_dict(ModelOptions, json.load(f)["model"])
        self.net = Net(options, dtype="float32")
        with np.load(os.path.join(path, "params.npz"), allow_pickle=False) as npz:
            self.net.set_values({key: npz[key] for key in npz.files})
        self._compiled = {}

    def infer(self, input_tbj, time_tb, id_b) -> np.ndarray:
        """Outputs [T][B][k] of ``f_infer`` over the T frames, from zero stored states."""
        num_frames, num_streams = time_tb.shape
        if num_frames not in self._compiled:
            self._compiled[num_frames] = self.net.compile_infer(
                window_size=num_frames, mode=REFERENCE_MODE, engine=self.engine)
        f_infer, v_states = self._compiled[num_frames]
        self.net.reset_states(v_states, batch_size=num_streams)
        id_tb = np.tile(np.asarray(id_b, np.int32), (num_frames, 1))
        return f_infer(np.asarray(input_tbj, np.float32), np.asarray(time_tb, np.float32), id_tb)


def counter_times(num_frames, num_streams, resets=()) -> np.ndarray:
    """Frame-counter time signal [T][B]; ``resets`` holds (t, streams) restarted at frame t."""
    time_tb = np.zeros((num_frames, num_streams))
    count_b = np.zeros(num_streams)
    restart = dict(resets)
    for t in range(num_frames):
        count_b[list(restart.get(t, []))] = 0
        time_tb[t] = count_b
        count_b += 1
    return time_tb


def stamp_times(stamps_tb, resets=()) -> np.ndarray:
    """Timestamp time signal [T][B]: each stamp minus its stream's first since (re)start."""
    time_tb = np.zeros_like(stamps_tb, dtype=np.float64)
    first_b = np.asarray(stamps_tb[0], np.float64).copy()
    restart = dict(resets)
    for t in range(len(stamps_tb)):
        streams = list(restart.get(t, []))
        first_b[streams] = stamps_tb[t][streams]
        time_tb[t] = stamps_tb[t] - first_b
    return time_tb


def irregular_stamps(num_frames, num_streams, seed=0) -> np.ndarray:
    """Increasing float32 timestamps [T][B] with irregular gaps and distinct starts."""
    rng = np.random.default_rng(seed)
    gaps_tb = rng.uniform(0.05, 1.5, (num_frames, num_streams))
    return (100.0 * np.arange(1, num_streams + 1) + np.cumsum(gaps_tb, axis=0)).astype(np.float32)
