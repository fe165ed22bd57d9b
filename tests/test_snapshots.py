"""State snapshots: the blob format, fetch and restore, save at shutdown, resume by id.

"Bit-identical" is ``assert_array_equal`` against an uninterrupted session of the
same server. Fakes (tests/fake_models.py) run in-process servers; the shutdown
tests run ``sophia.py``'s command line in a subprocess (with the fakes patched
in as its loader) and stop it with SIGTERM; one real workspace
(tests/model_workspaces.py) is fetched and restored through the real loader.
Every wait is bounded.
"""
import os
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from fake_models import FAKES, FakeModel, make_models_dir, running_server
from sophia.serving import protocol as proto
from sophia.serving import snapshot
from sophia.serving.client import ServerError, SophiaClient
from sophia.serving.ensemble import Ensemble, EnsembleError
from sophia.serving.snapshot import SnapshotError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 5.0
NAMES, IDS = ["alpha", "beta"], [[0, 4, 2], [0, 0, 0]]


def random_frames(seed, num_steps, num_models=2, num_streams=3, dim=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_steps, num_models, num_streams, dim)).astype(np.float32)


def stamps(num_steps, num_streams=3, start=0):
    return (0.5 * np.arange(start, start + num_steps)[:, None]
            + np.arange(num_streams)).astype(np.float32)


def drive(client, frames, timestamps=None, start=0):
    """Step through frames (timestamps on odd steps, a reset of stream 1 at step 3)."""
    got = []
    for t, frame in enumerate(frames, start):
        if t == 3:
            client.reset([1])
        use = timestamps is not None and t % 2
        got.append(client.step(frame, timestamps[t - start] if use else None))
    return np.stack(got)


def fake_ensemble(names=NAMES, ids=IDS, steps=4):
    ensemble = Ensemble(names, [FakeModel(**FAKES[n]) for n in names], ids)
    for frame in random_frames(0, steps, len(names), len(ids[0])):
        ensemble.step(frame)
    return ensemble


@pytest.fixture
def models_dir(short_dir):
    return make_models_dir(short_dir)


@pytest.fixture
def server(short_dir, models_dir):
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        yield server


# --- the blob (pure) -------------------------------------------------------------

def test_blob_round_trip_is_exact():
    state = snapshot.ModelState(bytes(range(32)), (0, 7), {
        "state0_bi": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "count_b": np.array([3, 0], np.int64), "first_time_b": np.array([np.nan, 1e9 + 0.25])})
    blob = snapshot.encode(snapshot.Snapshot(2, (state, state)))
    assert blob.startswith(snapshot.MAGIC) and not proto.is_error(blob)
    got = snapshot.decode(blob)
    assert got.num_streams == 2 and len(got.models) == 2
    for model in got.models:
        assert model.fingerprint == state.fingerprint and model.id_indices == (0, 7)
        assert list(model.arrays) == list(state.arrays)
        for name, array in state.arrays.items():
            assert model.arrays[name].dtype == array.dtype and model.arrays[name].flags.writeable
            np.testing.assert_array_equal(model.arrays[name], array)


