"""The binary framing codec: golden bytes, whole / byte-by-byte / trailing data,
limits checked before buffering, and property tests."""

from __future__ import annotations

import binascii
import contextlib
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.wire import END_OF_INPUT, NEED_DATA, Frame, FrameDecoder, FrameType, encode_frame
from strategies import frames

SID = bytes(range(16))


def decode_all(data: bytes, *, max_frame_size: int = 1 << 20, chunk: int = 0) -> list[Frame]:
    """Decode ``data`` fed whole (chunk=0) or ``chunk`` bytes at a time, then EOF."""
    decoder = FrameDecoder(max_frame_size)
    out: list[Frame] = []
    step = chunk or max(len(data), 1)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    for piece in [*pieces, b""]:
        decoder.receive_data(piece)
        while True:
            item = decoder.next_frame()
            if item is NEED_DATA or item is END_OF_INPUT:
                break
            assert isinstance(item, Frame)
            out.append(item)
    return out


def frame_bytes(frame_type: int, payload: bytes, seq: int = 0, version: int = 2) -> bytes:
    """Build a frame by hand, the way docs/protocol.md describes it."""
    header = b"BP" + struct.pack(">BBIQ", version, frame_type, len(payload), seq)
    return header + payload + struct.pack(">I", binascii.crc32(header + payload))


# Golden encodings: each written out from the spec, not from the encoder.
GOLDEN = [
    (bp.Ack(7), 0, frame_bytes(8, (7).to_bytes(8, "big"))),
    (bp.EndOfBody(3), 9, frame_bytes(5, (3).to_bytes(4, "big"), seq=9)),
    (bp.Data(1, b"hi"), 2, frame_bytes(4, b"\x00\x00\x00\x01hi", seq=2)),
    (bp.Window(0, 65536), 4, frame_bytes(7, b"\x00\x00\x00\x00\x00\x01\x00\x00", seq=4)),
    (bp.Ping(b"p"), 0, frame_bytes(9, b"p")),
    (bp.Pong(b""), 0, frame_bytes(10, b"")),
    (
        bp.Reset(5, bp.ErrorCode.CANCELLED, "gone"),
        3,
        frame_bytes(6, b"\x00\x00\x00\x05\x00\x04gone", seq=3),
    ),
    (
        bp.GoAway(11, bp.ErrorCode.NO_ERROR, ""),
        8,
        frame_bytes(11, b"\x00\x00\x00\x0b\x00\x00", seq=8),
    ),
    (
        bp.RequestHead(1, b"GET", b"/", [(b"a", b"b")]),
        1,
        frame_bytes(
            2,
            b"\x00\x00\x00\x01"
            + b"\x00\x00\x00\x00"  # route 0: the default outward route
            + b"\x00\x00\x00\x03GET"
            + b"\x00\x00\x00\x01/"
            + b"\x00\x00\x00\x01"
            + b"\x00\x00\x00\x01a\x00\x00\x00\x01b",
            seq=1,
        ),
    ),
    (
        bp.RequestHead(2, b"POST", b"/x", [], route=7),
        4,
        frame_bytes(
            2,
            b"\x00\x00\x00\x02\x00\x00\x00\x07"
            + b"\x00\x00\x00\x04POST\x00\x00\x00\x02/x\x00\x00\x00\x00",
            seq=4,
        ),
    ),
    (bp.Route(7, 8080), 3, frame_bytes(12, b"\x00\x00\x00\x07\x1f\x90", seq=3)),
    (
        bp.ResponseHead(1, 200, b"OK", []),
        5,
        frame_bytes(3, b"\x00\x00\x00\x01\x00\xc8\x00\x00\x00\x02OK\x00\x00\x00\x00", seq=5),
    ),
    (
        bp.Hello(2, bp.Role.HOST, SID, bp.Limits(2048, 10, 20, 3, 1024)),
        0,
        frame_bytes(
            1,
            struct.pack(">IB16sIIIII", 2, 2, SID, 2048, 10, 20, 3, 1024),
        ),
    ),
]


