"""Many clients at once: aggregate frames/s and each client's latency, batching on and off.

For each transport (ipc, tcp on 127.0.0.1) two real server processes (``sophia.py``,
the same workspace: a 2-layer LSTM, width 256, input 44, output 1 by default) run
side by side, one with batching across sessions (``--max_batch_delay_us``, default
500) and one without (0), and a stand-in server without a model that answers at
once (the echo of ``serving_support.py``). For each client count C, C clients with one
stream each (B = 1) stream steps as fast as they can for ``--seconds``, each with one
request in flight (closed loop). By default one driver process polls all C clients'
sockets (``poller_clients.py``), so on a machine of few cores the load generator
takes one core and leaves the rest to the server; ``--driver threads`` runs them as
threads of worker processes instead, one blocking REQ socket each. The script prints
the aggregate frames/s, the median of the clients' p50 and p99 round trips and the
worst p99, the errors and the drivers' CPU time per step, and at the end the ratio of
batched to unbatched aggregate frames/s and client p50 per C. The echo rows are the
load generator's own ceiling: a server row near them is bound by the clients, not by
the server.

``--soak_minutes M`` instead runs ``--soak_clients`` clients against the batching
server for M minutes and prints, per minute, the steps and p99 across all clients,
the errors, and the server's resident memory before the clients, after their first
minute (the growth is measured from there: every session is open and warm) and at
the end.

Not a test: it prints figures (bench/README.md holds the last ones).

Examples::

    python bench/serve_clients.py --clients 1 16 64 --seconds 5
    python bench/serve_clients.py --soak_minutes 10 --soak_clients 256
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="values of C")
    p.add_argument("--transports", nargs="+", default=["ipc", "tcp"], choices=["ipc", "tcp"])
    p.add_argument("--seconds", type=float, default=5.0, help="streaming time per case")
    p.add_argument("--driver", choices=["poller", "threads"], default="poller",
                   help="poller: driver processes, each one thread polling its clients' "
                        "sockets; threads: worker processes of client threads")
    p.add_argument("--driver_processes", type=int, default=1,
                   help="poller driver processes the clients are spread over")
    p.add_argument("--threads_per_process", type=int, default=8,
                   help="client threads per worker (--driver threads)")
    p.add_argument("--no_echo", action="store_true",
                   help="leave out the rows against a model-less echo server")
    p.add_argument("--max_batch_delay_us", type=int, default=500, help="of the batching server")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--input_dim", type=int, default=44)
    p.add_argument("--target_dim", type=int, default=1)
    p.add_argument("--soak_minutes", type=float, default=0.0, help="run the soak instead")
    p.add_argument("--soak_clients", type=int, default=256)
    p.add_argument("--worker", nargs=4, metavar=("ENDPOINT", "THREADS", "SECONDS", "INPUT_DIM"),
                   help=argparse.SUPPRESS)
    p.add_argument("--echo", metavar="ENDPOINT", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(endpoint, threads, seconds, input_dim):
    """Client threads streaming B = 1 steps for ``seconds``, each on a blocking REQ
    socket; prints one JSON line per thread, as :func:`poller_clients.drive`'s, then
    the process's CPU seconds as :func:`poller_clients.main` does."""
    import numpy as np
    import zmq

    from sophia.serving import protocol as proto

    cpu_start = time.process_time()

    context = zmq.Context()
    frames = proto.format_frames(np.zeros((1, 1, input_dim), np.float32))
    results, start = [], threading.Barrier(threads)

    def client():
        socket = context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, 30_000)
        socket.connect(endpoint)
        buckets, errors, failure = {}, 0, None
        try:
            socket.send(proto.format_handshake(["lstm0"], 1, [[0]]))
            if socket.recv() != proto.READY:
                raise RuntimeError("handshake refused")
            start.wait()
            begin = time.perf_counter()
            while (now := time.perf_counter()) - begin < seconds:
                socket.send(frames)
                reply = socket.recv()
                errors += proto.is_error(reply)
                buckets.setdefault(str(int((now - begin) // 60)), []).append(
                    round((time.perf_counter() - now) * 1e6, 1))
            socket.send(proto.END_FRAME)
        except Exception as exc:            # a timeout or a refused handshake: counted
            errors, failure = errors + 1, str(exc)
        finally:
            socket.close()
        results.append({"latencies_us": buckets, "errors": errors, "failure": failure})

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    context.term()
    cpu_s = time.process_time() - cpu_start
    for result in results:
        print(json.dumps(result), flush=True)
    print(json.dumps({"cpu_s": cpu_s}), flush=True)


def run_clients(endpoint, count, seconds, args):
    """``count`` clients of one stream each, in driver or worker processes that
    stream for ``seconds``; returns each client's result dict
    (:func:`poller_clients.drive`'s) and the CPU seconds of those processes
    while they drove the clients (their start-up left out)."""
    commands, left = [], count
    if args.driver == "poller":
        processes = max(1, min(args.driver_processes, count))
        for n in range(processes):
            share = count // processes + (n < count % processes)
            commands.append([os.path.join(HERE, "poller_clients.py"), endpoint, "--clients", str(share),
                             "--seconds", str(seconds), "--input_dim", str(args.input_dim)])
    while args.driver == "threads" and left > 0:
        threads = min(args.threads_per_process, left)
        left -= threads
        commands.append([os.path.abspath(__file__), "--worker", endpoint, str(threads), str(seconds),
                         str(args.input_dim)])
    procs = [subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for command in commands]
    results, cpu_s = [], 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 600)
        for line in (json.loads(line) for line in out.splitlines() if line.startswith("{")):
            if "cpu_s" in line:
                cpu_s += line["cpu_s"]
            else:
                results.append(line)
    if len(results) < count:   # a driver that died: its clients count as failed
        results += [{"latencies_us": {}, "errors": 1, "failure": "driver died"}] * (count - len(results))
    return results, cpu_s


def summarise(results, cpu_s, seconds, np):
    """Aggregate frames/s, the median over clients of their p50 and p99 (µs), the
    worst client p99, the errors and the drivers' CPU µs per request; clients
    without a reply are left out of the percentiles."""
    times = [np.concatenate([np.asarray(v, float) for v in r["latencies_us"].values()] or [np.empty(0)])
             for r in results]
    p50s = [np.percentile(t, 50) for t in times if len(t)] or [np.nan]
    p99s = [np.percentile(t, 99) for t in times if len(t)] or [np.nan]
    steps = sum(len(t) for t in times)
    return {"frames/s": steps / seconds, "p50": np.median(p50s), "p99": np.median(p99s),
            "worst p99": max(p99s), "errors": sum(r["errors"] for r in results),
            "driver µs": cpu_s / max(steps, 1) * 1e6}


def rss_mib(pid) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    args = parse_args()
    if args.worker:
        endpoint, threads, seconds, input_dim = args.worker
        return worker(endpoint, int(threads), float(seconds), int(input_dim))
    from serving_support import endpoint_for, run_session_echo, start, write_workspaces
    from sophia.serving import protocol as proto
    if args.echo:
        return run_session_echo(args.echo, proto.frame_nbytes(1, 1, args.input_dim),
                                proto.frame_nbytes(1, 1, args.target_dim))
    import numpy as np

    tmp = tempfile.mkdtemp(prefix="sph-bench-")     # keep TMPDIR short: ipc paths are limited
    names = write_workspaces(tmp, 1, args)
    servers, procs = {}, []
    delays = [args.max_batch_delay_us] if args.soak_minutes else [args.max_batch_delay_us, 0]
    with_echo = not (args.soak_minutes or args.no_echo)
    try:
        for transport in args.transports:
            for delay in delays:
                proc, endpoint = start([sys.executable, "sophia.py", "--log_level", "WARNING",
                                        "--endpoint", endpoint_for(transport, tmp, f"s{delay}"),
                                        "--models_dir", tmp, "--preload", *names,
                                        "--max_batch_delay_us", str(delay)], "sophia:")
                procs.append(proc)
                servers[transport, delay] = (proc, endpoint)
            if with_echo:
                proc, endpoint = start([sys.executable, os.path.abspath(__file__), "--input_dim",
                                        str(args.input_dim), "--target_dim", str(args.target_dim),
                                        "--echo", endpoint_for(transport, tmp, "echo")], "echo:")
                procs.append(proc)
                servers[transport, "echo"] = (proc, endpoint)
        print(f"# {args.depth}-layer LSTM width {args.width}, input {args.input_dim}, output "
              f"{args.target_dim}; B = 1 per client; {os.cpu_count()} CPUs; driver {args.driver}"
              + (f" ({args.driver_processes} process(es))" if args.driver == "poller" else ""))
        if args.soak_minutes:
            return soak(servers, args, np)
        print(f"{'tr':>3} {'C':>4} {'batching':>9} | {'frames/s':>9} | {'p50 µs':>7} {'p99 µs':>7} "
              f"{'worst p99':>9} | {'errors':>6} | {'driver CPU µs/step':>18}")
        rows = {}
        for transport in args.transports:
            for count in args.clients:
                for delay in delays + (["echo"] if with_echo else []):
                    results, cpu_s = run_clients(servers[transport, delay][1], count, args.seconds, args)
                    row = rows[transport, count, delay] = summarise(results, cpu_s, args.seconds, np)
                    label = "echo" if delay == "echo" else f"{delay} µs" if delay else "off"
                    print(f"{transport:>3} {count:>4} {label:>9} | {row['frames/s']:>9,.0f} | "
                          f"{row['p50']:>7.0f} {row['p99']:>7.0f} {row['worst p99']:>9.0f} | "
                          f"{row['errors']:>6} | {row['driver µs']:>18.1f}", flush=True)
        batched = args.max_batch_delay_us
        for transport in args.transports:
            print(f"{transport}: batched / unbatched frames/s: " + ", ".join(
                f"C={c} {rows[transport, c, batched]['frames/s'] / rows[transport, c, 0]['frames/s']:.2f}x"
                for c in args.clients) + "; p50: " + ", ".join(
                f"C={c} {rows[transport, c, batched]['p50'] / rows[transport, c, 0]['p50']:.2f}x"
                for c in args.clients))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    return 0


def soak(servers, args, np):
    """The soak run: errors, p99 per minute, and the server's RSS before the clients,
    after their first minute (every session open and warm) and at the end."""
    transport = args.transports[0]
    proc, endpoint = servers[transport, args.max_batch_delay_us]
    rss = {"before": rss_mib(proc.pid)}
    timer = threading.Timer(60.0, lambda: rss.setdefault("minute 1", rss_mib(proc.pid)))
    timer.start()
    try:
        results, _ = run_clients(endpoint, args.soak_clients, args.soak_minutes * 60, args)
    finally:
        timer.cancel()
    rss["end"] = rss_mib(proc.pid)
    minutes = sorted({k for r in results for k in r["latencies_us"]}, key=int)  # JSON keys
    print(f"soak: {args.soak_clients} clients over {transport}, {args.soak_minutes:g} min, "
          f"batching {args.max_batch_delay_us} µs")
    for minute in minutes:
        times = np.concatenate([r["latencies_us"][minute] for r in results if minute in r["latencies_us"]])
        print(f"  minute {int(minute) + 1}: {len(times):,} steps, p99 {np.percentile(times, 99):,.0f} µs")
    errors = sum(r["errors"] for r in results)
    base = rss.get("minute 1", rss["before"])
    print(f"  errors {errors}; server RSS {rss['before']:,.0f} MiB before the clients, "
          + (f"{rss['minute 1']:,.0f} MiB after their first minute, " if "minute 1" in rss else "")
          + f"{rss['end']:,.0f} MiB at the end ({(rss['end'] / base - 1) * 100:+.1f} % since "
          + ("the first minute)" if "minute 1" in rss else "the start)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
