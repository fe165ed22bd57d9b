"""The server with fake models over ipc and loopback tcp: behaviour and faults.

Every wait is bounded (REQ polls with timeouts, loops with fixed counts).
"""
import os
import signal
import socket as socket_module
import stat
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from fake_models import (FAKES, FakeLoader, make_models_dir,
                         reference_outputs, running_server)
from sophia.serving import protocol as proto
from sophia.serving.cli import parse_endpoint
from sophia.serving.client import ServerError, ServerTimeout, SophiaClient, SophiaError
from sophia.serving.paths import ModelLoadError
from sophia.serving.server import Server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 3.0
NO_REPLY_WAIT = 0.3


@pytest.fixture
def models_dir(short_dir):
    return make_models_dir(short_dir)


@pytest.fixture
def server(short_dir, models_dir):
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        yield server


def request(endpoint, parts, timeout=TIMEOUT):
    """One raw REQ round trip; returns the reply, or None when none comes."""
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send_multipart(parts)
        return socket.recv() if socket.poll(timeout * 1000) else None
    finally:
        socket.close()


def wait_for(condition, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def random_frames(seed, num_steps, num_models, num_streams, dim=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_steps, num_models, num_streams, dim)).astype(np.float32)


def assert_serves(endpoint, ids=(0, 4), steps=5):
    """A good client gets the fake's exact outputs."""
    frames_tnbi = random_frames(1, steps, 1, len(ids))
    with SophiaClient(endpoint, ["alpha"], len(ids), [list(ids)], timeout=TIMEOUT) as c:
        got = np.stack([c.step(f)[0] for f in frames_tnbi])
    np.testing.assert_allclose(got, reference_outputs("alpha", frames_tnbi[:, 0], ids),
                               rtol=1e-6)


# --- behaviour ---------------------------------------------------------------

def test_ensemble_steps_carry_state_and_apply_ids(server):
    ids = [[0, 4, 2], [9, -3, 0]]  # beta has no ID embedding: any integer
    frames_tnbi = random_frames(0, 40, 2, 3)
    with SophiaClient(server.endpoint, ["alpha", "beta"], 3, ids, timeout=TIMEOUT) as c:
        outputs_tnbk = np.stack([c.step(f) for f in frames_tnbi])
    assert outputs_tnbk.shape == (40, 2, 3, 2) and outputs_tnbk.dtype == np.float32
    sum_tb = np.cumsum(frames_tnbi[:, 0].sum(axis=2), axis=0)
    expected_alpha = sum_tb[:, :, None] * [1, 2] + np.array(ids[0])[None, :, None]
    np.testing.assert_allclose(outputs_tnbk[:, 0], expected_alpha, rtol=1e-5, atol=1e-5)
    for n, name in enumerate(["alpha", "beta"]):
        np.testing.assert_allclose(outputs_tnbk[:, n],
                                   reference_outputs(name, frames_tnbi[:, n], ids[n]),
                                   rtol=1e-6)


def test_the_joiner_runs_once_per_workspace_list_and_a_failing_one_leaves_models_serving(
        short_dir, models_dir, caplog):
    calls = []

    def joiner(models):
        calls.append([m.factor for m in models])
        raise RuntimeError("cannot join these")
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, joiner=joiner) as server:
        with pytest.raises(ServerError, match="cannot load workspace 'unloadable'"):
            SophiaClient(server.endpoint, ["alpha", "unloadable"], 1, [[0], [0]], timeout=TIMEOUT)
        assert calls == []                              # no joint for models that did not load
        for _ in range(2):
            assert_serves(server.endpoint)              # each model on its own
        assert calls == [[1.0]]                         # one try per list of workspaces
    assert "no joint function for 1 models, each steps on its own: RuntimeError: cannot join" \
        in caplog.text


def test_only_the_most_recent_joint_functions_are_kept(short_dir, models_dir, monkeypatch):
    monkeypatch.setattr("sophia.serving.server.MAX_JOINTS", 2)
    calls = []
    with running_server(f"ipc://{short_dir}/s.sock", models_dir,
                        joiner=lambda models: calls.append([m.factor for m in models])) as server:
        for names in (["alpha"], ["beta"], ["alpha"], ["alpha", "beta"], ["beta"],
                      ["alpha", "beta"]):
            with SophiaClient(server.endpoint, names, 1, [[0]] * len(names), timeout=TIMEOUT):
                pass
    # kept: 'alpha' on its second use, 'alpha, beta' on its second; 'beta' was dropped
    assert calls == [[1.0], [-2.0], [1.0, -2.0], [-2.0]]


