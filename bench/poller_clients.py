"""Many closed-loop clients driven from one thread through one ZeroMQ poller.

- :func:`drive` -- C clients, each a REQ socket with its own session on a Sophia
  server, stream steps for a given time; returns each client's round-trip latencies.
- :func:`main` -- the same from the command line, one JSON line per client
  (what ``serve_clients.py`` runs in its driver processes).

Each client keeps exactly one request in flight: it sends its next step as soon as
the reply to the last one is in (closed loop), until ``seconds`` have passed since
the last handshake was answered; the replies still in flight then are waited for.
A client whose handshake or reply does not come within ``timeout`` seconds is
given up (one error, the reason in its ``failure``), so :func:`drive` returns
within about ``2 * timeout + seconds`` whatever the server does. One process
drives the clients' sockets, instead of one thread or process per client, so on a
machine of few cores the load generator takes one core and leaves the rest to the
server. A latency is from the send of a request to the return of the poll that
found its reply.

Example::

    from sophia.serving import protocol as proto
    results = drive("tcp://127.0.0.1:5555", proto.format_handshake(["lstm0"], 1, [[0]]),
                    [proto.format_frames(np.zeros((1, 1, 44)))] * 64, seconds=5)
    steps = sum(len(r["latencies_us"]["0"]) for r in results)
"""
from __future__ import annotations

import argparse
import array
import json
import os
import sys
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sophia.serving import protocol as proto  # noqa: E402

DEFAULT_TIMEOUT = 30.0  # seconds for a handshake or a step's reply
SWEEP_SECONDS = 0.1     # how often the in-flight requests are checked for timeouts
END_LINGER_MS = 1000    # how long closing keeps trying to deliver the end frames


class _Client:
    """One session: its socket, its request and what it has measured so far."""

    def __init__(self, socket, payload, keep_replies):
        self.socket = socket
        self.payload = payload
        self.sent = 0.0           # perf_counter of the request in flight
        self.open = False         # handshake answered "ready"
        self.latencies = {}       # bucket -> array of µs
        self.errors = 0
        self.failure = None
        self.replies = [] if keep_replies else None

    def send(self, message: bytes) -> None:
        self.sent = time.perf_counter()
        self.socket.send(message, zmq.NOBLOCK)

    def fail(self, reason: str) -> None:
        self.errors += 1
        self.failure = reason

    def result(self) -> dict:
        result = {"latencies_us": {str(k): np.round(v, 1).tolist() for k, v in self.latencies.items()},
                  "errors": self.errors, "failure": self.failure}
        if self.replies is not None:
            result["replies"] = self.replies
        return result


