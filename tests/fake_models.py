"""Deterministic stateful fake models for the serving tests.

A :class:`FakeModel` follows the serving ``Model`` interface (with a
``fingerprint`` of its settings); its sessions keep a running sum per stream
(their ``state()``), so carried state, resets, ID indices and timestamps
are all visible in the outputs:

    output[b][k] = factor * (k + 1) * sum over past frames and i of input[b][i]
                   + id_index[b] + timestamp[b]   (timestamp 0 when not given)

:func:`reference_outputs` computes the same thing with plain numpy, and
:class:`FakeLoader` maps workspace directory names to fakes;
:func:`make_models_dir` and :func:`running_server` set up a server on them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time

import numpy as np

from sophia.serving.paths import ModelLoadError
from sophia.serving.server import Server

INPUT_DIM = 3
TARGET_DIM = 2


class FakeSession:
    """The per-client state of a :class:`FakeModel`."""

    def __init__(self, model, id_indices):
        self.model = model
        self.id_b = np.asarray(id_indices, dtype=np.float32)
        self.sum_b = np.zeros(len(id_indices), dtype=np.float64)

    def step(self, input_bj, timestamps_b=None):
        """Advance every stream by one frame; returns float32 [B][K]."""
        if self.model.fail_step:
            raise RuntimeError("fake model failure")
        input_bj = np.asarray(input_bj)
        if input_bj.shape != (len(self.id_b), self.model.input_dim):
            raise ValueError(f"bad input shape {input_bj.shape}")
        self.sum_b += input_bj.sum(axis=1)
        time_b = 0.0 if timestamps_b is None else np.asarray(timestamps_b, np.float64)
        scale_k = self.model.factor * np.arange(1, self.model.target_dim + 1)
        output_bk = self.sum_b[:, None] * scale_k + (self.id_b + time_b)[:, None]
        return output_bk.astype(np.float32)

    def reset(self, streams):
        """Those streams restart from zero."""
        self.sum_b[list(streams)] = 0.0

    def state(self):
        """``{"sum_b": float64 [B]}``, a copy."""
        return {"sum_b": self.sum_b.copy()}

    def set_state(self, arrays):
        """Continue from :meth:`state`'s arrays; ValueError (nothing changed) otherwise."""
        if set(arrays) != {"sum_b"} or np.shape(arrays["sum_b"]) != self.sum_b.shape \
                or np.asarray(arrays["sum_b"]).dtype != np.float64:
            raise ValueError(f"expected sum_b float64 {list(self.sum_b.shape)}")
        self.sum_b = np.array(arrays["sum_b"], np.float64)


class FakeModel:
    """A fake with the serving ``Model`` interface."""

    def __init__(self, factor, input_dim=INPUT_DIM, target_dim=TARGET_DIM,
                 num_ids=None, fail_step=False):
        self.factor = factor
        self.input_dim = input_dim
        self.target_dim = self.output_dim = target_dim
        self.layout = "identity"
        self.num_ids = num_ids
        self.fail_step = fail_step
        spec = repr((float(factor), input_dim, target_dim, num_ids)).encode()
        self.fingerprint = hashlib.sha256(spec).digest()

    def new_session(self, id_indices):
        """A fresh session; raises ValueError for an ID index out of range."""
        if self.num_ids is not None:
            for i in id_indices:
                if not 0 <= i < self.num_ids:
                    raise ValueError(f"ID index {i} out of range")
        return FakeSession(self, [i if self.num_ids is not None else 0
                                  for i in id_indices])


FAKES = {
    "not_a_model": {},                      # the loader returns a non-model
    "alpha": dict(factor=1.0, num_ids=5),   # has an ID embedding
    "beta": dict(factor=-2.0),              # no ID embedding: indices ignored
    "wide": dict(factor=1.0, input_dim=4),  # incompatible with alpha/beta
    "broken": dict(factor=1.0, fail_step=True),
    "slow": dict(factor=3.0),               # loads in SLOW_LOAD seconds
}
SLOW_LOAD = 0.5


class FakeLoader:
    """``loader(path) -> FakeModel`` keyed by the directory name; records calls.

    ``unloadable`` (and any unknown name) raises :class:`ModelLoadError`.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, path):
        self.calls.append(path)
        name = os.path.basename(path)
        if name not in FAKES:
            raise ModelLoadError(f"no model in {name!r}")
        if name == "slow":
            time.sleep(SLOW_LOAD)
        if name == "not_a_model":
            return object()  # breaks the Model interface
        return FakeModel(**FAKES[name])


def reference_outputs(name, frames_tbj, id_indices, timestamps_tb=None, resets=()):
    """Expected outputs [T][B][K] of fake ``name`` for a sequence of frames.

    ``resets`` holds ``(t, streams)``: those streams restart before frame t.
    """
    spec = dict(FAKES[name])
    model = FakeModel(**spec)
    session = model.new_session(list(id_indices))
    resets = dict(resets)
    outputs = []
    for t, frame_bj in enumerate(frames_tbj):
        if t in resets:
            session.reset(resets[t])
        stamps = None if timestamps_tb is None else timestamps_tb[t]
        outputs.append(session.step(frame_bj, stamps))
    return np.stack(outputs)


def make_models_dir(root):
    """Create ``root/models/<name>`` for every fake and ``root/outside``; returns models."""
    models = os.path.join(root, "models")
    for name in list(FAKES) + ["unloadable"]:
        os.makedirs(os.path.join(models, name), exist_ok=True)
    os.makedirs(os.path.join(root, "outside", "alpha"), exist_ok=True)
    return models


@contextlib.contextmanager
def running_server(endpoint, models_dir, loader=None, **options):
    """A :class:`Server` with fake models, serving from a thread until exit."""
    server = Server(endpoint, loader or FakeLoader(), models_dir, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=5)
        if thread.is_alive():
            raise RuntimeError("server thread did not stop within 5 s")


def stream_through_client(endpoint, names, client, frames, stamps, start):
    """Stream one client's frames [T][N][B][J] (and timestamps [T][B] or None) through
    a real ``SophiaClient`` after ``start`` is set, resetting the streams
    ``client["resets"][t]`` before frame t; returns its outputs [T][N][B][K]."""
    from sophia.serving.client import SophiaClient

    ids = client["ids"]
    with SophiaClient(endpoint, names, len(ids[0]), ids, timeout=30) as session:
        start.wait(timeout=30)
        out = []
        for t in range(len(frames)):
            if t in client["resets"]:
                session.reset(client["resets"][t])
            out.append(session.step(frames[t], None if stamps is None else stamps[t]))
    return np.stack(out)
