"""Per-step round-trip latency of the Sophia server, beside the floor it cannot beat.

For B streams and N models (2-layer LSTM, width 256, input 44, output 1 by
default) over ipc and tcp (127.0.0.1), a raw REQ client sends preformatted step
messages to a real server process (``sophia.py``, real workspaces) and times each
round trip. In the same run it measures the floor:

- transport: a bare ZeroMQ REQ/ROUTER echo (a Python ROUTER in its own process)
  answering messages of the same sizes;
- compute: the N models' step as the server runs it (an ``Ensemble`` with their
  joint function, one call per step), in this process, no sockets.

Floor samples are echo sample + compute sample; the goal is server p99 ≤ 1.5×
floor p99. It also prints the steps per second a :class:`SophiaClient` reaches
streaming as fast as it can. Not a test: it prints figures.

Example (a quick run, about a minute)::

    python bench/serve_latency.py --steps 300
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 16], help="values of B")
    p.add_argument("--models", type=int, nargs="+", default=[1, 3], help="values of N")
    p.add_argument("--transports", nargs="+", default=["ipc", "tcp"], choices=["ipc", "tcp"])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--input_dim", type=int, default=44)
    p.add_argument("--target_dim", type=int, default=1)
    p.add_argument("--steps", type=int, default=1000, help="timed round trips per case")
    p.add_argument("--warmup", type=int, default=30, help="untimed round trips first")
    p.add_argument("--stream_seconds", type=float, default=1.0,
                   help="how long the client streams as fast as it can, per case")
    p.add_argument("--max_batch_delay_us", type=int, default=None,
                   help="the server's batching delay (default: the server's own)")
    p.add_argument("--blas_threads", type=int, default=None,
                   help="set OPENBLAS/OMP_NUM_THREADS for this process and the server")
    p.add_argument("--echo", metavar="ENDPOINT", help=argparse.SUPPRESS)  # internal
    p.add_argument("--reply_bytes", type=int, nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.blas_threads is not None:  # must precede numpy's import
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.blas_threads)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from serving_support import endpoint_for, start, write_workspaces  # noqa: E402
from sophia.serving import protocol as proto  # noqa: E402
from sophia.serving.client import SophiaClient  # noqa: E402
from sophia.serving.ensemble import Ensemble  # noqa: E402
from sophia.serving.joint import join  # noqa: E402
from sophia.serving.model import load_model  # noqa: E402


def run_echo(endpoint, reply_sizes):
    """The transport floor: answer each request with a reply of the matching size.

    Replies are N·B·K float32 for a request of N·B·I float32; the size map is
    given on the command line. Runs until it gets a one-byte message.
    """
    request_to_reply = dict(zip(reply_sizes[::2], reply_sizes[1::2]))
    replies = {n: b"\0" * m for n, m in request_to_reply.items()}
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    print(f"echo: serving on {router.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    try:
        while True:
            rid, empty, body = router.recv_multipart(copy=False)
            size = len(body.buffer)
            if size == 1:
                router.send_multipart([rid, empty, b"ok"])
                return
            router.send_multipart([rid, empty, replies.get(size, b"")])
    finally:
        router.close()
        context.term()


def time_round_trips(socket, message, steps, warmup):
    """Round-trip times (seconds) of ``steps`` requests on a REQ socket."""
    times = np.empty(steps)
    for n in range(warmup + steps):
        start_time = time.perf_counter()
        socket.send(message)
        reply = socket.recv()
        if n >= warmup:
            times[n - warmup] = time.perf_counter() - start_time
    if proto.is_error(reply):
        raise RuntimeError(reply.decode())
    return times


def time_compute(models, joint, num_streams, args):
    """Seconds per step of the N models alone (no sockets), stepped as the server
    steps them: one ensemble, one call of their joint function ``joint``."""
    ensemble = Ensemble([str(n) for n in range(len(models))], models,
                        [[0] * num_streams] * len(models), joint=joint)
    frames_nbj = np.random.default_rng(0).normal(
        size=(len(models), num_streams, args.input_dim)).astype(np.float32)
    times = np.empty(args.steps)
    for n in range(args.warmup + args.steps):
        start_time = time.perf_counter()
        ensemble.step(frames_nbj)
        if n >= args.warmup:
            times[n - args.warmup] = time.perf_counter() - start_time
    return times


def frames_per_second(endpoint, names, num_streams, args):
    """Steps per second a SophiaClient reaches streaming as fast as it can."""
    frames_nbj = np.zeros((len(names), num_streams, args.input_dim), np.float32)
    with SophiaClient(endpoint, names, num_streams, [[0] * num_streams] * len(names)) as c:
        steps, start_time = 0, time.perf_counter()
        while time.perf_counter() - start_time < args.stream_seconds and steps < 10**6:
            c.step(frames_nbj)
            steps += 1
        return steps / (time.perf_counter() - start_time)


def bench_case(context, server_ep, echo_ep, names, num_streams, compute, args):
    """Server vs floor latencies for one (transport, N, B); returns a result row."""
    frames = proto.format_frames(np.zeros((len(names), num_streams, args.input_dim), np.float32))
    handshake = proto.format_handshake(names, num_streams, [[0] * num_streams] * len(names))
    result = {}
    for label, endpoint in (("server", server_ep), ("echo", echo_ep)):
        req = context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, 60_000)
        req.connect(endpoint)
        try:
            if label == "server":
                req.send(handshake)
                if req.recv() != proto.READY:
                    raise RuntimeError("handshake refused")
            result[label] = time_round_trips(req, frames, args.steps, args.warmup)
            if label == "server":
                req.send(proto.END_FRAME)
        finally:
            req.close()
    result["floor"] = result["echo"] + compute
    result["fps"] = frames_per_second(server_ep, names, num_streams, args)
    return result


def main():
    args = ARGS
    if args.echo:
        return run_echo(args.echo, args.reply_bytes)
    tmp = tempfile.mkdtemp(prefix="sph-bench-")     # keep TMPDIR short: ipc paths are limited
    names = write_workspaces(tmp, max(args.models), args)
    sizes = []
    for n in args.models:
        for b in args.streams:
            sizes += [proto.frame_nbytes(n, b, args.input_dim), proto.frame_nbytes(n, b, args.target_dim)]
    procs, context = [], zmq.Context()
    try:
        endpoints = {}
        for transport in args.transports:
            server, server_ep = start([sys.executable, "sophia.py", "--log_level", "WARNING",
                                       "--endpoint", endpoint_for(transport, tmp, "server"),
                                       "--models_dir", tmp, "--preload", *names,
                                       *([] if args.max_batch_delay_us is None else
                                         ["--max_batch_delay_us", str(args.max_batch_delay_us)])],
                                      "sophia:")
            procs.append(server)
            blas = [] if args.blas_threads is None else ["--blas_threads", str(args.blas_threads)]
            echo, echo_ep = start([sys.executable, os.path.abspath(__file__), *blas, "--echo",
                                   endpoint_for(transport, tmp, "echo"), "--reply_bytes",
                                   *map(str, sizes)], "echo:")
            procs.append(echo)
            endpoints[transport] = (server_ep, echo_ep)
        models = [load_model(os.path.join(tmp, name)) for name in names]
        report_header(args)
        for num_models in args.models:
            joint = join(models[:num_models])
            for num_streams in args.streams:
                compute = time_compute(models[:num_models], joint, num_streams, args)
                for transport, (server_ep, echo_ep) in endpoints.items():
                    row = bench_case(context, server_ep, echo_ep, names[:num_models],
                                     num_streams, compute, args)
                    report_row(transport, num_models, num_streams, compute, row)
        for transport, (_, echo_ep) in endpoints.items():  # stop the echoes
            req = context.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(echo_ep)
            req.send(b"x")
            req.poll(2000)
            req.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        context.term()
    return 0


def report_header(args):
    print(f"# {args.depth}-layer LSTM width {args.width}, input {args.input_dim}, output "
          f"{args.target_dim}; {args.steps} timed steps per case; µs; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"{'tr':>3} {'N':>2} {'B':>3} | {'server p50':>10} {'p99':>7} | {'echo p50':>8} "
          f"{'p99':>6} | {'compute p50':>11} {'p99':>6} | {'floor p50':>9} {'p99':>6} | "
          f"{'p99/floor':>9} {'p50/floor':>9} | {'steps/s':>7} {'frames/s':>8}")


def report_row(transport, num_models, num_streams, compute, row):
    p = {k: (np.percentile(v, 50) * 1e6, np.percentile(v, 99) * 1e6)
         for k, v in (("server", row["server"]), ("echo", row["echo"]),
                      ("compute", compute), ("floor", row["floor"]))}
    print(f"{transport:>3} {num_models:>2} {num_streams:>3} | {p['server'][0]:>10.0f} "
          f"{p['server'][1]:>7.0f} | {p['echo'][0]:>8.0f} {p['echo'][1]:>6.0f} | "
          f"{p['compute'][0]:>11.0f} {p['compute'][1]:>6.0f} | {p['floor'][0]:>9.0f} "
          f"{p['floor'][1]:>6.0f} | {p['server'][1] / p['floor'][1]:>9.2f} "
          f"{p['server'][0] / p['floor'][0]:>9.2f} | {row['fps']:>7.0f} "
          f"{row['fps'] * num_streams:>8.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
