"""State snapshots: a session's stream states as an opaque, versioned blob.

Contents
--------
- :class:`ModelState`, :class:`Snapshot` -- what a snapshot holds: per model its
  fingerprint, the ID indices of its streams and its session's named arrays
  (``ModelSession.state()``).
- :func:`encode` -- a :class:`Snapshot` to bytes.
- :func:`decode` -- bytes to a :class:`Snapshot`, checked; raises
  :class:`SnapshotError` (a :class:`~sophia.serving.protocol.ProtocolError`) for a
  truncated, corrupt or foreign blob or another version.

Pure functions: no sockets, no files. Nothing is pickled. Whether a snapshot
fits a session (same models, streams, IDs, array shapes) is the ensemble's check
(:meth:`sophia.serving.ensemble.Ensemble.restore`).

The format (version 1; all integers little-endian)::

    offset  size  what
    0       8     magic  b"SOPHSTAT"
    8       4     version, uint32 (1)
    12      4     H, uint32: the header's length in bytes
    16      H     header: UTF-8 JSON
                  {"num_streams": B,
                   "models": [{"fingerprint": "<64 hex digits>",
                               "id_indices": [idx_0, ..., idx_{B-1}],
                               "arrays": [[name, dtype, shape], ...]}, ...]}
                  dtype one of "<f4", "<f8", "<i4", "<i8"; shape a list of ints
    16+H    P     the arrays' raw bytes, C order, in header order, no padding
    16+H+P  4     CRC-32 (zlib) of every byte before it, uint32

Example
-------
>>> import numpy as np
>>> state = ModelState(bytes(32), (0, 1), {"sum_b": np.zeros(2)})
>>> blob = encode(Snapshot(2, (state,)))
>>> decode(blob).models[0].arrays["sum_b"].shape
(2,)
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from sophia.serving.protocol import ProtocolError

MAGIC = b"SOPHSTAT"
VERSION = 1
FINGERPRINT_BYTES = 32      # a SHA-256 digest
DTYPES = ("<f4", "<f8", "<i4", "<i8")

_PREFIX = struct.Struct("<8sII")   # magic, version, header length
_CRC = struct.Struct("<I")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SnapshotError(ProtocolError):
    """A blob that is not a valid snapshot of this version (its text goes to the client)."""


@dataclass(frozen=True)
class ModelState:
    """One model's part of a snapshot.

    Attributes
    ----------
    fingerprint : bytes
        :data:`FINGERPRINT_BYTES` bytes identifying the model (``Model.fingerprint``).
    id_indices : tuple of int
        The B streams' ID indices in that model.
    arrays : mapping of str to ndarray
        The session's state, as ``ModelSession.state()`` returns it.
    """

    fingerprint: bytes
    id_indices: tuple[int, ...]
    arrays: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Snapshot:
    """A session's state: ``num_streams`` streams of each model in ``models``."""

    num_streams: int
    models: tuple[ModelState, ...]


def encode(snapshot: Snapshot) -> bytes:
    """Write a snapshot in the format of the module docstring.

    Raises
    ------
    ValueError
        For a fingerprint that is not :data:`FINGERPRINT_BYTES` bytes, an array
        name that is not an identifier, or a dtype outside :data:`DTYPES`
        (a bug of the model that made the state, not of a client).
    """
    models, payload = [], []
    for state in snapshot.models:
        if len(state.fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint is {len(state.fingerprint)} bytes, "
                             f"expected {FINGERPRINT_BYTES}")
        listing = []
        for name, array in state.arrays.items():
            array = np.asarray(array)
            dtype = array.dtype.newbyteorder("<").str
            if not _NAME.fullmatch(name) or dtype not in DTYPES:
                raise ValueError(f"state array {name!r} of dtype {array.dtype} cannot be "
                                 f"stored (names are identifiers, dtypes {DTYPES})")
            listing.append([name, dtype, list(array.shape)])
            payload.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
        models.append({"fingerprint": state.fingerprint.hex(),
                       "id_indices": [int(i) for i in state.id_indices],
                       "arrays": listing})
    header = json.dumps({"num_streams": int(snapshot.num_streams), "models": models},
                        separators=(",", ":")).encode("utf-8")
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + b"".join(payload)
    return body + _CRC.pack(zlib.crc32(body))


