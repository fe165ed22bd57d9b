"""End to end: real workspaces, the real loader, the real server, both clients.

An ensemble of two different models (``lstm_ids``: ID embedding; ``gru_clock``:
time gates) is streamed frame by frame through :class:`Server` (in a thread,
over ipc, with the joint function of the two models, as ``sophia.py`` serves
them: one call per step) and must equal offline inference (``f_infer`` over the whole
sequences, on nets built separately from the same workspaces) to 1e-5 — through
:class:`SophiaClient` (plain steps with a reset, and ``step_t`` timestamps) and
through the C client (base protocol). The server preloads the models once for
the module.
"""
import os
import subprocess

import numpy as np
import pytest

from fake_models import running_server
from model_workspaces import (INPUT_DIM, TARGET_DIM, OfflineModel, counter_times,
                              irregular_stamps, stamp_times, write_workspaces)
from sophia.serving.cli import join_models
from sophia.serving.client import ServerError, SophiaClient
from sophia.serving.model import load_model

TOL = 1e-5
NAMES = ["lstm_ids", "gru_clock"]
ID_INDICES = [[0, 3, 4], [0, 0, 0]]  # per model; 4 = an ID never seen in training
NUM_STREAMS = 3
NUM_FRAMES = 14


@pytest.fixture(scope="module")
def short_dir(short_module_dir):
    return short_module_dir


@pytest.fixture(scope="module")
def workspaces(short_dir):
    return write_workspaces(os.path.join(short_dir, "models"))


@pytest.fixture(scope="module")
def server(short_dir, workspaces):
    models_dir = os.path.join(short_dir, "models")
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, loader=load_model,
                        joiner=join_models, preload=NAMES) as server:
        yield server


@pytest.fixture(scope="module")
def offline(workspaces):
    return {name: OfflineModel(workspaces[name]) for name in NAMES}


def frames_tnbj(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(NUM_FRAMES, len(NAMES), NUM_STREAMS, INPUT_DIM)).astype(np.float32)


def expected_tnbk(offline, frames, time_tb):
    return np.stack([offline[name].infer(frames[:, n], time_tb, ID_INDICES[n])
                     for n, name in enumerate(NAMES)], axis=1)


def test_python_client_equals_offline_with_a_reset(server, offline):
    frames, resets = frames_tnbj(0), [(5, [0, 2])]
    with SophiaClient(server.endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=30) as client:
        got = []
        for t in range(NUM_FRAMES):
            if t == 5:
                client.reset([0, 2])
            got.append(client.step(frames[t]))
        assert [s.ensemble.joint is not None for s in server._sessions.values()] == [True]
    expected = expected_tnbk(offline, frames, counter_times(NUM_FRAMES, NUM_STREAMS, resets))
    assert np.stack(got).shape == (NUM_FRAMES, len(NAMES), NUM_STREAMS, TARGET_DIM)
    np.testing.assert_allclose(np.stack(got), expected, atol=TOL, rtol=0)


def test_python_client_timestamps_equal_offline(server, offline):
    frames, stamps_tb = frames_tnbj(1), irregular_stamps(NUM_FRAMES, NUM_STREAMS, seed=5)
    resets = [(8, [1])]
    with SophiaClient(server.endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=30) as client:
        got = []
        for t in range(NUM_FRAMES):
            if t == 8:
                client.reset([1])
            got.append(client.step(frames[t], stamps_tb[t]))
    expected = expected_tnbk(offline, frames, stamp_times(stamps_tb, resets))
    np.testing.assert_allclose(np.stack(got), expected, atol=TOL, rtol=0)


def test_real_loader_errors_reach_the_client(server, short_dir):
    os.makedirs(os.path.join(short_dir, "models", "empty"), exist_ok=True)
    with pytest.raises(ServerError, match="options.json"):
        SophiaClient(server.endpoint, ["empty"], 1, [[0]], timeout=30)
    with pytest.raises(ServerError, match=r"ID index 5 is outside \[0, 5\)"):
        SophiaClient(server.endpoint, NAMES, 1, [[5], [0]], timeout=30)


