"""Unit tests of sophia.serving.protocol: byte-exact parsing and formatting."""
import struct

import numpy as np
import pytest

from sophia.serving import protocol as proto
from sophia.serving.protocol import ProtocolError


def test_handshake_is_byte_exact():
    text = proto.format_handshake(["a/ws0", "ws1"], 3, [[0, 1, 2], [-7, 0, 9]])
    assert text == b"a/ws0;ws1;3\n0;1;2\n-7;0;9"
    hs = proto.parse_handshake(text)
    assert hs.workspaces == ("a/ws0", "ws1")
    assert hs.num_streams == 3
    assert hs.id_indices == ((0, 1, 2), (-7, 0, 9))


def test_handshake_single_workspace_single_stream():
    hs = proto.parse_handshake(b"ws;1\n4")
    assert (hs.workspaces, hs.num_streams, hs.id_indices) == (("ws",), 1, ((4,),))


def test_handshake_tolerates_one_trailing_newline_only():
    assert proto.parse_handshake(b"ws;2\n0;1\n").id_indices == ((0, 1),)
    with pytest.raises(ProtocolError):
        proto.parse_handshake(b"ws;2\n0;1\n\n")


def test_handshake_keeps_paths_verbatim():
    hs = proto.parse_handshake("dir with space/wé;1\n0".encode("utf-8"))
    assert hs.workspaces == ("dir with space/wé",)


@pytest.mark.parametrize("data, reason", [
    (b"", "line 1"),
    (b"ws", "line 1"),
    (b"ws;2", "0 ID lines"),
    (b"ws;2\n0", "1 fields"),
    (b"ws;2\n0;1;2", "3 fields"),
    (b"ws;2\n0;1\n0;1", "2 ID lines"),
    (b"a;b;2\n0;1", "1 ID lines"),
    (b";2\n0;1", "empty"),
    (b"ws;0\n", "must be >= 1"),
    (b"ws;-1\n0", "must be >= 1"),
    (b"ws;x\n0", "not an integer"),
    (b"ws;2\n0;one", "not an integer"),
    (b"ws;2\n0; 1", "not an integer"),
    (b"ws;2\n0;+1", "not an integer"),
    (b"ws;2\r\n0;1", "not an integer"),
    (b"ws;1\n1.5", "not an integer"),
    (b"\xff\xfe;1\n0", "not UTF-8"),
])
def test_bad_handshakes_are_refused_with_a_reason(data, reason):
    with pytest.raises(ProtocolError, match=reason):
        proto.parse_handshake(data)


def test_format_handshake_refuses_what_cannot_be_parsed():
    with pytest.raises(ProtocolError):
        proto.format_handshake(["a;b"], 1, [[0]])
    with pytest.raises(ProtocolError):
        proto.format_handshake(["a"], 2, [[0]])
    with pytest.raises(ProtocolError):
        proto.format_handshake([], 1, [])


def test_frames_are_little_endian_float32_in_nbj_order():
    frames_nbj = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    data = proto.format_frames(frames_nbj)
    assert data == struct.pack("<24f", *range(24))
    assert proto.frame_nbytes(2, 3, 4) == len(data) == 96
    np.testing.assert_array_equal(proto.parse_frames(data, 2, 3, 4), frames_nbj)


def test_big_endian_input_is_written_little_endian():
    frames = np.array([1.5, -2.0], dtype=">f4")
    assert proto.format_frames(frames) == struct.pack("<2f", 1.5, -2.0)


def test_parsed_frames_are_writable_native_float32():
    frames = proto.parse_frames(struct.pack("<2f", 1, 2), 1, 1, 2)
    assert frames.dtype == np.float32 and frames.flags.writeable


@pytest.mark.parametrize("size", [0, 4, 23, 25, 48])
def test_wrong_payload_size_is_refused(size):
    with pytest.raises(ProtocolError, match=f"{size} bytes, expected 24"):
        proto.parse_frames(b"\0" * size, 2, 1, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_position(bad):
    frames_nbj = np.zeros((2, 2, 3), np.float32)
    frames_nbj[1, 0, 2] = bad
    with pytest.raises(ProtocolError, match=r"\[1\]\[0\]\[2\]"):
        proto.parse_frames(proto.format_frames(frames_nbj), 2, 2, 3)


def test_end_frame_is_any_nan_first_float():
    assert proto.END_FRAME == b"\x00\x00\xc0\x7f"
    assert proto.is_end_frame(proto.END_FRAME)
    assert proto.is_end_frame(struct.pack("<3f", np.nan, 1, 2))
    assert proto.is_end_frame(b"\x01\x00\x80\xff")          # a negative, signalling NaN
    assert not proto.is_end_frame(struct.pack("<2f", 1, np.nan))
    assert not proto.is_end_frame(struct.pack("<f", np.inf))
    assert not proto.is_end_frame(b"\x00\x00\xc0")           # too short
    assert not proto.is_end_frame(b"ws;1\n0")


def test_outputs_infer_target_dim():
    data = struct.pack("<12f", *range(12))
    assert proto.parse_outputs(data, 2, 3).shape == (2, 3, 2)
    with pytest.raises(ProtocolError):
        proto.parse_outputs(data[:-4], 2, 3)
    with pytest.raises(ProtocolError):
        proto.parse_outputs(b"", 2, 3)


def test_timestamps():
    data = struct.pack("<2f", 0.5, 7)
    np.testing.assert_array_equal(proto.parse_timestamps(data, 2), [0.5, 7])
    with pytest.raises(ProtocolError, match="expected 12"):
        proto.parse_timestamps(data, 3)
    with pytest.raises(ProtocolError, match="not finite"):
        proto.parse_timestamps(struct.pack("<2f", 0, np.inf), 2)


def test_stream_lists():
    assert proto.format_streams([0, 3]) == b"0;3"
    assert proto.parse_streams(b"0;3", 4) == [0, 3]
    for bad in (b"", b"4", b"-1", b"0;;1", b"a", b"\xff"):
        with pytest.raises(ProtocolError):
            proto.parse_streams(bad, 4)


def test_error_replies_are_one_bounded_line():
    reply = proto.format_error("bad\nthing  here" + "x" * 1000)
    assert reply.startswith(b"error: bad thing here")
    assert b"\n" not in reply and len(reply) <= len(proto.ERROR) + 1 + proto.MAX_ERROR_CHARS
    assert proto.is_error(reply) and not proto.is_error(proto.READY)