def drive(endpoint, handshake: bytes, payloads, seconds: float, *, timeout: float = DEFAULT_TIMEOUT,
          bucket_seconds: float = 60.0, keep_replies: bool = False) -> list[dict]:
    """Stream steps from ``len(payloads)`` clients, each with its own session.

    Parameters
    ----------
    endpoint : str
        The server's ``ipc://`` or ``tcp://`` endpoint.
    handshake : bytes
        Every client's handshake (:func:`sophia.serving.protocol.format_handshake`).
    payloads : sequence of bytes
        Client c sends ``payloads[c]`` (a step request) at every step.
    seconds : float
        How long the clients send new requests, from the moment every handshake
        is answered (or given up).
    timeout : float, optional
        Seconds a handshake or a step may wait for its reply before its client
        is given up.
    bucket_seconds : float, optional
        Latencies are kept per bucket of this many seconds (by send time).
    keep_replies : bool, optional
        Also return every reply, in order (bytes; for checks, not for long runs).

    Returns
    -------
    list of dict, one per client:
        ``latencies_us`` {bucket index as str: [µs, ...]}, ``errors`` (error
        replies, plus one for a client given up), ``failure`` (why it was given
        up, or None) and, with ``keep_replies``, ``replies`` [bytes].

    Notes
    -----
    As a side effect every session is ended with the end frame (no reply) before
    the sockets close; the sockets and their context are closed in every case.
    """
    context = zmq.Context()
    clients, poller = [], zmq.Poller()
    try:
        for payload in payloads:
            socket = context.socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, END_LINGER_MS)
            socket.connect(endpoint)
            client = _Client(socket, payload, keep_replies)
            clients.append(client)
            poller.register(socket, zmq.POLLIN)
        by_socket = {client.socket: client for client in clients}
        _handshakes(clients, by_socket, poller, handshake, timeout)
        _stream(clients, by_socket, poller, seconds, timeout, bucket_seconds)
        for client in clients:
            if client.open:
                try:
                    client.socket.send(proto.END_FRAME, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
    finally:
        for client in clients:
            client.socket.close()
        context.term()
    return [client.result() for client in clients]


def _handshakes(clients, by_socket, poller, handshake, timeout) -> None:
    """Send every handshake, then wait for the replies (at most ``timeout`` seconds)."""
    waiting = set()
    for client in clients:
        try:
            client.send(handshake)
            waiting.add(client)
        except zmq.ZMQError as exc:
            client.fail(f"handshake not sent: {exc}")
    deadline = time.perf_counter() + timeout
    while waiting and (left := deadline - time.perf_counter()) > 0:
        for socket, _ in poller.poll(left * 1000):
            client = by_socket[socket]
            reply = socket.recv(zmq.NOBLOCK)
            waiting.discard(client)
            if reply == proto.READY:
                client.open = True
            else:
                client.fail(f"handshake refused: {reply[:80]!r}")
    for client in waiting:
        client.fail(f"no handshake reply within {timeout:g} s")
    for client in clients:
        if not client.open:
            poller.unregister(client.socket)


def _stream(clients, by_socket, poller, seconds, timeout, bucket_seconds) -> None:
    """The closed loop: every open client has one step in flight until ``seconds``
    have passed; then the last replies are waited for."""
    begin = time.perf_counter()
    end, in_flight = begin + seconds, set()
    for client in clients:
        if client.open and _send_step(client):
            in_flight.add(client)
    last_sweep = begin
    while in_flight:
        events = poller.poll(SWEEP_SECONDS * 1000)
        now = time.perf_counter()
        for socket, _ in events:
            client = by_socket[socket]
            reply = socket.recv(zmq.NOBLOCK)
            bucket = int((client.sent - begin) // bucket_seconds)
            client.latencies.setdefault(bucket, array.array("d")).append((now - client.sent) * 1e6)
            client.errors += proto.is_error(reply)
            if client.replies is not None:
                client.replies.append(reply)
            if now >= end or not _send_step(client):
                in_flight.discard(client)
        if now - last_sweep >= SWEEP_SECONDS:
            last_sweep = now
            for client in [c for c in in_flight if now - c.sent > timeout]:
                client.fail(f"no reply within {timeout:g} s")
                in_flight.discard(client)
                poller.unregister(client.socket)
                client.open = False


def _send_step(client) -> bool:
    try:
        client.send(client.payload)
        return True
    except zmq.ZMQError as exc:
        client.fail(f"step not sent: {exc}")
        client.open = False
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("endpoint")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--workspace", default="lstm0")
    p.add_argument("--input_dim", type=int, required=True)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Drive ``--clients`` clients of one stream each (zero frames) and print one
    JSON line per client (:func:`drive`'s dicts), then ``{"cpu_s": S}``: the CPU
    seconds this process spent in :func:`drive`, all its threads (libzmq's I/O
    thread too)."""
    args = parse_args(argv)
    handshake = proto.format_handshake([args.workspace], 1, [[0]])
    payload = proto.format_frames(np.zeros((1, 1, args.input_dim), np.float32))
    cpu_start = time.process_time()
    results = drive(args.endpoint, handshake, [payload] * args.clients, args.seconds,
                    timeout=args.timeout)
    cpu_s = time.process_time() - cpu_start
    for result in results:
        print(json.dumps(result), flush=True)
    print(json.dumps({"cpu_s": cpu_s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
