"""sophia.serving.model: real workspaces streamed frame by frame equal offline inference.

Each session streams several sequences one frame at a time through
``ModelSession.step``; the reference is ``f_infer`` compiled over the whole
sequence (``compile_infer(window_size=T)``) on a net built separately from the
same workspace, with the time signal a session must produce. Models compile
once per module.
"""
import os
import shutil

import numpy as np
import pytest

from model_workspaces import (IDS, INPUT_DIM, OfflineModel, counter_times, irregular_stamps,
                              stamp_times, write_workspace, write_workspaces)
from sophia.serving.model import load_model
from sophia.serving.paths import ModelLoadError

TOL = 1e-5
NUM_FRAMES = 16


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    return write_workspaces(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models(workspaces):
    return {name: load_model(path) for name, path in workspaces.items()}


@pytest.fixture(scope="module")
def offline(workspaces):
    return {name: OfflineModel(path) for name, path in workspaces.items()}


def inputs_tbi(num_streams, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(NUM_FRAMES, num_streams, INPUT_DIM)).astype(np.float32)


def stream(session, input_tbj, stamps_tb=None, resets=()):
    """Step a session over the frames; ``resets`` holds (t, streams) reset before frame t."""
    restart = dict(resets)
    outputs = []
    for t, input_bj in enumerate(input_tbj):
        if t in restart:
            session.reset(restart[t])
        outputs.append(session.step(input_bj, None if stamps_tb is None else stamps_tb[t]))
    return np.stack(outputs)


def test_model_attributes(models):
    lstm, gru = models["lstm_ids"], models["gru_clock"]
    assert (lstm.input_dim, lstm.target_dim, lstm.num_ids) == (3, 2, len(IDS) + 1)
    assert (gru.input_dim, gru.target_dim, gru.num_ids) == (3, 2, None)


@pytest.mark.parametrize("name", ["lstm_ids", "gru_clock"])
def test_streaming_equals_offline_with_a_reset(models, offline, name):
    id_b = [0, 3, 4, 1]  # 4 is the row for IDs never seen in training
    resets = [(6, [1, 3]), (11, [3])]
    input_tbj = inputs_tbi(len(id_b))
    got = stream(models[name].new_session(id_b), input_tbj, resets=resets)
    expected = offline[name].infer(input_tbj, counter_times(NUM_FRAMES, len(id_b), resets), id_b)
    assert got.dtype == np.float32 and got.shape == (NUM_FRAMES, len(id_b), 2)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    # stream 0 never reset: a reset really changed the others
    no_reset = offline[name].infer(input_tbj, counter_times(NUM_FRAMES, len(id_b)), id_b)
    assert np.abs(no_reset[6:, 1] - got[6:, 1]).max() > 1e-3


def test_ids_matter(models, offline):
    input_tbj = np.repeat(inputs_tbi(1), 3, axis=1)  # the same sequence on 3 streams
    got = stream(models["lstm_ids"].new_session([0, 2, 4]), input_tbj)
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-3
    assert np.abs(got[:, 1] - got[:, 2]).max() > 1e-3


def test_timestamps_equal_offline_for_the_clock_model(models, offline):
    stamps_tb = irregular_stamps(NUM_FRAMES, 3, seed=1)
    resets = [(9, [2])]
    input_tbj = inputs_tbi(3, seed=2)
    got = stream(models["gru_clock"].new_session([0, 0, 0]), input_tbj, stamps_tb, resets)
    expected = offline["gru_clock"].infer(input_tbj, stamp_times(stamps_tb, resets), [0, 0, 0])
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    counted = offline["gru_clock"].infer(input_tbj, counter_times(NUM_FRAMES, 3, resets), [0] * 3)
    assert np.abs(counted - got).max() > 1e-3  # the timestamps reached the gates


def test_interleaved_sessions_of_different_sizes_do_not_interfere(models, offline):
    model, reference = models["lstm_ids"], offline["lstm_ids"]
    ids_a, ids_b = [2, 1], [0, 4, 3, 1, 2]
    session_a, session_b = model.new_session(ids_a), model.new_session(ids_b)
    input_a, input_b = inputs_tbi(2, seed=3), inputs_tbi(5, seed=4)
    got_a, got_b = [], []
    for t in range(NUM_FRAMES):
        got_a.append(session_a.step(input_a[t]))
        got_b.append(session_b.step(input_b[t]))
        if t % 5 == 0:  # a third session, started and dropped in between
            model.new_session([1]).step(input_a[t][:1])
    np.testing.assert_allclose(np.stack(got_a), reference.infer(
        input_a, counter_times(NUM_FRAMES, 2), ids_a), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.stack(got_b), reference.infer(
        input_b, counter_times(NUM_FRAMES, 5), ids_b), atol=TOL, rtol=0)


def test_session_input_errors(models):
    lstm, gru = models["lstm_ids"], models["gru_clock"]
    with pytest.raises(ValueError, match="ID index 5"):
        lstm.new_session([0, 5])
    with pytest.raises(ValueError, match="ID index -1"):
        lstm.new_session([-1])
    gru.new_session([-7, 99])  # no ID embedding: indices ignored
    session = gru.new_session([0, 0])
    with pytest.raises(ValueError, match="input shape"):
        session.step(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="timestamps shape"):
        session.step(np.zeros((2, 3), np.float32), np.zeros(3))
    with pytest.raises(ValueError, match="stream 2"):
        session.reset([2])
    assert session.count_b.tolist() == [0, 0]  # nothing advanced


OPTION_SETS = {
    "lstm": dict(unit_type="lstm"), "gru": dict(unit_type="gru"),
    "lstm_peephole": dict(unit_type="lstm", peephole=True),
    "lstm_layer_norm": dict(unit_type="lstm", layer_norm=True),
    "gru_layer_norm": dict(unit_type="gru", layer_norm=True),
    "lstm_weight_norm": dict(unit_type="lstm", weight_norm=True),
    "gru_batch_norm": dict(unit_type="gru", batch_norm=True),
    "lstm_batch_norm_peephole_clock": dict(unit_type="lstm", batch_norm=True, peephole=True, learn_clock_params=True),
    "lstm_clock": dict(unit_type="lstm", learn_clock_params=True),
    "lstm_residual_ids": dict(unit_type="lstm", residual_gate=True, learn_id_embedding=True,
                              id_embedding_dim=3, num_ids=len(IDS)),
    "gru_zero_init_states": dict(unit_type="gru", learn_init_states=False),
    "fc": dict(unit_type="fc"),
}


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_every_option_set_served_frame_by_frame_equals_the_scan_graph_offline(name, tmp_path):
    """For every unit and option set: frame by frame through a session, with a reset,
    the served outputs equal the scan engine's over the whole sequence."""
    path = write_workspace(tmp_path / name, seed=3, **OPTION_SETS[name])
    model = load_model(path, mode="FAST_COMPILE")      # the server's CVM computes the same graph
    id_b, resets = [0, 3, 4], [(7, [1])]
    input_tbj = inputs_tbi(len(id_b), seed=5)
    got = stream(model.new_session(id_b), input_tbj, resets=resets)
    reference = OfflineModel(path, engine="scan")
    expected = reference.infer(input_tbj, counter_times(NUM_FRAMES, len(id_b), resets), id_b)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.fixture
def broken(workspaces, tmp_path):
    path = tmp_path / "ws"
    shutil.copytree(workspaces["lstm_ids"], path)
    return path


def test_missing_workspace_or_files(broken, tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    os.remove(broken / "params.npz")
    with pytest.raises(ModelLoadError, match="params.npz"):
        load_model(broken)
    os.remove(broken / "options.json")
    with pytest.raises(ModelLoadError, match="options.json"):
        load_model(broken)


@pytest.mark.parametrize("text, message", [
    ("{not json", "JSON in .*options.json"),
    ('{"train": {}}', "options.json.*'model'"),
    ('{"model": {"net_width": 0}}', "options.json.*net_width"),
    ('{"model": {"colour": 1}}', "options.json.*colour"),
    ('{"model": {"input_dim": 3}}', "options.json.*target_dim"),
])
def test_bad_options(broken, text, message):
    (broken / "options.json").write_text(text)
    with pytest.raises(ModelLoadError, match=message):
        load_model(broken)


def test_ids_order_must_match_num_ids(broken):
    (broken / "ids.order").write_text("a;b")
    with pytest.raises(ModelLoadError, match="ids.order.*2 sequence IDs.*num_ids = 4"):
        load_model(broken)
    os.remove(broken / "ids.order")
    with pytest.raises(ModelLoadError, match="ids.order"):
        load_model(broken)


def test_params_that_do_not_fit(tmp_path):
    wide = write_workspace(tmp_path / "wide", net_width=9)
    path = write_workspace(tmp_path / "ws")
    shutil.copy(os.path.join(wide, "params.npz"), os.path.join(path, "params.npz"))
    with pytest.raises(ModelLoadError, match="params.npz.*shape"):
        load_model(path)
    (tmp_path / "ws" / "params.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ModelLoadError, match="params.npz"):
        load_model(path)
    values = dict(np.load(os.path.join(wide, "params.npz")))
    values["layer0.W_x"] = np.full_like(values["layer0.W_x"], np.nan)
    np.savez(os.path.join(path, "params.npz"), **values)
    with pytest.raises(ModelLoadError, match="params.npz.*non-finite.*layer0.W_x"):
        load_model(path)


def test_fingerprint_follows_the_values_not_the_path(workspaces, tmp_path):
    from sophia.serving.model import fingerprint
    from sophia.workspace import Workspace, load_ids, load_net
    copy = shutil.copytree(workspaces["lstm_ids"], tmp_path / "copy")
    prints = {}
    for key, path in [("a", workspaces["lstm_ids"]), ("copy", copy), ("b", workspaces["gru_clock"])]:
        net, run = load_net(path)
        prints[key] = fingerprint(net, load_ids(Workspace(path, create=False), run.model))
    assert len(prints["a"]) == 32 and prints["a"] == prints["copy"] != prints["b"]
    values = net.get_values()
    name = sorted(values)[0]
    values[name] = values[name] + np.float32(1e-6)
    net.set_values(values)
    assert fingerprint(net, []) != prints["b"]


def test_session_state_round_trip_and_refusal(models):
    model = models["gru_clock"]
    input_tbj, stamps_tb = inputs_tbi(2, seed=5), irregular_stamps(NUM_FRAMES, 2, seed=3)
    original = model.new_session([0, 0])
    stream(original, input_tbj[:6], stamps_tb[:6])
    state = original.state()
    assert set(state) == {f"state{n}_bi" for n in range(len(model.state_widths))} | {
        "count_b", "first_time_b"}
    restored = model.new_session([0, 0])
    restored.set_state(state)
    state["count_b"][:] = 99  # set_state copied: the session does not see this
    np.testing.assert_array_equal(stream(restored, input_tbj[6:], stamps_tb[6:]),
                                  stream(original, input_tbj[6:], stamps_tb[6:]))
    before = restored.state()
    with pytest.raises(ValueError, match=r"count_b int32 \[2\].*expected .*count_b int64 \[2\]"):
        restored.set_state({**before, "count_b": before["count_b"].astype(np.int32)})
    with pytest.raises(ValueError, match="expected"):
        restored.set_state({"count_b": before["count_b"]})
    for name, array in restored.state().items():
        np.testing.assert_array_equal(array, before[name])
