"""sophia.serving.joint: one call per ensemble step equals the models stepped one by one.

An ensemble mixes unit types and widths: an LSTM with an ID embedding, a GRU with
time gates (timestamps matter), a 3-layer RNN of width 5, a stateless FC net, and
the LSTM again. Clients differ in streams, ID indices, resets and timestamps. The
joint function runs each model's own graph in the same mode, so its outputs and
states equal the per-model path's bit for bit, alone and batched across sessions.
"""
import os
import threading

import numpy as np
import pytest

from fake_models import FAKES, FakeModel, running_server, stream_through_client
from model_workspaces import INPUT_DIM, write_workspace, write_workspaces
from sophia.serving import snapshot
from sophia.serving.ensemble import Ensemble, step_together
from sophia.serving.joint import join
from sophia.serving.model import MODE, load_model

NAMES = ["lstm_ids", "gru_clock", "rnn_narrow", "fc", "lstm_ids"]
FRAMES = 10
CLIENTS = [  # (ID rows per model, streams reset before frame t, timestamped?)
    dict(ids=[[0, 3], [0, 0], [0, 0], [0, 0], [4, 1]], resets={4: [1]}, stamps=False),
    dict(ids=[[4], [0], [0], [0], [2]], resets={}, stamps=True),
    dict(ids=[[1, 2, 0], [0] * 3, [0] * 3, [0] * 3, [3, 3, 3]], resets={2: [0, 2], 7: [2]},
         stamps=True),
]


@pytest.fixture(scope="module")
def models_dir(short_module_dir):
    """``models/<name>`` for every name of :data:`NAMES`."""
    root = os.path.join(short_module_dir, "models")
    write_workspaces(root)
    write_workspace(os.path.join(root, "rnn_narrow"), seed=2, unit_type="rnn", net_width=5,
                    net_depth=3)
    write_workspace(os.path.join(root, "fc"), seed=3, unit_type="fc", net_width=6, net_depth=1)
    return root


@pytest.fixture(scope="module")
def models(models_dir):
    loaded = {name: load_model(os.path.join(models_dir, name), mode=MODE) for name in set(NAMES)}
    return [loaded[name] for name in NAMES]


@pytest.fixture(scope="module")
def joint(models):
    return join(models)


class CountingJoint:
    """A joint function that counts its calls (clients per call)."""

    def __init__(self, joint):
        self._joint, self.calls = joint, []
        self.models = joint.models

    def run_sessions(self, session_rows, frames, timestamps):
        self.calls.append(len(session_rows))
        return self._joint.run_sessions(session_rows, frames, timestamps)


def client_inputs(k):
    rng = np.random.default_rng(k)
    b = len(CLIENTS[k]["ids"][0])
    frames = rng.normal(size=(FRAMES, len(NAMES), b, INPUT_DIM)).astype(np.float32)
    stamps = (np.cumsum(rng.uniform(0.3, 2.0, size=(FRAMES, b)), axis=0).astype(np.float32)
              if CLIENTS[k]["stamps"] else None)
    return frames, stamps


def stream(ensembles, clients=None, start=0, stop=FRAMES):
    """Step the ensembles of ``clients`` (default: all, in order) through frames [start,
    stop) with :func:`step_together`; returns per client its outputs [T][N][B][K]."""
    clients = range(len(CLIENTS)) if clients is None else clients
    inputs = [client_inputs(k) for k in clients]
    got = [[] for _ in ensembles]
    for t in range(start, stop):
        for k, e in zip(clients, ensembles):
            if t in CLIENTS[k]["resets"]:
                e.reset(CLIENTS[k]["resets"][t])
        stamps = [None if s is None else s[t] for _, s in inputs]
        for k, out in enumerate(step_together(ensembles, [f[t] for f, _ in inputs], stamps)):
            assert not isinstance(out, Exception), out
            got[k].append(out)
    return [np.stack(g) for g in got]


def ensembles(models, joint=None):
    return [Ensemble(NAMES, models, c["ids"], joint=joint) for c in CLIENTS]


def test_join_takes_every_unit_type_and_width(models, joint):
    assert joint is not None and joint.models == tuple(models)
    assert {m.net.options.unit_type for m in models} == {"lstm", "gru", "rnn", "fc"}


def test_each_client_alone_equals_its_models_stepped_one_by_one(models, joint):
    for k in range(len(CLIENTS)):
        counting = CountingJoint(joint)
        [alone] = stream([Ensemble(NAMES, models, CLIENTS[k]["ids"], joint=counting)], [k])
        [reference] = stream([Ensemble(NAMES, models, CLIENTS[k]["ids"])], [k])
        assert counting.calls == [1] * FRAMES                       # one call per step
        np.testing.assert_array_equal(alone, reference)
        assert alone.shape == (FRAMES, len(NAMES), len(CLIENTS[k]["ids"][0]), 2)


def test_batched_clients_equal_the_per_model_batches_and_each_alone(models, joint):
    counting = CountingJoint(joint)
    together = stream(ensembles(models, counting))
    assert counting.calls == [len(CLIENTS)] * FRAMES                # one call per frame for all
    per_model = stream(ensembles(models))                            # one call per model
    for k in range(len(CLIENTS)):
        np.testing.assert_array_equal(together[k], per_model[k])
        # alone, a client's products run on another batch size (other BLAS kernels)
        [alone] = stream([Ensemble(NAMES, models, CLIENTS[k]["ids"])], [k])
        np.testing.assert_allclose(together[k], alone, atol=1e-6, rtol=0)