def test_tcp_loopback_with_ephemeral_port(models_dir):
    with running_server("tcp://127.0.0.1:*", models_dir) as server:
        assert server.endpoint.startswith("tcp://127.0.0.1:")
        assert not server.endpoint.endswith(":*")
        assert_serves(server.endpoint)


def test_concurrent_clients_are_isolated(server):
    clients = [SophiaClient(server.endpoint, ["alpha"], 2, [[k, 4 - k]], timeout=TIMEOUT)
               for k in range(3)]
    frames = [random_frames(10 + k, 15, 1, 2) for k in range(3)]
    try:
        got = [[], [], []]
        for t in range(15):
            for k, client in enumerate(clients):
                got[k].append(client.step(frames[k][t])[0])
        assert server.num_sessions == 3
    finally:
        for client in clients:
            client.close()
    for k in range(3):
        np.testing.assert_allclose(np.stack(got[k]), reference_outputs(
            "alpha", frames[k][:, 0], [k, 4 - k]), rtol=1e-6)
    assert wait_for(lambda: server.num_sessions == 0)


def test_models_are_loaded_once_and_shared(short_dir, models_dir):
    loader = FakeLoader()
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, loader) as server:
        for _ in range(3):
            assert_serves(server.endpoint)
        absolute = os.path.join(models_dir, "alpha")
        with SophiaClient(server.endpoint, [absolute], 1, [[0]], timeout=TIMEOUT):
            pass
    assert loader.calls == [os.path.realpath(absolute)]


def test_preload_loads_before_serving(short_dir, models_dir):
    loader = FakeLoader()
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, loader,
                        preload=["alpha", "beta"]) as server:
        assert len(loader.calls) == 2
        assert_serves(server.endpoint)
    assert len(loader.calls) == 2
    with pytest.raises(ModelLoadError):
        Server(f"ipc://{short_dir}/t.sock", loader, models_dir, preload=["unloadable"])


def test_reset_extension_restarts_chosen_streams(server):
    frames_tnbi = random_frames(2, 12, 1, 4)
    ids = [1, 2, 3, 4]
    with SophiaClient(server.endpoint, ["alpha"], 4, [ids], timeout=TIMEOUT) as c:
        got = []
        for t, frame in enumerate(frames_tnbi):
            if t == 5:
                c.reset([0, 3])
            got.append(c.step(frame)[0])
    expected = reference_outputs("alpha", frames_tnbi[:, 0], ids, resets=[(5, [0, 3])])
    np.testing.assert_allclose(np.stack(got), expected, rtol=1e-6)
    assert not np.allclose(expected, reference_outputs("alpha", frames_tnbi[:, 0], ids))


def test_timestamps_extension_mixes_with_plain_steps(server):
    frames_tnbi = random_frames(3, 6, 2, 2)
    timestamps_tb = np.arange(12, dtype=np.float32).reshape(6, 2) * 0.25
    with SophiaClient(server.endpoint, ["alpha", "beta"], 2, [[0, 1], [0, 0]],
                      timeout=TIMEOUT) as c:
        got = [c.step(f, timestamps_b=ts) if t % 2 else c.step(f)
               for t, (f, ts) in enumerate(zip(frames_tnbi, timestamps_tb))]
    timestamps_tb[::2] = 0.0  # plain steps carry no timestamp
    for n, name in enumerate(["alpha", "beta"]):
        expected = reference_outputs(name, frames_tnbi[:, n], [[0, 1], [0, 0]][n],
                                     timestamps_tb=timestamps_tb)
        np.testing.assert_allclose(np.stack(got)[:, n], expected, rtol=1e-6)


def test_slow_load_does_not_stall_other_clients(server):
    with SophiaClient(server.endpoint, ["alpha"], 1, [[0]], timeout=TIMEOUT) as fast:
        result = {}
        loading = threading.Thread(target=lambda: result.update(
            reply=request(server.endpoint, [b"slow;1\n0"])))
        loading.start()
        time.sleep(0.05)
        for _ in range(10):
            fast.step(np.ones((1, 1, 3), np.float32))
        assert "reply" not in result  # served while "slow" was still loading
        loading.join(timeout=TIMEOUT)
    assert result["reply"] == proto.READY