def decode(blob: bytes) -> Snapshot:
    """Read and check a blob written by :func:`encode`.

    Returns
    -------
    Snapshot
        Its arrays are writable native-endian copies (nothing refers to ``blob``).

    Raises
    ------
    SnapshotError
        Naming what was expected: a blob shorter than the format's minimum or
        than its header says (truncated), another magic (not a snapshot), another
        version, a header that is not the JSON described above, or a CRC-32 that
        does not match (corrupt).
    """
    blob = bytes(blob)
    minimum = _PREFIX.size + _CRC.size
    if len(blob) < minimum:
        raise SnapshotError(f"state blob is {len(blob)} bytes, shorter than the "
                            f"{minimum} of an empty one: truncated")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotError(f"not a Sophia state blob: it starts {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise SnapshotError(f"state blob version {version}, this server reads "
                            f"version {VERSION} only")
    if _PREFIX.size + header_len + _CRC.size > len(blob):
        raise SnapshotError(f"state blob is {len(blob)} bytes, its header alone "
                            f"says {header_len}: truncated")
    header = blob[_PREFIX.size:_PREFIX.size + header_len]
    num_streams, models = _parse_header(header)
    sizes = [[_nbytes(dtype, shape) for _, dtype, shape in arrays] for _, _, arrays in models]
    expected = _PREFIX.size + header_len + sum(map(sum, sizes)) + _CRC.size
    if len(blob) != expected:
        raise SnapshotError(f"state blob is {len(blob)} bytes, its header describes "
                            f"{expected}: {'truncated' if len(blob) < expected else 'trailing bytes'}")
    (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
    if crc != zlib.crc32(blob[:-_CRC.size]):
        raise SnapshotError("state blob's CRC-32 does not match its content: corrupt")
    offset, states = _PREFIX.size + header_len, []
    for (fingerprint, id_indices, arrays), nbytes in zip(models, sizes):
        values = {}
        for (name, dtype, shape), size in zip(arrays, nbytes):
            values[name] = np.frombuffer(blob, dtype, int(np.prod(shape)), offset).astype(
                np.dtype(dtype).newbyteorder("="), copy=True).reshape(shape)
            offset += size
        states.append(ModelState(fingerprint, id_indices, values))
    return Snapshot(num_streams, tuple(states))


def _nbytes(dtype: str, shape) -> int:
    size = np.dtype(dtype).itemsize
    for dim in shape:
        size *= dim
    return size


def _parse_header(header: bytes):
    """(num_streams, [(fingerprint, id_indices, [(name, dtype, shape)])]) or SnapshotError."""
    def bad(what):
        return SnapshotError(f"state blob header is corrupt: {what}")
    try:
        obj = json.loads(header.decode("utf-8"))
    except (ValueError, RecursionError):
        raise bad("not UTF-8 JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"num_streams", "models"}:
        raise bad("expected an object with 'num_streams' and 'models'")
    num_streams, models = obj["num_streams"], obj["models"]
    if not _is_int(num_streams) or num_streams < 1 or not isinstance(models, list) or not models:
        raise bad("expected num_streams >= 1 and a non-empty list of models")
    parsed = []
    for n, model in enumerate(models):
        if not isinstance(model, dict) or set(model) != {"fingerprint", "id_indices", "arrays"}:
            raise bad(f"model {n}: expected 'fingerprint', 'id_indices' and 'arrays'")
        fingerprint, ids, arrays = model["fingerprint"], model["id_indices"], model["arrays"]
        if not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{64}", fingerprint)):
            raise bad(f"model {n}: the fingerprint is not 64 lowercase hex digits")
        if not (isinstance(ids, list) and len(ids) == num_streams and all(map(_is_int, ids))):
            raise bad(f"model {n}: expected {num_streams} integer ID indices")
        if not isinstance(arrays, list):
            raise bad(f"model {n}: 'arrays' is not a list")
        listing, names = [], set()
        for entry in arrays:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and _NAME.fullmatch(entry[0]) and entry[0] not in names
                    and entry[1] in DTYPES and isinstance(entry[2], list)
                    and all(_is_int(d) and 0 <= d < 2**40 for d in entry[2])):
                raise bad(f"model {n}: an array entry is not [unique name, dtype in "
                          f"{DTYPES}, shape of non-negative ints]: {str(entry)[:60]}")
            names.add(entry[0])
            listing.append((entry[0], entry[1], tuple(entry[2])))
        parsed.append((bytes.fromhex(fingerprint), tuple(ids), listing))
    return num_streams, parsed


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
