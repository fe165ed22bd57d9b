"""The C client (clients/c) against a server with fake models.

Built with ``make`` into a temporary directory. Skipped, with the reason, only
where a C compiler, make or the libzmq headers/library are missing
(Debian/Ubuntu: ``apt-get install build-essential libzmq3-dev``).
"""
import os
import subprocess
import time

import numpy as np

from fake_models import make_models_dir, reference_outputs, running_server
from sophia.serving.client import SophiaClient

RUN_TIMEOUT = 20



def run_client(binary, endpoint, pairs, in_file, out_file, stdin=None):
    args = [binary, "-t", "5000", endpoint, "3", in_file, out_file]
    for workspace, ids in pairs:
        args += [workspace, ";".join(str(i) for i in ids)]
    return subprocess.run(args, input=stdin, capture_output=True, timeout=RUN_TIMEOUT)


def no_sessions_left(server, timeout=5.0):
    deadline = time.monotonic() + timeout
    while server.num_sessions and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.num_sessions == 0


def frames_tnbi(num_steps, num_models, num_streams):
    rng = np.random.default_rng(7)
    return rng.normal(size=(num_steps, num_models, num_streams, 3)).astype(np.float32)


def test_c_client_matches_the_python_client(c_client, short_dir):
    models_dir = make_models_dir(short_dir)
    ids = [[0, 4, 2], [1, 1, 1]]
    frames = frames_tnbi(25, 2, 3)
    in_file, out_file = os.path.join(short_dir, "in.f32"), os.path.join(short_dir, "out.f32")
    frames.astype("<f4").tofile(in_file)
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        result = run_client(c_client, server.endpoint, zip(["alpha", "beta"], ids),
                            in_file, out_file)
        assert result.returncode == 0, result.stderr
        assert b"25 steps" in result.stderr
        with SophiaClient(server.endpoint, ["alpha", "beta"], 3, ids, timeout=5) as c:
            expected = np.stack([c.step(f) for f in frames])
        assert no_sessions_left(server)  # both sent the end frame
    got = np.fromfile(out_file, dtype="<f4").reshape(expected.shape)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got[:, 1], reference_outputs("beta", frames[:, 1], ids[1]),
                               rtol=1e-6)


def test_c_client_over_tcp_with_stdin_and_stdout(c_client, short_dir):
    models_dir = make_models_dir(short_dir)
    frames = frames_tnbi(10, 1, 2)
    with running_server("tcp://127.0.0.1:*", models_dir) as server:
        result = run_client(c_client, server.endpoint, [("alpha", [3, 1])], "-", "-",
                            stdin=frames.astype("<f4").tobytes())
    assert result.returncode == 0, result.stderr
    got = np.frombuffer(result.stdout, dtype="<f4").reshape(10, 1, 2, 2)
    np.testing.assert_allclose(got[:, 0], reference_outputs("alpha", frames[:, 0], [3, 1]),
                               rtol=1e-6)


def test_c_client_reports_errors_and_ends_its_session(c_client, short_dir):
    models_dir = make_models_dir(short_dir)
    in_file, out_file = os.path.join(short_dir, "in.f32"), os.path.join(short_dir, "out.f32")
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        result = run_client(c_client, server.endpoint, [("nope", [0])], "-", out_file,
                            stdin=b"")
        assert result.returncode == 2 and b"error: " in result.stderr
        with open(in_file, "wb") as f:
            f.write(b"\0" * (12 + 5))  # one frame, then a partial one
        result = run_client(c_client, server.endpoint, [("alpha", [0])], in_file, out_file)
        assert result.returncode == 1 and b"partial frame" in result.stderr
        assert os.path.getsize(out_file) == 8
        assert no_sessions_left(server)
        usage = subprocess.run([c_client], capture_output=True, timeout=RUN_TIMEOUT)
        assert usage.returncode == 1 and b"usage" in usage.stderr
