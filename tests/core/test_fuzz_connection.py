"""Fuzz target for ``Connection`` fed hostile but well-framed records.

Every frame is valid on the wire (right magic, length, CRC and, mostly,
sequence numbers), so the input reaches the state machine itself: records
for unknown, closed or wrong-parity exchanges, bodies past the windows,
resets, windows, goaways and acknowledgements in any order, while this side
answers the way a host side does. Under pytest it runs a fixed number of
hypothesis examples; with atheris, for N minutes (N * 60 seconds)::

    pip install atheris && python tests/core/test_fuzz_connection.py -max_total_time=600

What must hold: ``receive_data`` and ``handle_timer`` never raise; the
exchanges in flight never exceed the limit this side announced; what this
side retains for the peer stays within ``max_unacknowledged_bytes``; and
once the session has failed, it stays failed.
"""

from __future__ import annotations

import sys

from hypothesis import given, settings
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.wire import SEQUENCED, encode_frame

SID = bytes(16)
LIMITS = bp.Limits(max_exchanges=4, initial_window=4096, session_window=8192)
CONFIG = bp.Config(limits=LIMITS, max_unacknowledged_bytes=64 << 10)
CODES = list(bp.ErrorCode)


def _record(op: int, arg: int, size: int) -> bp.Record:
    """One record from three bytes of fuzz input."""
    exchange_id = arg % 12  # small ids collide with live, closed and unknown exchanges
    kind = op % 9
    if kind == 0:
        return bp.RequestHead(max(exchange_id, 1), b"POST", b"/x", [(b"a", b"b" * size)])
    if kind == 1:
        return bp.Data(max(exchange_id, 1), b"d" * (size * 64))
    if kind == 2:
        return bp.EndOfBody(max(exchange_id, 1))
    if kind == 3:
        return bp.Reset(max(exchange_id, 1), CODES[size % len(CODES)], "fuzz")
    if kind == 4:
        return bp.Window(exchange_id, size * 97 + 1)
    if kind == 5:
        return bp.Ack(arg * size)
    if kind == 6:
        return bp.Ping(bytes([size]))
    if kind == 7:
        return bp.GoAway(exchange_id, CODES[size % len(CODES)], "fuzz")
    return bp.ResponseHead(max(exchange_id, 1), 100 + size % 500, b"", [])


def fuzz_one_input(data: bytes) -> None:
    host = bp.Connection(bp.Role.HOST, SID, CONFIG)
    host.start(0.0)
    hello = bp.Hello(bp.PROTOCOL_VERSION, bp.Role.SANDBOX, SID, bp.Limits())
    host.receive_data(encode_frame(hello), 0.0)
    seq, now, failed = 0, 0.0, False
    for i in range(0, len(data) - 2, 3):
        op, arg, size = data[i], data[i + 1], data[i + 2]
        record = _record(op, arg, size)
        if isinstance(record, SEQUENCED):
            seq += 1 if op < 240 else 2  # now and then a gap: a link that lost a frame
        now += size / 100
        if host.failure is not None:
            failed = True
            break
        frame = encode_frame(record, seq if isinstance(record, SEQUENCED) else 0)
        events = host.receive_data(frame, now)
        for event in events:
            if isinstance(event, bp.RequestHead) and host.is_open(event.exchange_id):
                host.send_response(event.exchange_id, 200, b"OK", [], now)
            elif isinstance(event, bp.Data) and host.is_open(event.exchange_id):
                host.consume(event.exchange_id, len(event.data))
            elif isinstance(event, bp.LinkBroken):
                host.resume(now)
        if host.failure is None:
            host.handle_timer(now)
        host.data_to_send()
        assert len(host.open_exchanges) <= LIMITS.max_exchanges
        assert host.retained_bytes <= CONFIG.max_unacknowledged_bytes + 2 * LIMITS.max_frame_size
    if failed:
        assert host.failure is not None and host.next_deadline() is None


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_connection_survives_hostile_records(data: bytes) -> None:
    fuzz_one_input(data)


if __name__ == "__main__":
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()
