"""Delivery on its own: numbering, retention, acks, resends and resume."""

from __future__ import annotations

import pytest

import bridgeproto as bp
from bridgeproto._delivery import Arrival, Delivery
from bridgeproto._errors import PeerFault
from bridgeproto.wire import NEED_DATA, Frame, FrameDecoder, encode_frame

HELLO = bp.Hello(bp.PROTOCOL_VERSION, bp.Role.SANDBOX, bytes(16), bp.Limits())


def frames(data: bytes) -> list[Frame]:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(data)
    out = []
    while (item := decoder.next_frame()) is not NEED_DATA:
        assert isinstance(item, Frame)
        out.append(item)
    return out


def test_sequenced_records_are_numbered_retained_and_sent_after_control() -> None:
    d = Delivery()
    d.send(bp.EndOfBody(1))
    d.send(bp.EndOfBody(3))
    d.send_control(bp.Ping(b"12345678"))
    assert d.sent_seq == 2 and not d.settled and d.retained_bytes > 0
    assert d.unsent_bytes == d.retained_bytes + len(encode_frame(bp.Ping(b"12345678")))
    out = frames(d.data_to_send(None))
    assert [(f.seq, f.record) for f in out] == [
        (0, bp.Ping(b"12345678")),
        (1, bp.EndOfBody(1)),
        (2, bp.EndOfBody(3)),
    ]
    assert d.data_to_send(None) == b"" and d.unsent_bytes == 0


def test_an_ack_releases_exactly_what_it_covers() -> None:
    d = Delivery()
    for i in range(1, 4):
        d.send(bp.EndOfBody(2 * i - 1))
    each = d.retained_bytes // 3
    d.receive_ack(2)
    assert d.acked_seq == 2 and d.retained_bytes == each
    d.receive_ack(1)  # an old ack changes nothing
    assert d.acked_seq == 2 and d.retained_bytes == each
    d.receive_ack(3)
    assert d.settled and d.retained_bytes == 0
    with pytest.raises(PeerFault, match="only 3 were sent") as fault:
        d.receive_ack(4)
    assert fault.value.code is bp.ErrorCode.PROTOCOL_ERROR


def test_arrivals_take_the_next_drop_the_seen_and_flag_a_gap() -> None:
    d = Delivery()
    assert d.arrival(2) is Arrival.GAP and d.received_seq == 0
    assert d.data_to_send(None) == b""  # a gap is not acknowledged
    assert d.arrival(1) is Arrival.NEXT and d.received_seq == 1
    assert d.arrival(1) is Arrival.SEEN and d.received_seq == 1
    (ack,) = frames(d.data_to_send(None))  # one ack for both
    assert ack.record == bp.Ack(1)
    assert d.arrival(1) is Arrival.SEEN  # a resend is acknowledged again
    assert frames(d.data_to_send(None))[0].record == bp.Ack(1)


def test_resume_sends_hello_then_ack_then_everything_unacknowledged() -> None:
    d = Delivery()
    d.send(bp.EndOfBody(1))
    d.send(bp.EndOfBody(3))
    d.send_control(bp.Ping(b"lostping"))  # belongs to the old link: dropped
    d.data_to_send(None)
    d.receive_ack(1)
    d.arrival(1)
    d.data_to_send(None)
    d.resume(HELLO)
    d.resume(HELLO)  # twice is the same as once
    out = frames(d.data_to_send(None))
    assert [(f.seq, f.record) for f in out] == [(0, HELLO), (0, bp.Ack(1)), (2, bp.EndOfBody(3))]


def test_a_peer_that_reopened_gets_the_unacknowledged_again() -> None:
    d = Delivery()
    d.send(bp.EndOfBody(1))
    d.data_to_send(None)
    d.resend_unacknowledged()
    assert [f.seq for f in frames(d.data_to_send(None))] == [1]
    d.forget_unacknowledged()
    assert d.settled and d.retained_bytes == 0
    d.resend_unacknowledged()
    assert d.data_to_send(None) == b""


def test_max_bytes_hands_out_whole_frames_at_least_one() -> None:
    d = Delivery()
    for _ in range(5):
        d.send(bp.Data(1, bytes(100)))
    size = d.retained_bytes // 5
    first = d.data_to_send(1)  # smaller than a frame: one frame still goes
    assert len(first) == size
    second = d.data_to_send(2 * size)
    assert len(second) == 2 * size
    assert len(d.data_to_send(None)) == 2 * size
