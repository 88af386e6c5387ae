"""Fuzz target for the decoders.

Under pytest it runs on hypothesis. With atheris installed it is a
coverage-guided fuzzer too::

    pip install atheris && python tests/core/test_fuzz_decoder.py -max_total_time=60

Whatever the input, the binary decoder and the armor decoder may only raise
``RemoteProtocolError``, and a ``Connection`` fed the bytes after a valid
hello may not raise at all: bad input becomes ``LinkBroken`` or
``SessionFailed`` events. Random bytes almost never pass the CRC, so one mode
wraps them in a frame with a correct header and CRC: that is what reaches
the payload decoders of every frame type.
"""

from __future__ import annotations

import binascii
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto._codec import HEADER, MAGIC
from bridgeproto.wire import END_OF_INPUT, ArmorDecoder, Frame, FrameDecoder, encode_frame

SID = bytes(16)
HELLO = encode_frame(bp.Hello(bp.PROTOCOL_VERSION, bp.Role.SANDBOX, SID, bp.Limits()))


def framed(data: bytes) -> bytes:
    """A frame around fuzz bytes: type and sequence number from the first two,
    the rest as the payload, with the header and CRC that make it pass."""
    frame_type, seq, payload = data[0] % 13, data[1] % 3, data[2:]
    header = HEADER.pack(MAGIC, bp.PROTOCOL_VERSION, frame_type, len(payload), seq)
    return header + payload + struct.pack(">I", binascii.crc32(header + payload))


def fuzz_one_input(data: bytes) -> None:
    mode, data = (data[0] % 4, data[1:]) if data else (0, data)
    if mode == 3 and len(data) >= 2:
        mode, data = 0, framed(data)
    if mode == 0:
        decoder = FrameDecoder(4096)
        try:
            for piece in (data, b"") if data else (b"",):
                decoder.receive_data(piece)
            while decoder.next_frame() is not END_OF_INPUT:
                pass
        except bp.RemoteProtocolError:
            pass
    elif mode == 1:
        armored = ArmorDecoder(4096)
        try:
            text = data.decode("latin-1")
            for piece in (text, "") if text else ("",):
                armored.receive_data(piece)
            while armored.next_batch() is not END_OF_INPUT:
                pass
        except bp.RemoteProtocolError:
            pass
    else:
        conn = bp.Connection(bp.Role.HOST, SID)
        conn.start(0.0)
        conn.receive_data(HELLO, 0.0)
        events = conn.receive_data(data, 1.0)
        if conn.failure is None:
            conn.handle_timer(1000.0)
            conn.data_to_send()
        assert all(not isinstance(e, bp.HandshakeComplete) for e in events)


@given(st.binary(max_size=2000))
def test_decoders_survive_any_input(data: bytes) -> None:
    fuzz_one_input(data)


@given(st.binary(min_size=2, max_size=300))
def test_payload_decoders_survive_any_payload(data: bytes) -> None:
    fuzz_one_input(bytes([3]) + data)


def test_the_framed_mode_gets_past_the_crc_to_the_payload_decoders() -> None:
    decoder = FrameDecoder(4096)
    decoder.receive_data(framed(bytes([4, 1]) + b"\x00\x00\x00\x07abc"))  # DATA, seq 1
    assert decoder.next_frame() == Frame(1, bp.Data(7, b"abc"))
    decoder = FrameDecoder(4096)
    decoder.receive_data(framed(bytes([6, 1]) + b"\x00\x00\x00\x07\x00\x04\xff"))  # RESET
    with pytest.raises(bp.RemoteProtocolError, match="RESET reason is not UTF-8"):
        decoder.next_frame()


@given(
    st.lists(
        st.sampled_from(
            [
                encode_frame(bp.RequestHead(1, b"GET", b"/"), 1),
                encode_frame(bp.Data(1, b"abc"), 2),
                encode_frame(bp.EndOfBody(1), 3),
                encode_frame(bp.Ack(0)),
                encode_frame(bp.Ping(b"x")),
                HELLO,
            ]
        ),
        max_size=6,
    ),
    st.binary(max_size=40),
    st.integers(0, 200),
)
def test_decoders_survive_valid_frames_with_damage(
    frames: list[bytes], junk: bytes, where: int
) -> None:
    # Mostly-valid input reaches deeper than random bytes do.
    stream = b"".join(frames)
    where = min(where, len(stream))
    fuzz_one_input(b"\x02" + stream[:where] + junk + stream[where:])
    fuzz_one_input(b"\x00" + stream[:where] + junk + stream[where:])


if __name__ == "__main__":
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()  # coverage feedback for the already-imported core
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()