def test_c_client_equals_offline(server, offline, c_client, short_dir):
    frames = frames_tnbj(2)
    in_file, out_file = os.path.join(short_dir, "in.f32"), os.path.join(short_dir, "out.f32")
    frames.astype("<f4").tofile(in_file)
    args = [c_client, "-t", "30000", server.endpoint, str(INPUT_DIM), in_file, out_file]
    for name, ids in zip(NAMES, ID_INDICES):
        args += [name, ";".join(map(str, ids))]
    result = subprocess.run(args, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    got = np.fromfile(out_file, dtype="<f4").reshape(NUM_FRAMES, len(NAMES), NUM_STREAMS,
                                                     TARGET_DIM)
    expected = expected_tnbk(offline, frames, counter_times(NUM_FRAMES, NUM_STREAMS))
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_the_server_log_at_info_holds_sophias_lines_only(short_dir, workspaces):
    """A real model load (PyTensor compiles, probes g++ and logs at INFO) leaves only
    Sophia's own lines in the server's log."""
    import signal
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, os.path.join(repo, "sophia.py"), "--models_dir",
                                os.path.join(short_dir, "models"), "--preload", "lstm_ids",
                                "--endpoint", f"ipc://{short_dir}/log.sock", "--log_level", "info"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=repo))
    try:
        assert process.stdout.readline().startswith("sophia: serving on "), process.communicate(timeout=5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        stderr = process.communicate(timeout=5)[1]
    finally:
        process.kill()
    lines = stderr.splitlines()
    assert any(" INFO sophia.serving.server: preloaded " in line for line in lines), stderr
    foreign = [line for line in lines if " sophia." not in line]
    assert not foreign, "\n".join(foreign)


def test_fetch_and_restore_continue_bit_identically(server):
    """Real models: the stored states, frame counters and first timestamps travel
    in the blob, so a restored session's outputs equal the original's exactly."""
    frames, stamps_tb = frames_tnbj(3), irregular_stamps(NUM_FRAMES, NUM_STREAMS, seed=6)
    half = NUM_FRAMES // 2

    def drive(client, ts):
        outputs = []
        for t in ts:
            if t == 3:
                client.reset([2])
            outputs.append(client.step(frames[t], stamps_tb[t] if t % 3 else None))
        return np.stack(outputs)

    with SophiaClient(server.endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=30) as original:
        drive(original, range(half))
        blob = original.fetch_state()
        expected = drive(original, range(half, NUM_FRAMES))
    with SophiaClient(server.endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=30) as restored:
        restored.restore_state(blob)
        got = drive(restored, range(half, NUM_FRAMES))
        with SophiaClient(server.endpoint, NAMES[::-1], NUM_STREAMS, ID_INDICES[::-1],
                          timeout=30) as other:
            with pytest.raises(ServerError, match="the state is from another model"):
                other.restore_state(blob)
    np.testing.assert_array_equal(got, expected)
    assert np.abs(expected[-1]).max() > 0


def test_sigterm_saves_and_a_restarted_server_resumes_bit_identically(short_dir, workspaces):
    """``sophia.py --state_dir`` with the real loader: a session saved at SIGTERM and
    resumed by id on the next server continues exactly as one that was never
    interrupted (served by the first server, next to it)."""
    import signal
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    endpoint, state_dir = f"ipc://{short_dir}/resume.sock", os.path.join(short_dir, "states")
    frames, stamps_tb = frames_tnbj(4), irregular_stamps(NUM_FRAMES, NUM_STREAMS, seed=7)
    half = NUM_FRAMES // 2

    def serve():
        process = subprocess.Popen([sys.executable, os.path.join(repo, "sophia.py"),
                                    "--models_dir", os.path.join(short_dir, "models"),
                                    "--endpoint", endpoint, "--state_dir", state_dir],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, PYTHONPATH=repo))
        assert process.stdout.readline().startswith("sophia: serving on "), \
            process.communicate(timeout=5)
        return process

    def stop(process):
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=20)
        finally:
            process.kill()
            stderr = process.communicate(timeout=5)[1]
        assert status == 0, stderr
        return stderr

    process = serve()
    try:
        with SophiaClient(endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=60) as reference:
            expected = np.stack([reference.step(frames[t], stamps_tb[t])
                                 for t in range(NUM_FRAMES)])
        client = SophiaClient(endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=60)
        for t in range(half):
            client.step(frames[t], stamps_tb[t])
        session_id = client.session_id()
        client._abort()  # no end frame: the session stays open until the server stops
    finally:
        log = stop(process)
    assert "saved the state of 1 of 1 sessions" in log, log
    process = serve()
    try:
        with SophiaClient(endpoint, NAMES, NUM_STREAMS, ID_INDICES, timeout=60) as client:
            client.resume(session_id)
            got = np.stack([client.step(frames[t], stamps_tb[t]) for t in range(half, NUM_FRAMES)])
    finally:
        stop(process)
    np.testing.assert_array_equal(got, expected[half:])