def test_a_live_ipc_endpoint_is_not_taken_over(server, short_dir, models_dir):
    with pytest.raises(OSError, match="in use"):
        Server(server.endpoint, FakeLoader(), models_dir)
    assert_serves(server.endpoint)
    stale = os.path.join(short_dir, "stale.sock")
    with socket_module.socket(socket_module.AF_UNIX) as dead:
        dead.bind(stale)  # closed without unlink: a stale socket file
    with running_server(f"ipc://{stale}", models_dir) as replacement:
        assert_serves(replacement.endpoint)
    assert not os.path.exists(stale)


def test_python_client_times_out_and_refuses_use_after_close(short_dir):
    with pytest.raises(ServerTimeout):
        SophiaClient(f"ipc://{short_dir}/nobody.sock", ["alpha"], 1, [[0]], timeout=0.2)


def test_python_client_after_close(server):
    client = SophiaClient(server.endpoint, ["alpha"], 1, [[0]], timeout=TIMEOUT)
    client.close()
    client.close()
    with pytest.raises(SophiaError, match="closed"):
        client.step(np.zeros((1, 1, 3), np.float32))
    with SophiaClient(server.endpoint, ["alpha"], 2, [[0, 0]], timeout=TIMEOUT) as c:
        with pytest.raises(ValueError, match="shape"):
            c.step(np.zeros((2, 3)))
        with pytest.raises(ValueError, match="timestamps_b"):
            c.step(np.zeros((1, 2, 3)), timestamps_b=[0.0])


# --- faults: each is answered (or dropped) and a good client still works -------

@pytest.mark.parametrize("parts, reason", [
    ([b"\xff\xfe\x00garbage\x80"], b"not UTF-8"),
    ([b"alpha;2\n0"], b"1 fields"),
    ([b"alpha;2"], b"0 ID lines"),
    ([b""], b"bad handshake"),
    ([struct.pack("<3f", 1, 2, 3)], b"bad handshake"),
    ([b"reset", b"0"], b"no session"),
    ([b"nope;1\n0"], b"cannot load workspace 'nope'"),
    ([b"unloadable;1\n0"], b"ModelLoadError"),
    ([b"../outside/alpha;1\n0"], b"outside the models directory"),
    ([b"/etc;1\n0"], b"outside the models directory"),
    ([b"link;1\n0"], b"outside the models directory"),
    ([b"alpha;wide;1\n0\n0"], b"differ in (input_dim, target_dim)"),
    ([b"alpha;1\n5"], b"ID index 5 is outside [0, 5)"),
    ([b"a\0b;1\n0"], b"not a valid path"),
    ([b"not_a_model;1\n0"], b"server error, no session: AttributeError"),
])
def test_bad_first_messages_get_an_error_and_no_session(server, models_dir, parts, reason):
    os.symlink(os.path.join(models_dir, "..", "outside", "alpha"),
               os.path.join(models_dir, "link"))
    reply = request(server.endpoint, parts)
    assert reply is not None and reply.startswith(b"error: ") and reason in reply, reply
    assert server.num_sessions == 0
    assert_serves(server.endpoint)


def test_handshake_refusal_raises_in_the_python_client(server):
    with pytest.raises(ServerError, match="cannot load workspace 'nope'"):
        SophiaClient(server.endpoint, ["nope"], 1, [[0]], timeout=TIMEOUT)


def test_bad_requests_in_a_session_do_not_advance_state(server):
    frames_tnbi = random_frames(4, 3, 1, 2)
    nan_frame = frames_tnbi[0].copy()
    nan_frame[0, 1, 2] = np.nan
    bad = [
        ([b"\0" * 20], b"20 bytes, expected 24"),
        ([proto.format_frames(nan_frame)], b"[0][1][2] is not finite"),
        ([proto.format_frames(np.full((1, 2, 3), np.inf, np.float32))], b"not finite"),
        ([b"reset", b"2"], b"outside [0, 2)"),
        ([b"reset", b""], b"empty"),
        ([b"step_t", b"\0" * 4, proto.format_frames(frames_tnbi[0])], b"timestamps"),
        ([b"step_t", b"\0" * 8], b"unknown command"),
        ([b"launch", b"x"], b"unknown command"),
        ([b"\xff\xfe", b"\x80"], b"unknown command"),
    ]
    with SophiaClient(server.endpoint, ["alpha"], 2, [[1, 2]], timeout=TIMEOUT) as c:
        socket = c._socket
        got = [c.step(frames_tnbi[0])[0]]
        for parts, reason in bad:
            socket.send_multipart(parts)
            assert socket.poll(TIMEOUT * 1000)
            reply = socket.recv()
            assert reply.startswith(b"error: ") and reason in reply, (parts, reply)
        got += [c.step(f)[0] for f in frames_tnbi[1:]]
    np.testing.assert_allclose(np.stack(got), reference_outputs(
        "alpha", frames_tnbi[:, 0], [1, 2]), rtol=1e-6)


