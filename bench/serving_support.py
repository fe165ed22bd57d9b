"""What the serving benchmarks share: servers of random-weight workspaces.

- :func:`write_workspaces` -- ``count`` LSTM workspaces with random parameters.
- :func:`start` -- start a process and wait for its "serving on" line.
- :func:`endpoint_for` -- an ipc path in a directory, or tcp on 127.0.0.1 (any port).
- :func:`run_session_echo` -- a stand-in server without a model (the load generator's ceiling).
"""
from __future__ import annotations

import os
import select
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 300.0  # seconds for a server to load and compile its models


def write_workspaces(root, count, args):
    """``count`` workspaces with random parameters under ``root`` (an LSTM of
    ``args``' width, depth and dims); returns their names."""
    from sophia.graph.net import Net
    from sophia.options import ModelOptions, to_dict
    from sophia.workspace import Workspace

    options = ModelOptions(input_dim=args.input_dim, target_dim=args.target_dim,
                           net_width=args.width, net_depth=args.depth)
    names = []
    for n in range(count):
        ws = Workspace(os.path.join(root, f"lstm{n}"))
        ws.save_json("options", {"model": to_dict(options), "seed": n})
        ws.save_arrays("params", Net(options, seed=n).get_values())
        ws.write_ids_order(["s0"])
        names.append(f"lstm{n}")
    return names


def start(command, prefix):
    """Start a process and wait for its ``<prefix> serving on ENDPOINT`` line."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(f"{prefix} serving on "):
                return proc, line.split()[-1]
            if not line:
                break
    proc.kill()
    raise RuntimeError(f"{command[:3]} did not start")


def endpoint_for(transport, tmp, name):
    return f"ipc://{tmp}/{name}.sock" if transport == "ipc" else "tcp://127.0.0.1:*"


def run_session_echo(endpoint, request_bytes, reply_bytes):
    """A stand-in server with no model: answers a step of ``request_bytes`` bytes with
    ``reply_bytes`` zero bytes, ignores the end frame and answers anything else (a
    handshake) with ``ready``. Prints ``echo: serving on ENDPOINT``; runs until killed.
    What a load generator reaches against it is its own ceiling on that transport."""
    import zmq

    from sophia.serving import protocol as proto

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    print(f"echo: serving on {router.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    reply = b"\0" * reply_bytes
    try:
        while True:
            rid, empty, *body = router.recv_multipart()
            if len(body) == 1 and len(body[0]) == request_bytes and not proto.is_end_frame(body[0]):
                router.send_multipart([rid, empty, reply])
            elif not (len(body) == 1 and proto.is_end_frame(body[0])):
                router.send_multipart([rid, empty, proto.READY])
    finally:
        router.close()
        context.term()