def test_snapshots_are_the_same_blob_and_move_between_the_paths(models, joint):
    with_joint, without = ensembles(models, joint), ensembles(models)
    stream(with_joint, stop=5)
    stream(without, stop=5)
    blobs = [snapshot.encode(e.snapshot()) for e in with_joint]
    assert blobs == [snapshot.encode(e.snapshot()) for e in without]
    swapped_joint, swapped_plain = ensembles(models, joint), ensembles(models)
    for blob, a, b in zip(blobs, swapped_joint, swapped_plain):
        a.restore(snapshot.decode(blob))
        b.restore(snapshot.decode(blob))
    for got, want in zip(stream(swapped_joint, start=5), stream(without, start=5)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(stream(swapped_plain, start=5), stream(with_joint, start=5)):
        np.testing.assert_array_equal(got, want)


def test_bad_frames_or_timestamps_are_refused_and_change_nothing(models, joint):
    ensemble = Ensemble(NAMES, models, CLIENTS[0]["ids"], joint=joint)
    frames, _ = client_inputs(0)
    ensemble.step(frames[0])
    before = snapshot.encode(ensemble.snapshot())
    with pytest.raises(ValueError, match=r"frames shape \(5, 3, 3\), expected \(5, 2, 3\)"):
        ensemble.step(np.zeros((5, 3, INPUT_DIM), np.float32))
    with pytest.raises(ValueError, match="timestamps shape"):
        ensemble.step(frames[1], np.zeros(3, np.float32))
    assert snapshot.encode(ensemble.snapshot()) == before


def test_token_models_refuse_a_bad_index_in_the_joint_call_and_change_nothing(tmp_path):
    tokens = load_model(write_workspace(tmp_path / "tokens", input_dim=1, vocab_size=7,
                                        token_embedding_dim=3))
    ensemble = Ensemble(["a", "b"], [tokens, tokens], [[0, 0], [0, 0]], joint=join([tokens, tokens]))
    ensemble.step(np.array([[[2.0], [6.0]], [[0.0], [1.0]]], np.float32))
    before = snapshot.encode(ensemble.snapshot())
    for bad in (7.0, -1.0, 2.5):
        with pytest.raises(ValueError, match=r"at \[1\]\[0\]\[0\] is not a token index"):
            ensemble.step(np.array([[[2.0], [6.0]], [[bad], [1.0]]], np.float32))
    assert snapshot.encode(ensemble.snapshot()) == before


def test_models_that_cannot_share_one_function_get_none(models, joint, tmp_path):
    assert join([FakeModel(**FAKES["alpha"]), models[0]]) is None       # not a Model
    assert join([]) is None
    wide = load_model(write_workspace(tmp_path / "wide", input_dim=INPUT_DIM + 1))
    assert join([models[0], wide]) is None                              # other input width
    other_mode = load_model(write_workspace(tmp_path / "other"), mode="FAST_COMPILE")
    assert join([models[0], other_mode]) is None                        # another compile mode
    with pytest.raises(ValueError, match="other models"):
        Ensemble(NAMES[:2], models[:2], CLIENTS[0]["ids"][:2], joint=joint)


def test_states_and_outputs_handed_back_are_not_the_functions_buffers(models, joint):
    ensemble = Ensemble(NAMES, models, CLIENTS[2]["ids"], joint=joint)
    frames, _ = client_inputs(2)
    output_nbk = ensemble.step(frames[0])
    kept = [cell[0] for cell in joint.f_joint_infer.vm.storage_map.values()
            if isinstance(cell[0], np.ndarray)]
    handed = [output_nbk] + [state for s in ensemble.sessions for state in s.states]
    assert kept and len(handed) > len(NAMES)
    assert not any(np.shares_memory(a, b) for a in handed for b in kept)


def stream_client(endpoint, k, results, start):
    results[k] = stream_through_client(endpoint, NAMES, CLIENTS[k], *client_inputs(k), start)


@pytest.mark.parametrize("delay_us", [0, 50_000])
def test_the_server_steps_each_ensemble_with_one_call(short_module_dir, models_dir, models, joint,
                                                      delay_us):
    by_name = dict(zip(NAMES, models))
    counting = CountingJoint(joint)
    joined = []
    def joiner(loaded):                       # noqa: E306
        joined.append(tuple(loaded))
        return counting
    endpoint = f"ipc://{short_module_dir}/j{delay_us}.sock"
    results, start = {}, threading.Barrier(len(CLIENTS) + 1)
    with running_server(endpoint, models_dir, loader=lambda path: by_name[os.path.basename(path)],
                        joiner=joiner, max_batch_delay_us=delay_us):
        threads = [threading.Thread(target=stream_client, args=(endpoint, k, results, start))
                   for k in range(len(CLIENTS))]
        for thread in threads:
            thread.start()
        start.wait(timeout=60)
        for thread in threads:
            thread.join(timeout=60)
    assert joined == [tuple(models)]                        # built once, for every client
    assert sorted(results) == list(range(len(CLIENTS)))
    assert sum(counting.calls) == len(CLIENTS) * FRAMES     # every step in a joint call
    if delay_us == 0:
        assert set(counting.calls) == {1}                   # each request alone, exactly
    else:
        assert max(counting.calls) > 1                      # it batched
    for k in range(len(CLIENTS)):
        [alone] = stream([Ensemble(NAMES, models, CLIENTS[k]["ids"])], [k])
        if delay_us == 0:
            np.testing.assert_array_equal(results[k], alone)
        else:
            np.testing.assert_allclose(results[k], alone, atol=1e-6, rtol=0)