def test_end_frame_gets_no_reply_and_ends_the_session(server):
    dealer = zmq.Context.instance().socket(zmq.DEALER)  # may send without a reply
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(server.endpoint)
        dealer.send_multipart([b"", b"alpha;1\n0"])
        assert dealer.poll(TIMEOUT * 1000) and dealer.recv_multipart() == [b"", b"ready"]
        assert server.num_sessions == 1
        dealer.send_multipart([b"", proto.END_FRAME + b"\0" * 8])  # full-size end frame
        assert not dealer.poll(NO_REPLY_WAIT * 1000)
        assert wait_for(lambda: server.num_sessions == 0)
        dealer.send_multipart([b"", proto.END_FRAME])  # no session: still no reply
        assert not dealer.poll(NO_REPLY_WAIT * 1000)
        dealer.send_multipart([b"", struct.pack("<3f", 1, 2, 3)])
        assert dealer.poll(TIMEOUT * 1000)
        assert b"no session" in dealer.recv_multipart()[1]
    finally:
        dealer.close()
    assert_serves(server.endpoint)


def test_requests_during_a_slow_handshake_are_refused(server):
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(server.endpoint)
        dealer.send_multipart([b"", b"slow;1\n0"])
        dealer.send_multipart([b"", struct.pack("<3f", 1, 2, 3)])
        replies = []
        for _ in range(2):
            assert dealer.poll(TIMEOUT * 1000)
            replies.append(dealer.recv_multipart()[1])
        assert b"still loading" in replies[0] and replies[1] == proto.READY
    finally:
        dealer.close()


def test_client_vanishing_mid_request_is_dropped(short_dir, models_dir):
    """Its reply cannot be delivered (or, at the latest, its session expires)."""
    with running_server(f"ipc://{short_dir}/s.sock", models_dir,
                        idle_timeout=1.0) as server:
        socket = zmq.Context.instance().socket(zmq.REQ)
        socket.connect(server.endpoint)
        socket.send(b"alpha;1\n0")
        assert socket.poll(TIMEOUT * 1000) and socket.recv() == proto.READY
        socket.send(proto.format_frames(np.ones((1, 1, 3), np.float32)))
        socket.close(linger=500)  # the request is delivered, the client is gone
        assert wait_for(lambda: server.num_sessions == 0)
        assert_serves(server.endpoint)


def test_idle_sessions_expire(short_dir, models_dir):
    with running_server(f"ipc://{short_dir}/s.sock", models_dir,
                        idle_timeout=0.3) as server:
        socket = zmq.Context.instance().socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(server.endpoint)
            socket.send(b"alpha;1\n0")
            assert socket.poll(TIMEOUT * 1000) and socket.recv() == proto.READY
            assert wait_for(lambda: server.num_sessions == 0, timeout=2.0)
            socket.send(proto.format_frames(np.ones((1, 1, 3), np.float32)))
            assert socket.poll(TIMEOUT * 1000) and b"no session" in socket.recv()
        finally:
            socket.close()
        assert_serves(server.endpoint)


def test_oversized_messages_are_dropped(short_dir, models_dir):
    with running_server(f"ipc://{short_dir}/s.sock", models_dir,
                        max_message_bytes=1024) as server:
        assert request(server.endpoint, [b"x" * 5000], timeout=NO_REPLY_WAIT) is None
        reply = request(server.endpoint, [b"alpha;100\n" + b";".join([b"0"] * 100)])
        assert b"over the server's limit of 1024" in reply
        assert_serves(server.endpoint)