def _rewrite(blob, header=None, version=None, magic=None):
    """The blob with another header, version or magic, and a CRC that matches again."""
    _, old_version, header_len = struct.unpack_from("<8sII", blob)
    old_header = blob[16:16 + header_len]
    header = old_header if header is None else header
    body = (struct.pack("<8sII", magic or snapshot.MAGIC, old_version if version is None
                        else version, len(header)) + header + blob[16 + header_len:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def _flip(blob, offset):
    return blob[:offset] + bytes([blob[offset] ^ 0x10]) + blob[offset + 1:]


BAD_BLOBS = {  # name: (make a bad blob from a good one, what the error says)
    "empty": (lambda b: b"", "truncated"),
    "truncated in the prefix": (lambda b: b[:10], "truncated"),
    "truncated in the header": (lambda b: b[:40], "truncated"),
    "truncated in the arrays": (lambda b: b[:-9], "truncated"),
    "trailing bytes": (lambda b: b + b"\0", "trailing bytes"),
    "other magic": (lambda b: _rewrite(b, magic=b"NOTSTATE"), "not a Sophia state blob"),
    "wrong version": (lambda b: _rewrite(b, version=2), "version 2, this server reads version 1"),
    "corrupt header (not JSON)": (lambda b: _rewrite(b, header=b"{not json" + b" " * 40),
                                  "header is corrupt: not UTF-8 JSON"),
    "corrupt header (schema)": (lambda b: _rewrite(b, header=b'{"num_streams": 3, "models": 1}'),
                                "header is corrupt"),
    "corrupt header (bit flip)": (lambda b: _flip(b, 20), "corrupt"),
    "corrupt arrays": (lambda b: _flip(b, len(b) - 12), "CRC-32 does not match"),
}


@pytest.mark.parametrize("case", list(BAD_BLOBS))
def test_decode_refuses_bad_blobs_naming_what_was_expected(case):
    make, reason = BAD_BLOBS[case]
    blob = snapshot.encode(fake_ensemble().snapshot())
    with pytest.raises(SnapshotError, match=reason):
        snapshot.decode(make(blob))


def test_decode_refuses_a_header_that_describes_impossible_arrays():
    blob = snapshot.encode(fake_ensemble().snapshot())
    header = blob[16:16 + struct.unpack_from("<I", blob, 12)[0]]
    for old, new in [(b'"<f8"', b'"|O8"'), (b'"sum_b"', b'"a/b"'), (b'[3]', b'[-3]')]:
        assert old in header
        with pytest.raises(SnapshotError, match="array entry"):
            snapshot.decode(_rewrite(blob, header=header.replace(old, new)))


# --- the ensemble ------------------------------------------------------------------

def test_ensemble_restore_continues_bit_identically():
    original, frames = fake_ensemble(), random_frames(1, 6)
    copy = Ensemble(NAMES, [FakeModel(**FAKES[n]) for n in NAMES], IDS)
    copy.restore(snapshot.decode(snapshot.encode(original.snapshot())))
    for frame in frames:
        np.testing.assert_array_equal(copy.step(frame), original.step(frame))


@pytest.mark.parametrize("names, ids, reason", [
    (["beta", "alpha"], IDS[::-1], r"model 0 \('beta'\): the state is from another model"),
    (["alpha", "slow"], IDS, r"model 1 \('slow'\): the state is from another model"),
    (["alpha"], IDS[:1], "2 models x 3 streams, this session has 1 x 3"),
    (NAMES, [[0, 4], [0, 0]], "2 models x 3 streams, this session has 2 x 2"),
    (NAMES, [[0, 4, 3], [9, 9, 9]], r"ID indices \[0, 4, 2\] differ from this session's \[0, 4, 3\]"),
])
def test_ensemble_refuses_a_state_that_does_not_fit_and_is_unchanged(names, ids, reason):
    target = fake_ensemble(names, ids, steps=2)
    before = target.snapshot()
    with pytest.raises(EnsembleError, match=reason):
        target.restore(fake_ensemble().snapshot())
    for was, now in zip(before.models, target.snapshot().models):
        np.testing.assert_array_equal(now.arrays["sum_b"], was.arrays["sum_b"])


def test_ensemble_refuses_arrays_of_another_layout():
    state = fake_ensemble().snapshot()
    bad = snapshot.Snapshot(3, (state.models[0], snapshot.ModelState(
        state.models[1].fingerprint, state.models[1].id_indices,
        {"sum_b": np.zeros(3, np.float32)})))
    target = fake_ensemble(steps=2)  # its state differs from the donor's
    before = target.snapshot().models[0].arrays["sum_b"]
    assert not np.array_equal(before, state.models[0].arrays["sum_b"])
    with pytest.raises(EnsembleError, match=r"sum_b float32 \[3\], expected sum_b float64 \[3\]"):
        target.restore(bad)
    np.testing.assert_array_equal(target.snapshot().models[0].arrays["sum_b"], before)  # model 0 too


# --- fetch and restore through the server -------------------------------------------

def test_fetch_and_restore_into_a_new_session_continue_bit_identically(server):
    frames, timestamps = random_frames(2, 12), stamps(12)
    with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as original:
        drive(original, frames[:5], timestamps[:5])
        blob = original.fetch_state()
        assert original.fetch_state() == blob  # fetching changes nothing
        expected = drive(original, frames[5:], timestamps[5:], start=5)
    with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as restored:
        restored.step(frames[7])  # whatever it did before is replaced
        restored.restore_state(blob)
        got = drive(restored, frames[5:], timestamps[5:], start=5)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", ["other models", "other ID indices", "truncated",
                                  "corrupt header", "wrong version", "corrupt arrays",
                                  "not a blob"])
