"""Batching across sessions: one call per model for every client's queued step.

Real workspaces (``lstm_ids``: ID embedding; ``gru_clock``: time gates). Batched
outputs equal each session's own steps to 1e-6, not always bit for bit: the matrix
products of a batch of B streams may run other BLAS kernels than those of one
stream (a gemm instead of a gemv), which round differently in the last bits; no
operation mixes streams.
"""
import os
import threading

import numpy as np
import pytest
import zmq

from fake_models import running_server, stream_through_client
from model_workspaces import INPUT_DIM, write_workspaces
from sophia.serving import protocol as proto
from sophia.serving.ensemble import Ensemble, step_together
from sophia.serving.model import load_model

NAMES = ["lstm_ids", "gru_clock"]
TOL = 1e-6
FRAMES = 12


@pytest.fixture(scope="module")
def short_dir(short_module_dir):
    return short_module_dir


@pytest.fixture(scope="module")
def models(short_dir):
    paths = write_workspaces(os.path.join(short_dir, "models"))
    return {name: load_model(paths[name], mode="FAST_COMPILE") for name in NAMES}


class CountingModel:
    """A model that counts its batched calls (sessions per call), else the model itself."""

    def __init__(self, model):
        self._model, self.batches = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def new_session(self, id_indices):
        session = self._model.new_session(id_indices)
        session.model = self
        return session

    def run_sessions(self, sessions, frames):
        self.batches.append(len(sessions))
        return self._model.run_sessions(sessions, frames)


CLIENTS = [  # (ID rows per model, streams reset before frame t, timestamped?)
    dict(ids=[[0, 3], [0, 0]], resets={4: [1]}, stamps=False),
    dict(ids=[[4], [0]], resets={}, stamps=True),
    dict(ids=[[1, 2, 0], [0, 0, 0]], resets={2: [0, 2], 7: [2]}, stamps=True),
]


def client_frames(k):
    rng = np.random.default_rng(k)
    b = len(CLIENTS[k]["ids"][0])
    frames = rng.normal(size=(FRAMES, len(NAMES), b, INPUT_DIM)).astype(np.float32)
    stamps = (np.cumsum(rng.uniform(0.3, 2.0, size=(FRAMES, b)), axis=0).astype(np.float32)   # the wire's type
              if CLIENTS[k]["stamps"] else None)
    return frames, stamps


def run_alone(models, k):
    ensemble = Ensemble(NAMES, [models[n] for n in NAMES], CLIENTS[k]["ids"])
    frames, stamps = client_frames(k)
    out = []
    for t in range(FRAMES):
        if t in CLIENTS[k]["resets"]:
            ensemble.reset(CLIENTS[k]["resets"][t])
        out.append(ensemble.step(frames[t], None if stamps is None else stamps[t]))
    return np.stack(out)


def test_step_together_equals_each_session_alone(models):
    counting = [CountingModel(models[n]) for n in NAMES]
    ensembles = [Ensemble(NAMES, counting, c["ids"]) for c in CLIENTS]
    inputs = [client_frames(k) for k in range(len(CLIENTS))]
    got = [[] for _ in CLIENTS]
    for t in range(FRAMES):
        for k, c in enumerate(CLIENTS):
            if t in c["resets"]:
                ensembles[k].reset(c["resets"][t])
        stamps = [None if s is None else s[t] for _, s in inputs]
        for k, outputs in enumerate(step_together(ensembles, [f[t] for f, _ in inputs], stamps)):
            got[k].append(outputs)
    assert all(m.batches == [len(CLIENTS)] * FRAMES for m in counting)   # one call per model and frame
    for k in range(len(CLIENTS)):
        np.testing.assert_allclose(np.stack(got[k]), run_alone(models, k), atol=TOL, rtol=0)


def stream_client(endpoint, k, results, start):
    results[k] = stream_through_client(endpoint, NAMES, CLIENTS[k], *client_frames(k), start)


def serve_clients(short_dir, models, delay_us, extra=None):
    counting = {name: CountingModel(models[name]) for name in NAMES}
    loader = lambda path: counting[os.path.basename(path)]           # noqa: E731
    endpoint = f"ipc://{short_dir}/b{delay_us}.sock"
    results, start = {}, threading.Barrier(len(CLIENTS) + 1)
    with running_server(endpoint, os.path.join(short_dir, "models"), loader=loader,
                        max_batch_delay_us=delay_us, preload=NAMES) as server:
        threads = [threading.Thread(target=stream_client, args=(endpoint, k, results, start))
                   for k in range(len(CLIENTS))]
        for thread in threads:
            thread.start()
        if extra is not None:
            extra(endpoint)
        start.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=60)
        steps_queue = server._steps
    return results, counting, steps_queue


def test_the_server_batches_clients_and_each_gets_its_own_outputs(short_dir, models):
    results, counting, _ = serve_clients(short_dir, models, delay_us=50_000)
    assert sorted(results) == list(range(len(CLIENTS)))
    assert max(max(m.batches, default=0) for m in counting.values()) > 1      # it batched
    for k in range(len(CLIENTS)):
        np.testing.assert_allclose(results[k], run_alone(models, k), atol=TOL, rtol=0)


def test_delay_0_steps_every_request_alone_exactly(short_dir, models):
    results, counting, steps_queue = serve_clients(short_dir, models, delay_us=0)
    assert steps_queue is None and all(m.batches == [] for m in counting.values())
    for k in range(len(CLIENTS)):
        np.testing.assert_array_equal(results[k], run_alone(models, k))


def test_a_vanishing_client_and_garbage_do_not_disturb_a_batch(short_dir, models):
    def misbehave(endpoint):
        context = zmq.Context.instance()
        for payload in (b"\x00garbage", None):
            socket = context.socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoint)
            socket.send(proto.format_handshake(["lstm_ids"], 1, [[0]]))
            assert socket.recv() == proto.READY
            socket.send(payload or np.zeros((1, 1, INPUT_DIM), "<f4").tobytes())
            if payload is not None:
                assert proto.is_error(socket.recv())      # garbage: an error, the session lives
            socket.close()                                # vanish with a step in flight
    results, _, _ = serve_clients(short_dir, models, delay_us=50_000, extra=misbehave)
    for k in range(len(CLIENTS)):
        np.testing.assert_allclose(results[k], run_alone(models, k), atol=TOL, rtol=0)