def test_a_failing_model_closes_only_its_session(server):
    with SophiaClient(server.endpoint, ["broken"], 1, [[0]], timeout=TIMEOUT) as c:
        with pytest.raises(ServerError, match="session closed: RuntimeError"):
            c.step(np.ones((1, 1, 3), np.float32))
        with pytest.raises(ServerError, match="no session"):
            c.step(np.ones((1, 1, 3), np.float32))
    assert_serves(server.endpoint)


# --- command line --------------------------------------------------------------

@pytest.mark.parametrize("text, endpoint", [
    ("5555", "tcp://127.0.0.1:5555"),
    ("tcp://:5555", "tcp://127.0.0.1:5555"),
    ("tcp://10.0.0.2:7", "tcp://10.0.0.2:7"),
    ("tcp://:*", "tcp://127.0.0.1:*"),
    ("ipc:///tmp/x.sock", "ipc:///tmp/x.sock"),
])
def test_parse_endpoint(text, endpoint):
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["tcp://host", "inproc://x", "ipc://", "x:1"])
def test_parse_endpoint_refuses(text):
    with pytest.raises(ValueError):
        parse_endpoint(text)


def start_cli(args, env_update):
    env = dict(os.environ, **env_update, PYTHONPATH=REPO)
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "sophia.py"), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    line = process.stdout.readline()  # bounded: the process prints it or exits
    assert line.startswith("sophia: serving on "), process.communicate(timeout=5)
    return process, line.split()[-1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_default_ipc_is_private_and_signals_exit_cleanly(short_dir, models_dir,
                                                             signum):
    process, endpoint = start_cli(["--models_dir", models_dir],
                                  {"XDG_RUNTIME_DIR": short_dir})
    try:
        path = endpoint.removeprefix("ipc://")
        assert os.path.dirname(path) == os.path.join(short_dir, "sophia")
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert os.path.exists(path)
        reply = request(endpoint, [b"../outside/alpha;1\n0"])
        assert b"outside the models directory" in reply
        process.send_signal(signum)
        assert process.wait(timeout=5) == 0
        assert not os.path.exists(path)
    finally:
        process.kill()
        process.communicate(timeout=5)


def test_cli_refuses_a_missing_models_dir(short_dir):
    result = subprocess.run([sys.executable, os.path.join(REPO, "sophia.py"),
                             "--models_dir", os.path.join(short_dir, "none"),
                             "--endpoint", f"ipc://{short_dir}/c.sock"],
                            capture_output=True, text=True, timeout=10,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 1 and "not a directory" in result.stderr


def test_fakes_cover_every_name_the_tests_use():
    assert {"alpha", "beta", "wide", "broken", "slow"} <= set(FAKES)


SLOW_PRELOAD = """
import sys, time
import sophia.serving.cli as cli
def load_model(path):
    print("loading", flush=True)
    time.sleep(30)
cli.load_model = load_model
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_during_preload_exits_cleanly(short_dir, models_dir, signum):
    process = subprocess.Popen([sys.executable, "-c", SLOW_PRELOAD, "--models_dir", models_dir,
                                "--preload", "alpha", "--endpoint", f"ipc://{short_dir}/p.sock"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=REPO, XDG_RUNTIME_DIR=short_dir))
    try:
        assert process.stdout.readline() == "loading\n"
        process.send_signal(signum)
        assert process.wait(timeout=5) == 0
        stderr = process.communicate(timeout=5)[1]
        assert "Traceback" not in stderr and "interrupted during start-up" in stderr
    finally:
        process.kill()
        process.communicate(timeout=5)


@pytest.mark.parametrize("level, shown", [("INFO", ["sophia INFO", "pytensor WARNING"]),
                                          ("DEBUG", ["sophia INFO", "pytensor INFO", "pytensor WARNING"]),
                                          ("WARNING", ["pytensor WARNING"])])
def test_log_levels_show_other_libraries_info_only_at_debug(level, shown):
    import io
    import logging
    from sophia.serving.cli import configure_logging
    stream = io.StringIO()
    configure_logging(level, stream)
    try:
        for name in ("sophia.serving.server", "pytensor.link.c.cmodule"):
            logging.getLogger(name).info("info")
            logging.getLogger(name).warning("warning")
        got = [f"{line.split()[3].split('.')[0]} {line.split()[2]}" for line in stream.getvalue().splitlines()]
        assert sorted(got) == sorted(shown + ["sophia WARNING"])
    finally:
        logging.getLogger("sophia").setLevel(logging.NOTSET)
        logging.basicConfig(force=True, level=logging.WARNING)