def test_a_bad_blob_gets_an_error_and_leaves_the_session_working(server, case):
    frames = random_frames(3, 8)
    with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as reference:
        expected = drive(reference, frames)
    donor = {"other models": (["alpha", "slow"], IDS),
             "other ID indices": (NAMES, [[1, 1, 1], [0, 0, 0]])}.get(case, (NAMES, IDS))
    with SophiaClient(server.endpoint, *[donor[0], 3, donor[1]], timeout=TIMEOUT) as other:
        other.step(frames[0])
        blob = other.fetch_state()
    blob = {"truncated": lambda b: b[:-7],
            "corrupt header": BAD_BLOBS["corrupt header (not JSON)"][0],
            "wrong version": BAD_BLOBS["wrong version"][0],
            "corrupt arrays": BAD_BLOBS["corrupt arrays"][0],
            "not a blob": lambda b: b"error: not a blob"}.get(case, lambda b: b)(blob)
    with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as client:
        got = [drive(client, frames[:4])]
        with pytest.raises(ServerError, match="error: bad state blob, session unchanged: "):
            client.restore_state(blob)
        got.append(drive(client, frames[4:], start=4))
    np.testing.assert_array_equal(np.concatenate(got), expected)


def test_snapshot_commands_refuse_bad_arguments(server):
    with SophiaClient(server.endpoint, ["alpha"], 1, [[0]], timeout=TIMEOUT) as client:
        socket = client._socket
        for parts, reason in [([b"fetch_state", b"x"], b"takes an empty second part"),
                              ([b"session_id", b"x"], b"takes an empty second part"),
                              ([b"fetch_state"], b"expected 12"),  # one part: a step
                              ([b"restore_state", b"", b""], b"unknown command"),
                              ([b"resume", b"../../etc/passwd"], b"32 lowercase hex digits"),
                              ([b"resume", b"0" * 32], b"no --state_dir")]:
            socket.send_multipart(parts)
            assert socket.poll(TIMEOUT * 1000)
            reply = socket.recv()
            assert reply.startswith(b"error: ") and reason in reply, (parts, reply)
        session_id = client.session_id()
        assert len(session_id) == 32 and int(session_id, 16) >= 0
        assert client.session_id() == session_id
        client.step(np.ones((1, 1, 3), np.float32))


# --- save at shutdown, resume by id --------------------------------------------------

def test_a_stopped_server_saves_every_session_and_the_next_one_resumes_them(short_dir,
                                                                             models_dir):
    state_dir = os.path.join(short_dir, "states")
    frames, timestamps = random_frames(4, 10), stamps(10)
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as reference:
            expected = drive(reference, frames, timestamps)
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, state_dir=state_dir) as server:
        first = SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT)
        other = SophiaClient(server.endpoint, ["beta"], 1, [[0]], timeout=TIMEOUT)
        drive(first, frames[:6], timestamps[:6])
        session_id, other_id = first.session_id(), other.session_id()
    first._abort(), other._abort()  # the server is gone; no end frame to send
    assert sorted(os.listdir(state_dir)) == sorted([f"{session_id}.state", f"{other_id}.state"])
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    saved = os.path.join(state_dir, f"{session_id}.state")
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, state_dir=state_dir) as server:
        with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as client:
            client.resume(session_id)
            assert client.session_id() == session_id and not os.path.exists(saved)
            got = drive(client, frames[6:], timestamps[6:], start=6)
            with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as again:
                with pytest.raises(ServerError, match="an open session has that id"):
                    again.resume(session_id)
        with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as late:
            with pytest.raises(ServerError, match="no state saved under that id"):
                late.resume(session_id)  # resumed already
    np.testing.assert_array_equal(got, expected[6:])


def test_resume_into_a_session_it_does_not_fit_keeps_the_state(short_dir, models_dir):
    state_dir = os.path.join(short_dir, "states")
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, state_dir=state_dir) as server:
        client = SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT)
        client.step(np.ones((2, 3, 3), np.float32))
        session_id = client.session_id()
    client._abort()
    with running_server(f"ipc://{short_dir}/s.sock", models_dir, state_dir=state_dir) as server:
        with SophiaClient(server.endpoint, ["beta", "alpha"], 3, IDS[::-1],
                          timeout=TIMEOUT) as wrong:
            with pytest.raises(ServerError, match=f"cannot resume {session_id}, session "
                               "unchanged: model 0 .'beta'.: the state is from another model"):
                wrong.resume(session_id)
            np.testing.assert_array_equal(wrong.step(np.ones((2, 3, 3), np.float32))[1, :, 0],
                                          [3, 7, 5])  # alpha from its initial state
        assert os.path.exists(os.path.join(state_dir, f"{session_id}.state"))
        with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as right:
            right.resume(session_id)
            np.testing.assert_array_equal(right.step(np.ones((2, 3, 3), np.float32))[0, :, 0],
                                          [6, 10, 8])  # alpha's second frame


FAKE_CLI = """
import sys
import sophia.serving.cli as cli
from fake_models import FakeLoader
cli.load_model = FakeLoader()
sys.exit(cli.main(sys.argv[1:]))
"""


