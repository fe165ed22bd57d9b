"""A Python client for the Sophia server.

Contents
--------
- :class:`SophiaClient` — handshake, step (with optional timestamps), reset, close;
  state snapshots: session_id, fetch_state, restore_state, resume.
- :class:`SophiaError`, :class:`ServerError`, :class:`ServerTimeout`.

Example
-------
>>> import numpy as np
>>> from sophia.serving.client import SophiaClient
>>> with SophiaClient("ipc:///run/user/1000/sophia/sophia-42.sock",  # doctest: +SKIP
...                   ["ws_a", "ws_b"], num_streams=2,
...                   id_indices=[[0, 3], [1, 1]]) as client:
...     frames_nbj = np.zeros((2, 2, 3), np.float32)   # models with input_dim 3
...     outputs_nbk = client.step(frames_nbj)
...     client.reset([1])
...     blob = client.fetch_state()       # restore_state(blob) in another session
...     session_id = client.session_id()  # resume(session_id) after a restart
"""
from __future__ import annotations

import numpy as np
import zmq

from sophia.serving import protocol as proto

DEFAULT_TIMEOUT = 60.0  # seconds; the handshake may have to load and compile models
END_LINGER_MS = 1000    # how long close() keeps trying to deliver the end frame


class SophiaError(Exception):
    """Base of the client's errors."""


class ServerError(SophiaError):
    """The server answered ``error: ...`` (its message is the exception text)."""


class ServerTimeout(SophiaError, TimeoutError):
    """No reply within the timeout; the client is closed (it cannot resync)."""


class SophiaClient:
    """One session with a Sophia server over a ZeroMQ REQ socket.

    The handshake is done by the constructor; it returns once the server has
    answered ``ready``.

    Parameters
    ----------
    endpoint : str
        ``ipc://PATH`` or ``tcp://HOST:PORT``.
    workspaces : sequence of str
        N workspace paths, relative to the server's models directory.
    num_streams : int
        B, the number of streams.
    id_indices : sequence of sequence of int
        ``id_indices[n][b]``: stream b's position in workspace n's ``ids.order``.
    timeout : float, optional
        Seconds to wait for each reply.
    context : zmq.Context, optional
        Defaults to the process-wide instance.

    Raises
    ------
    ServerError
        If the server refuses the handshake.
    ServerTimeout
        If it does not answer in time.
    """

    def __init__(self, endpoint: str, workspaces, num_streams: int, id_indices,
                 timeout: float = DEFAULT_TIMEOUT, context: zmq.Context | None = None):
        self.num_models = len(workspaces)
        self.num_streams = int(num_streams)
        self.timeout = float(timeout)
        handshake = proto.format_handshake(workspaces, num_streams, id_indices)
        self._socket = (context or zmq.Context.instance()).socket(zmq.REQ)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        try:
            reply = self._request([handshake])
        except BaseException:
            self._abort()
            raise
        if reply != proto.READY:
            self._abort()
            raise SophiaError(f"unexpected handshake reply {reply[:40]!r}")

    def step(self, frames_nbj, timestamps_b=None) -> np.ndarray:
        """Advance every stream by one frame.

        Parameters
        ----------
        frames_nbj : array_like, shape [N][B][J]
            One input frame per model and stream.
        timestamps_b : array_like, shape [B], optional
            Per-stream timestamps for clock-gated models (the ``step_t``
            extension); without them the plain base-protocol step is sent.

        Returns
        -------
        ndarray of float32, shape [N][B][target_dim × channels] (channel-major; one
        channel for a point model, docs/PROTOCOL.md)
        """
        frames_nbj = np.asarray(frames_nbj, dtype=np.float32)
        if frames_nbj.ndim != 3 or frames_nbj.shape[:2] != (self.num_models,
                                                            self.num_streams):
            raise ValueError(f"frames_nbj must have shape ({self.num_models}, "
                             f"{self.num_streams}, input_dim), got {frames_nbj.shape}")
        if timestamps_b is None:
            parts = [proto.format_frames(frames_nbj)]
        else:
            timestamps_b = np.asarray(timestamps_b, dtype=np.float32)
            if timestamps_b.shape != (self.num_streams,):
                raise ValueError(f"timestamps_b must have shape ({self.num_streams},)")
            parts = [proto.CMD_STEP_T, proto.format_frames(timestamps_b),
                     proto.format_frames(frames_nbj)]
        reply = self._request(parts)
        try:
            return proto.parse_outputs(reply, self.num_models, self.num_streams)
        except proto.ProtocolError as exc:
            raise SophiaError(str(exc)) from None

    def reset(self, streams) -> None:
        """Restart the given streams from their initial state at their next frame."""
        reply = self._request([proto.CMD_RESET, proto.format_streams(streams)])
        if reply != proto.OK:
            raise SophiaError(f"unexpected reset reply {reply[:40]!r}")

    def session_id(self) -> str:
        """The session's id (32 hex digits): what :meth:`resume` takes after the
        server was stopped with ``--state_dir`` and started again."""
        return self._request([proto.CMD_SESSION_ID, b""]).decode("ascii")

    def fetch_state(self) -> bytes:
        """The state of every stream of every model, as an opaque versioned blob
        (:mod:`sophia.serving.snapshot`); the session is unchanged."""
        return self._request([proto.CMD_FETCH_STATE, b""])

    def restore_state(self, blob: bytes) -> None:
        """Continue every stream from ``blob`` (from :meth:`fetch_state` of a session
        of the same workspaces, streams and ID indices).

        Raises
        ------
        ServerError
            If the blob is from other models, of another shape or version,
            truncated or corrupt; the session is then unchanged.
        """
        reply = self._request([proto.CMD_RESTORE_STATE, bytes(blob)])
        if reply != proto.OK:
            raise SophiaError(f"unexpected restore_state reply {reply[:40]!r}")

    def resume(self, session_id: str) -> None:
        """Continue from the state the server saved under ``session_id`` when it
        was last stopped (``--state_dir``); this session takes that id.

        Raises
        ------
        ServerError
            If the server has no state directory or no state under that id, or
            the state does not fit this session; the session is then unchanged.
        """
        reply = self._request([proto.CMD_RESUME, str(session_id).encode("ascii", "replace")])
        if reply != proto.OK:
            raise SophiaError(f"unexpected resume reply {reply[:40]!r}")

    def close(self) -> None:
        """End the session (send the NaN end frame, no reply) and close the socket."""
        if self._socket is None:
            return
        try:
            self._socket.send(proto.END_FRAME, zmq.NOBLOCK)
            self._socket.close(linger=END_LINGER_MS)
        except zmq.ZMQError:
            self._abort()
        self._socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _request(self, parts) -> bytes:
        if self._socket is None:
            raise SophiaError("client is closed")
        self._socket.send_multipart(parts)
        if not self._socket.poll(self.timeout * 1000, zmq.POLLIN):
            self._abort()
            raise ServerTimeout(f"no reply within {self.timeout:g} s")
        reply = self._socket.recv()
        if proto.is_error(reply):
            raise ServerError(reply.decode("utf-8", "replace"))
        return reply

    def _abort(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