@pytest.mark.parametrize(("record", "seq", "wire"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_encoding(record: bp.Record, seq: int, wire: bytes) -> None:
    assert encode_frame(record, seq) == wire


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_golden_decoding_whole_bytewise_and_chunked(chunk: int) -> None:
    stream = b"".join(wire for _, _, wire in GOLDEN)
    decoded = decode_all(stream, chunk=chunk)
    assert decoded == [Frame(seq, record) for record, seq, _ in GOLDEN]


def test_trailing_valid_frame_is_kept_for_the_next_call() -> None:
    first = encode_frame(bp.Data(1, b"x" * 10), 1)
    second = encode_frame(bp.EndOfBody(1), 2)
    decoder = FrameDecoder(1024)
    decoder.receive_data(first + second[:5])
    assert decoder.next_frame() == Frame(1, bp.Data(1, b"x" * 10))
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 5
    decoder.receive_data(second[5:])
    assert decoder.next_frame() == Frame(2, bp.EndOfBody(1))
    assert decoder.next_frame() is NEED_DATA


def test_trailing_junk_after_a_frame_is_an_error_after_the_frame() -> None:
    decoder = FrameDecoder(1024)
    decoder.receive_data(encode_frame(bp.Ack(1)) + b"junk")
    assert decoder.next_frame() == Frame(0, bp.Ack(1))
    with pytest.raises(bp.CorruptFrameError, match="bad magic b'ju' at stream offset 28"):
        decoder.next_frame()


def test_end_of_input_is_reported_between_frames() -> None:
    decoder = FrameDecoder(1024)
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_frame() is END_OF_INPUT
    with pytest.raises(bp.LocalProtocolError, match="after the end of input"):
        decoder.receive_data(b"more")


@pytest.mark.parametrize("cut", [1, 15, 16, 20])
def test_end_of_input_inside_a_frame_is_an_error(cut: int) -> None:
    decoder = FrameDecoder(1024)
    decoder.receive_data(encode_frame(bp.Data(1, b"abcdefgh"), 1)[:cut])
    decoder.receive_data(b"")
    with pytest.raises(bp.CorruptFrameError, match=f"input ended inside .*: {cut} of at least"):
        decoder.next_frame()


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    header = b"BP" + struct.pack(">BBIQ", 1, 4, 1 << 30, 1)
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(header)  # nothing of the 1 GiB payload is needed
    with pytest.raises(bp.CorruptFrameError, match="declares a 1073741824-byte payload; the limit"):
        decoder.next_frame()
    assert decoder.buffered == len(header)


def test_a_decoder_that_failed_keeps_failing() -> None:
    decoder = FrameDecoder(1024)
    decoder.receive_data(b"XX")
    with pytest.raises(bp.CorruptFrameError) as first:
        decoder.next_frame()
    with pytest.raises(bp.CorruptFrameError) as second:
        decoder.next_frame()
    assert first.value is second.value


def _corrupt_crc(wire: bytes) -> bytes:
    return wire[:-1] + bytes([wire[-1] ^ 1])


BAD_FRAMES = [
    ("bad magic", b"XP" + bytes(18), bp.CorruptFrameError, "bad magic"),
    ("crc", _corrupt_crc(encode_frame(bp.Ack(1))), bp.CorruptFrameError, "CRC mismatch"),
    ("unknown type", frame_bytes(99, b""), bp.RemoteProtocolError, "unknown frame type 99"),
    (
        "wrong version",
        frame_bytes(8, bytes(8), version=1),
        bp.RemoteProtocolError,
        "a frame of type 8 has wire version 1; this end speaks version 2",
    ),
    (  # the version is checked before the type, as the spec orders
        "wrong version, unknown type",
        frame_bytes(99, b"", version=1),
        bp.RemoteProtocolError,
        "a frame of type 99 has wire version 1",
    ),
    ("short payload", frame_bytes(8, bytes(4)), bp.RemoteProtocolError, "ACK payload ends"),
    (  # a blob's length field cut, then its bytes
        "short blob length",
        frame_bytes(2, bytes(8) + b"\0\0", 1),
        bp.RemoteProtocolError,
        "REQUEST_HEAD payload ends after 10 bytes; a field needs 4 bytes at offset 8",
    ),
    (
        "short blob",
        frame_bytes(2, bytes(8) + b"\0\0\0\5GE", 1),
        bp.RemoteProtocolError,
        "REQUEST_HEAD payload ends after 14 bytes; a field needs 5 bytes at offset 12",
    ),
    (
        "trailing payload",
        frame_bytes(5, b"\0\0\0\1\0", 1),
        bp.RemoteProtocolError,
        "1 trailing bytes",
    ),
    ("unsequenced data", frame_bytes(5, b"\0\0\0\1"), bp.RemoteProtocolError, "must carry a seq"),
    ("sequenced ack", frame_bytes(8, bytes(8), 3), bp.RemoteProtocolError, "must not carry"),
    (
        "status out of range",
        frame_bytes(3, b"\0\0\0\1\x03\xe8" + bytes(8), 1),
        bp.RemoteProtocolError,
        "invalid RESPONSE_HEAD record: status 1000 is out of range",
    ),
    ("exchange id 0", frame_bytes(5, bytes(4), 1), bp.RemoteProtocolError, "exchange_id 0"),
    (
        "bad header name",
        frame_bytes(2, b"\0\0\0\1\0\0\0\0\0\0\0\1G\0\0\0\1/\0\0\0\1\0\0\0\3a b\0\0\0\0", 1),
        bp.RemoteProtocolError,
        "header name b'a b' is not a token",
    ),
    (
        "header count too large",
        frame_bytes(2, b"\0\0\0\1\0\0\0\0\0\0\0\1G\0\0\0\1/\xff\xff\xff\xff", 1),
        bp.RemoteProtocolError,
        "declares 4294967295 headers",
    ),
    (
        "unknown code",
        frame_bytes(6, b"\0\0\0\1\0\xff", 1),
        bp.RemoteProtocolError,
        "unknown error code 255",
    ),
    ("bad utf-8", frame_bytes(6, b"\0\0\0\1\0\0\xff", 1), bp.RemoteProtocolError, "not UTF-8"),
    (
        "unknown role",
        frame_bytes(1, struct.pack(">IB16sIIIII", 2, 9, SID, 2048, 1, 1, 1, 0)),
        bp.RemoteProtocolError,
        "unknown role 9",
    ),
    (
        "bad limits",
        frame_bytes(1, struct.pack(">IB16sIIIII", 2, 1, SID, 10, 1, 1, 1, 0)),
        bp.RemoteProtocolError,
        "max_frame_size 10 is below the minimum",
    ),
]


@pytest.mark.parametrize(
    ("name", "wire", "error", "message"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES]
)
@pytest.mark.parametrize("chunk", [0, 1])
def test_bad_frames_raise_remote_errors_naming_the_cause(
    name: str, wire: bytes, error: type[Exception], message: str, chunk: int
) -> None:
    # A good frame first, so the error is also shown not to lose it.
    good = encode_frame(bp.Ack(5))
    decoder = FrameDecoder(1 << 16)
    got: list[Frame] = []
    pieces = [good + wire] if chunk == 0 else [bytes([b]) for b in good + wire]
    with pytest.raises(error, match=message):
        for piece in pieces:
            decoder.receive_data(piece)
            while isinstance(item := decoder.next_frame(), Frame):
                got.append(item)
    assert got == [Frame(0, bp.Ack(5))]


def test_hello_is_readable_whatever_the_frame_version_byte_says() -> None:
    wire = frame_bytes(1, struct.pack(">IB16sIIIII", 2, 1, SID, 2048, 1, 1, 1, 0), version=7)
    assert decode_all(wire)[0].record == bp.Hello(
        2, bp.Role.SANDBOX, SID, bp.Limits(2048, 1, 1, 1, 0)
    )


def test_a_hello_of_another_version_is_a_version_mismatch_whatever_follows() -> None:
    # A later version may lay out the rest differently: an unknown role, limits
    # this version would refuse, fields it does not know. Only the version is read.
    future = struct.pack(">IB16sIIIII", 3, 9, SID, 10, 0, 0, 0, 99) + b"new fields"
    with pytest.raises(bp.RemoteProtocolError) as raised:
        decode_all(frame_bytes(1, future, version=3))
    assert "the peer speaks bridgeproto wire version 3 and this side speaks version 2" in str(
        raised.value
    )


def test_encoder_checks_sequence_numbers() -> None:
    with pytest.raises(bp.LocalProtocolError, match="needs a sequence number"):
        encode_frame(bp.Data(1, b""), 0)
    with pytest.raises(bp.LocalProtocolError, match="is not sequenced"):
        encode_frame(bp.Ping(), 4)
    with pytest.raises(bp.LocalProtocolError, match="not a bridgeproto record"):
        encode_frame("hello", 0)  # type: ignore[arg-type]


def test_the_encoders_and_decoders_cover_the_same_frame_types() -> None:
    from bridgeproto._codec import _DECODERS, _ENCODERS

    assert {frame_type for frame_type, _ in _ENCODERS.values()} == set(_DECODERS) == set(FrameType)
    assert set(_ENCODERS) == {type(r) for r in _one_of_each()}


def _one_of_each() -> list[bp.Record]:
    return [
        bp.Hello(bp.PROTOCOL_VERSION, bp.Role.HOST, bytes(16), bp.Limits()),
        bp.RequestHead(1, b"GET", b"/"),
        bp.ResponseHead(1, 200),
        bp.Data(1, b"x"),
        bp.EndOfBody(1),
        bp.Reset(1, bp.ErrorCode.CANCELLED, ""),
        bp.Window(1, 1),
        bp.Ack(1),
        bp.Ping(),
        bp.Pong(),
        bp.GoAway(0, bp.ErrorCode.NO_ERROR, ""),
        bp.Route(1, 80),
    ]


@given(st.lists(frames(), max_size=8), st.integers(1, 64))
def test_round_trip(frame_list: list[Frame], chunk: int) -> None:
    wire = b"".join(encode_frame(f.record, f.seq) for f in frame_list)
    assert decode_all(wire, max_frame_size=2**32 - 1) == frame_list
    assert decode_all(wire, max_frame_size=2**32 - 1, chunk=chunk) == frame_list


@given(st.lists(frames(), max_size=8), st.lists(st.integers(0, 200), max_size=8))
def test_a_reused_buffer_fed_at_any_cuts_decodes_the_same(
    frame_list: list[Frame], cuts: list[int]
) -> None:
    """The decoder keeps bytes it is given as they are, so it must copy a
    buffer the caller reuses: here one bytearray, overwritten after each
    piece, carries the stream cut anywhere."""
    wire = b"".join(encode_frame(f.record, f.seq) for f in frame_list)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    decoder, out, reused = FrameDecoder(2**32 - 1), [], bytearray()
    for start, end in itertools.pairwise(points):
        reused[:] = wire[start:end]
        decoder.receive_data(reused)  # type: ignore[arg-type]  # (any buffer, as callers do)
        reused[:] = b"\xff" * len(reused)
        while isinstance(item := decoder.next_frame(), Frame):
            out.append(item)
    assert out == frame_list and decoder.buffered == 0


@given(st.binary(max_size=400), st.integers(0, 40))
def test_any_bytes_raise_only_remote_protocol_error(data: bytes, chunk: int) -> None:
    with contextlib.suppress(bp.RemoteProtocolError):
        decode_all(data, max_frame_size=256, chunk=chunk)


@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_any_single_byte_flip_is_detected(frame_list: list[Frame], data: st.DataObject) -> None:
    wire = bytearray(b"".join(encode_frame(f.record, f.seq) for f in frame_list))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_all(bytes(wire), max_frame_size=2**32 - 1)
    except bp.RemoteProtocolError:
        return
    raise AssertionError(f"a damaged stream decoded as {decoded!r}")
