"""Sophia's wire protocol: constants and pure parse/format functions.

Nothing here touches a socket, so every rule of the protocol can be unit-tested
on bytes. The protocol itself is described in ``docs/PROTOCOL.md``; in short:

- handshake (one text part): ``ws_0;…;ws_{N-1};B`` then N lines of B ID
  indices, answered by :data:`READY`;
- step (one binary part): N·B·input_dim little-endian float32 in [n][b][i]
  order, answered by N·B·K float32 in [n][b][k] order (K = target_dim × the
  models' output channels: 1, or 2 for gaussian, Q for quantile models);
- end: a step whose first float is NaN; it gets no reply;
- extensions are multipart messages whose first part names the command
  (:data:`CMD_RESET`, :data:`CMD_STEP_T`; the state snapshots'
  :data:`CMD_SESSION_ID`, :data:`CMD_FETCH_STATE`, :data:`CMD_RESTORE_STATE`,
  :data:`CMD_RESUME`), so no single-part base message can be mistaken for one;
  a command without an argument carries an empty second part;
- any bad request is answered by a text reply starting with :data:`ERROR`.

Every parse function raises :class:`ProtocolError` (a ``ValueError``) with a
one-line message meant for the client.

Example
-------
>>> import numpy as np
>>> from sophia.serving import protocol
>>> text = protocol.format_handshake(["ws_a", "ws_b"], 2, [[0, 3], [-1, -1]])
>>> text
b'ws_a;ws_b;2\\n0;3\\n-1;-1'
>>> protocol.parse_handshake(text).id_indices
((0, 3), (-1, -1))
>>> frames_nbj = np.ones((2, 2, 3), dtype=np.float32)
>>> protocol.parse_frames(protocol.format_frames(frames_nbj), 2, 2, 3).shape
(2, 2, 3)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

READY = b"ready"
OK = b"ok"
ERROR = b"error:"
CMD_RESET = b"reset"
CMD_STEP_T = b"step_t"
CMD_SESSION_ID = b"session_id"        # , b""          -> the session's id
CMD_FETCH_STATE = b"fetch_state"      # , b""          -> a state blob (snapshot.py)
CMD_RESTORE_STATE = b"restore_state"  # , blob         -> OK
CMD_RESUME = b"resume"                # , session id   -> OK (state saved at shutdown)
SESSION_ID_CHARS = 32                 # lowercase hex digits

FLOAT = np.dtype("<f4")
END_FRAME = np.array([np.nan], dtype=FLOAT).tobytes()
MAX_ERROR_CHARS = 500

_INT = re.compile(r"-?[0-9]+")
_SESSION_ID = re.compile(f"[0-9a-f]{{{SESSION_ID_CHARS}}}")


class ProtocolError(ValueError):
    """A message that does not follow the protocol (its text goes to the client)."""


@dataclass(frozen=True)
class Handshake:
    """A parsed handshake.

    Attributes
    ----------
    workspaces : tuple of str
        The N workspace paths, as the client wrote them.
    num_streams : int
        B, the number of streams (at least 1).
    id_indices : tuple of tuple of int
        ``id_indices[n][b]``: stream b's position in workspace n's ``ids.order``.
    """

    workspaces: tuple[str, ...]
    num_streams: int
    id_indices: tuple[tuple[int, ...], ...]


def _parse_int(field: str, what: str) -> int:
    if not _INT.fullmatch(field):
        raise ProtocolError(f"{what} is not an integer: {field[:40]!r}")
    return int(field)


def parse_handshake(data: bytes) -> Handshake:
    """Parse the first message of a session.

    Parameters
    ----------
    data : bytes
        UTF-8 text (ASCII in practice): line 1 ``ws_0;…;ws_{N-1};B``, then N
        lines of B integers separated by ``;``. Lines are separated by ``\\n``;
        one trailing ``\\n`` is tolerated.

    Returns
    -------
    Handshake

    Raises
    ------
    ProtocolError
        On non-UTF-8 bytes, a wrong number of lines or fields, an empty
        workspace path, B < 1, or a field that is not a decimal integer
        (an optional ``-`` and digits only: no blanks, no ``+``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("handshake is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
    lines = text.split("\n")
    head = lines[0].split(";")
    if len(head) < 2:
        raise ProtocolError("handshake line 1 must be 'ws_0;...;ws_{N-1};B'")
    workspaces = tuple(head[:-1])
    num_streams = _parse_int(head[-1], "number of streams")
    if num_streams < 1:
        raise ProtocolError(f"number of streams must be >= 1, got {num_streams}")
    if not all(workspaces):
        raise ProtocolError("a workspace path is empty")
    if len(lines) != 1 + len(workspaces):
        raise ProtocolError(f"handshake has {len(lines) - 1} ID lines, "
                            f"expected one per workspace ({len(workspaces)})")
    id_indices = []
    for n, line in enumerate(lines[1:]):
        fields = line.split(";")
        if len(fields) != num_streams:
            raise ProtocolError(f"ID line {n} has {len(fields)} fields, "
                                f"expected {num_streams} (one per stream)")
        id_indices.append(tuple(_parse_int(f, f"ID index [{n}]") for f in fields))
    return Handshake(workspaces, num_streams, tuple(id_indices))


def format_handshake(workspaces, num_streams: int, id_indices) -> bytes:
    """Write the first message of a session (the inverse of :func:`parse_handshake`).

    Parameters
    ----------
    workspaces : sequence of str
        N workspace paths (no ``;`` or newline in them).
    num_streams : int
        B.
    id_indices : sequence of sequence of int
        N rows of B ID indices.

    Returns
    -------
    bytes
        The handshake, without a trailing newline.
    """
    workspaces = [str(ws) for ws in workspaces]
    if not workspaces or any(not ws or ";" in ws or "\n" in ws for ws in workspaces):
        raise ProtocolError("workspace paths must be non-empty, without ';' or newline")
    rows = [list(row) for row in id_indices]
    if len(rows) != len(workspaces) or any(len(r) != num_streams for r in rows):
        raise ProtocolError("id_indices must have one row of num_streams per workspace")
    lines = [";".join(workspaces + [str(int(num_streams))])]
    lines += [";".join(str(int(i)) for i in row) for row in rows]
    return "\n".join(lines).encode("utf-8")


def frame_nbytes(num_models: int, num_streams: int, dim: int) -> int:
    """Size in bytes of one step request (dim = input_dim) or reply (dim = output_dim,
    target_dim × channels)."""
    return num_models * num_streams * dim * FLOAT.itemsize


def is_end_frame(payload: bytes) -> bool:
    """Whether a single-part message is the end signal (first float is any NaN)."""
    if len(payload) < FLOAT.itemsize:
        return False
    return bool(np.isnan(np.frombuffer(payload, dtype=FLOAT, count=1)[0]))


def parse_frames(payload: bytes, num_models: int, num_streams: int,
                 dim: int) -> np.ndarray:
    """Decode a step request into ``frames_nbj`` and check it.

    Returns
    -------
    ndarray of float32, shape [N][B][dim]
        A writable native-endian copy.

    Raises
    ------
    ProtocolError
        If the size is not N·B·dim·4 bytes or a value is NaN or inf.
    """
    expected = frame_nbytes(num_models, num_streams, dim)
    if len(payload) != expected:
        raise ProtocolError(f"step payload is {len(payload)} bytes, expected "
                            f"{expected} ({num_models}x{num_streams}x{dim} float32)")
    frames_nbj = np.frombuffer(payload, dtype=FLOAT).astype(np.float32)
    frames_nbj = frames_nbj.reshape(num_models, num_streams, dim)
    _check_finite(frames_nbj, "frame")
    return frames_nbj


def check_tokens(frames_nbj: np.ndarray, vocab_sizes) -> None:
    """Check the frames of models with token inputs (``vocab_sizes[n]`` > 0, then
    ``frames_nbj[n]`` is [B][1]): each value must be an integer index in
    ``[0, vocab_sizes[n])``. Models with ``vocab_sizes[n]`` 0 take any finite value.

    Raises
    ------
    ProtocolError
        Naming the first bad value, its frame position ``[n][b]`` and the range.
    """
    for n, vocab_size in enumerate(vocab_sizes):
        if not vocab_size:
            continue
        tokens_b = frames_nbj[n, :, 0]
        bad = np.flatnonzero((tokens_b < 0) | (tokens_b >= vocab_size)
                             | (tokens_b != np.floor(tokens_b)))
        if bad.size:
            raise ProtocolError(f"frame value {tokens_b[bad[0]]} at [{n}][{bad[0]}][0] is not "
                                f"a token index: model {n} takes integers in [0, {vocab_size}); "
                                "nothing was advanced")


def parse_timestamps(payload: bytes, num_streams: int) -> np.ndarray:
    """Decode the timestamps part of :data:`CMD_STEP_T` into ``timestamps_b``."""
    if len(payload) != num_streams * FLOAT.itemsize:
        raise ProtocolError(f"timestamps are {len(payload)} bytes, expected "
                            f"{num_streams * FLOAT.itemsize} ({num_streams} float32)")
    timestamps_b = np.frombuffer(payload, dtype=FLOAT).astype(np.float32)
    _check_finite(timestamps_b, "timestamp")
    return timestamps_b


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        where = "".join(f"[{i}]" for i in bad[0])
        raise ProtocolError(f"{what} value {array[tuple(bad[0])]} at {where} "
                            f"is not finite; nothing was advanced")


def format_frames(array: np.ndarray) -> bytes:
    """Encode frames or outputs as little-endian float32 in C order."""
    return np.ascontiguousarray(array, dtype=FLOAT).tobytes()


def parse_outputs(payload: bytes, num_models: int, num_streams: int) -> np.ndarray:
    """Decode a step reply into ``outputs_nbk``, inferring its width K (target_dim × channels).

    Raises
    ------
    ProtocolError
        If the payload is not a whole number of [N][B] float32 blocks.
    """
    block = num_models * num_streams * FLOAT.itemsize
    if len(payload) == 0 or len(payload) % block:
        raise ProtocolError(f"reply of {len(payload)} bytes is not N*B*target_dim "
                            f"float32 (N={num_models}, B={num_streams})")
    outputs = np.frombuffer(payload, dtype=FLOAT).astype(np.float32)
    return outputs.reshape(num_models, num_streams, -1)


def format_streams(streams) -> bytes:
    """Encode the stream list of :data:`CMD_RESET`, e.g. ``[0, 3] -> b"0;3"``."""
    return ";".join(str(int(s)) for s in streams).encode("ascii")


def parse_streams(data: bytes, num_streams: int) -> list[int]:
    """Decode the stream list of :data:`CMD_RESET`; each must be in [0, B)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("stream list is not ASCII text") from None
    if not text:
        raise ProtocolError("stream list is empty")
    streams = [_parse_int(f, "stream") for f in text.split(";")]
    bad = [s for s in streams if not 0 <= s < num_streams]
    if bad:
        raise ProtocolError(f"stream {bad[0]} is outside [0, {num_streams})")
    return streams


def parse_session_id(data: bytes) -> str:
    """Decode the argument of :data:`CMD_RESUME`: exactly :data:`SESSION_ID_CHARS`
    lowercase hex digits (so it is also a safe file name)."""
    text = data.decode("ascii", "replace")
    if not _SESSION_ID.fullmatch(text):
        raise ProtocolError(f"session id must be {SESSION_ID_CHARS} lowercase hex digits, "
                            f"got {text[:40]!r}")
    return text


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Squash a message onto one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_error(message: str) -> bytes:
    """An error reply: ``b"error: "`` followed by one line of UTF-8 text."""
    return ERROR + b" " + one_line(message).encode("utf-8", "replace")


def is_error(payload: bytes) -> bool:
    """Whether a reply is an error reply."""
    return payload.startswith(ERROR)