def start_fake_cli(models_dir, endpoint, state_dir):
    """``sophia.py``'s main with the fakes as its loader; returns (process, endpoint)."""
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_CLI, "--models_dir", models_dir, "--endpoint", endpoint,
         "--state_dir", state_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS])))
    line = process.stdout.readline()  # bounded: the process prints it or exits
    assert line.startswith("sophia: serving on "), process.communicate(timeout=5)
    return process


def stop(process):
    """SIGTERM; returns the server's log (stderr) after a clean exit."""
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=10)
    finally:
        process.kill()
        stderr = process.communicate(timeout=5)[1]
    assert status == 0, stderr
    return stderr


def test_sigterm_saves_and_a_restarted_server_resumes_python_client(short_dir, models_dir):
    state_dir, endpoint = os.path.join(short_dir, "states"), f"ipc://{short_dir}/cli.sock"
    frames, timestamps = random_frames(5, 10), stamps(10)
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as reference:
            expected = drive(reference, frames, timestamps)
    process = start_fake_cli(models_dir, endpoint, state_dir)
    try:
        client = SophiaClient(endpoint, NAMES, 3, IDS, timeout=TIMEOUT)
        drive(client, frames[:6], timestamps[:6])
        session_id = client.session_id()
        client._abort()
    finally:
        log = stop(process)
    assert "saved the state of 1 of 1 sessions" in log, log
    assert os.listdir(state_dir) == [f"{session_id}.state"]
    process = start_fake_cli(models_dir, endpoint, state_dir)
    try:
        with SophiaClient(endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as client:
            client.resume(session_id)
            got = drive(client, frames[6:], timestamps[6:], start=6)
    finally:
        stop(process)
    np.testing.assert_array_equal(got, expected[6:])


def run_c_client(binary, options, endpoint, frames, out_file):
    in_file = out_file + ".in"
    frames.astype("<f4").tofile(in_file)
    args = [binary, "-t", "5000", *options, endpoint, "3", in_file, out_file]
    for workspace, ids in zip(NAMES, IDS):
        args += [workspace, ";".join(map(str, ids))]
    result = subprocess.run(args, capture_output=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return np.fromfile(out_file, dtype="<f4").reshape(len(frames), 2, 3, 2)


def test_sigterm_saves_and_a_restarted_server_resumes_c_client(c_client, short_dir,
                                                               models_dir):
    state_dir, endpoint = os.path.join(short_dir, "states"), f"ipc://{short_dir}/cli.sock"
    id_file, out = os.path.join(short_dir, "id"), os.path.join(short_dir, "out")
    frames = random_frames(6, 10)
    with running_server(f"ipc://{short_dir}/s.sock", models_dir) as server:
        with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as reference:
            expected = np.stack([reference.step(f) for f in frames])
    process = start_fake_cli(models_dir, endpoint, state_dir)
    try:
        first = run_c_client(c_client, ["-i", id_file, "-k"], endpoint, frames[:6], out)
    finally:
        log = stop(process)
    np.testing.assert_array_equal(first, expected[:6])
    session_id = open(id_file).read()
    assert "saved the state of 1 of 1 sessions" in log, log
    assert os.listdir(state_dir) == [f"{session_id}.state"]
    process = start_fake_cli(models_dir, endpoint, state_dir)
    try:
        got = run_c_client(c_client, ["-r", session_id, "-i", id_file], endpoint,
                           frames[6:], out)
    finally:
        stop(process)
    assert open(id_file).read() == session_id and os.listdir(state_dir) == []
    np.testing.assert_array_equal(got, expected[6:])


def test_c_client_fetches_and_restores_a_blob(c_client, server, short_dir):
    blob_file, out = os.path.join(short_dir, "blob"), os.path.join(short_dir, "out")
    frames = random_frames(7, 9)
    with SophiaClient(server.endpoint, NAMES, 3, IDS, timeout=TIMEOUT) as reference:
        expected = np.stack([reference.step(f) for f in frames])
    run_c_client(c_client, ["-S", blob_file], server.endpoint, frames[:4], out)
    assert open(blob_file, "rb").read().startswith(snapshot.MAGIC)
    got = run_c_client(c_client, ["-R", blob_file], server.endpoint, frames[4:], out)
    np.testing.assert_array_equal(got, expected[4:])
    with open(blob_file, "r+b") as f:
        f.truncate(30)
    result = subprocess.run([c_client, "-t", "5000", "-R", blob_file, server.endpoint, "3",
                             "-", out, "alpha", "0"], input=b"", capture_output=True, timeout=20)
    assert result.returncode == 2 and b"error: bad state blob" in result.stderr
