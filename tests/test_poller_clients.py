"""bench/poller_clients.py, the load generator of serve_clients.py: one thread polling
many clients' sockets must give each client its own session's outputs, end every
session, and return by itself when the server goes silent."""
import threading
import time

import numpy as np
import pytest
import zmq

from bench_modules import load_bench
from fake_models import INPUT_DIM, make_models_dir, reference_outputs, running_server
from sophia.serving import protocol as proto


def load_poller_clients():
    return load_bench("poller_clients")


DRIVER = load_poller_clients()
CLIENTS = 6


def client_frame(c):
    """Client c's frame at every step: distinct per client, so crossed sessions or
    crossed replies would show in the outputs."""
    return np.full((1, 1, INPUT_DIM), c + 1.0, np.float32)


@pytest.mark.parametrize("delay_us", [500, 0])
def test_each_client_gets_its_own_sessions_outputs(short_dir, delay_us):
    models_dir = make_models_dir(short_dir)
    handshake = proto.format_handshake(["beta"], 1, [[0]])
    payloads = [proto.format_frames(client_frame(c)) for c in range(CLIENTS)]
    with running_server(f"ipc://{short_dir}/s.sock", models_dir,
                        max_batch_delay_us=delay_us) as server:
        results = DRIVER.drive(server.endpoint, handshake, payloads, seconds=0.3,
                               timeout=10, keep_replies=True)
        deadline = time.monotonic() + 5
        while server.num_sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.num_sessions == 0, "the driver's end frames closed every session"
    for c, result in enumerate(results):
        assert result["errors"] == 0 and result["failure"] is None
        replies = result["replies"]
        assert len(replies) >= 2
        assert sum(len(v) for v in result["latencies_us"].values()) == len(replies)
        assert all(t > 0 for v in result["latencies_us"].values() for t in v)
        expected_tbk = reference_outputs("beta", np.repeat(client_frame(c), len(replies), 0)[:, None, 0],
                                         [0])[:, 0]
        got_tbk = np.stack([proto.parse_outputs(r, 1, 1)[0, 0] for r in replies])
        np.testing.assert_array_equal(got_tbk, expected_tbk)


def silent_router(endpoint, answer_handshakes, stop):
    """A ROUTER that answers handshakes with ``ready`` (or not at all) and never a step."""
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    seen = set()

    def serve():
        try:
            while not stop.is_set():
                if not router.poll(20):
                    continue
                rid, empty, *_ = router.recv_multipart()
                if answer_handshakes and rid not in seen:
                    router.send_multipart([rid, empty, proto.READY])
                seen.add(rid)
        finally:
            router.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("answer_handshakes, reason", [(True, "no reply within"),
                                                       (False, "no handshake reply within")])
def test_returns_by_itself_when_the_server_goes_silent(short_dir, answer_handshakes, reason):
    stop = threading.Event()
    endpoint = f"ipc://{short_dir}/silent.sock"
    thread = silent_router(endpoint, answer_handshakes, stop)
    payload = proto.format_frames(client_frame(0))
    try:
        begin = time.monotonic()
        results = DRIVER.drive(endpoint, b"beta;1\n0", [payload] * 4, seconds=0.2, timeout=0.5)
        elapsed = time.monotonic() - begin
    finally:
        stop.set()
        thread.join(timeout=5)
    assert elapsed < 0.2 + 2 * 0.5 + DRIVER.END_LINGER_MS / 1000 + 1.0
    for result in results:
        assert result["errors"] == 1 and reason in result["failure"]
        assert not any(result["latencies_us"].values())
