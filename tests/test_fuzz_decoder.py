"""Fuzz target for the decoders.

Under pytest it runs on hypothesis. With atheris installed it is a
coverage-guided fuzzer too::

    pip install atheris && python tests/test_fuzz_decoder.py -max_total_time=60

Whatever the input, the binary decoder and the armor decoder may only raise
``RemoteProtocolError``, and a ``Connection`` fed the bytes after a valid
hello may not raise at all: bad input becomes ``LinkBroken`` or
``SessionFailed`` events.
"""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.wire import END_OF_INPUT, ArmorDecoder, FrameDecoder, encode_frame

SID = bytes(16)
HELLO = encode_frame(bp.Hello(bp.PROTOCOL_VERSION, bp.Role.SANDBOX, SID, bp.Limits()))


def fuzz_one_input(data: bytes) -> None:
    mode, data = (data[0] % 3, data[1:]) if data else (0, data)
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
