"""The core at its edges: values exactly at each limit and one past it, and
the behaviours a mutation run found no test for (docs/core.md, "Mutation run")."""

from __future__ import annotations

import pytest

import bridgeproto as bp
from bridgeproto.http import HttpPolicy, Refusal, Upstream, check_target, upstream_request
from bridgeproto.wire import (
    END_OF_INPUT,
    FRAME_OVERHEAD,
    NEED_DATA,
    ArmorDecoder,
    Frame,
    FrameDecoder,
    armor,
    encode_frame,
)
from pair import Pair, connected


def kinds(events: list[bp.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# ------------------------------------------------------------ exactly at a limit


def test_a_payload_of_exactly_max_frame_size_decodes_and_one_more_is_refused() -> None:
    at = encode_frame(bp.Data(1, bytes(96)), 1)  # payload: 4-byte id + 96 = 100
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(at)
    assert decoder.next_frame() == Frame(1, bp.Data(1, bytes(96)))
    over = FrameDecoder(max_frame_size=99)
    over.receive_data(at)
    with pytest.raises(bp.CorruptFrameError, match="declares a 100-byte payload; the limit is 99"):
        over.next_frame()


def test_a_body_of_exactly_max_body_bytes_passes_and_one_more_is_reset() -> None:
    pair = Pair(host=bp.Config(max_body_bytes=10))
    s, h = pair.sandbox, pair.host
    fits = s.start_exchange(b"POST", b"/", [], 0.0)
    s.send_data(fits, b"x" * 10, 0.0)
    s.send_end(fits, 0.0)
    over = s.start_exchange(b"POST", b"/", [], 0.0)
    s.send_data(over, b"x" * 11, 0.0)
    pair.pump()
    events = pair.take(h)
    assert bp.EndOfBody(fits) in events and h.is_open(fits)
    assert [e.code for e in events if isinstance(e, bp.ExchangeReset)] == [
        bp.ErrorCode.BODY_TOO_LARGE
    ]
    assert not h.is_open(over)


def test_sending_exactly_max_body_bytes_is_allowed_and_one_more_is_refused() -> None:
    pair = Pair(sandbox=bp.Config(max_body_bytes=10))
    s = pair.sandbox
    xid = s.start_exchange(b"POST", b"/", [], 0.0)
    s.send_data(xid, b"x" * 10, 0.0)
    with pytest.raises(bp.LocalProtocolError, match="max_body_bytes") as refused:
        s.send_data(xid, b"x", 0.0)
    assert refused.value.code is bp.ErrorCode.BODY_TOO_LARGE and refused.value.status_hint == 413


def test_a_head_of_exactly_the_peers_limit_is_sent_and_one_byte_more_is_not() -> None:
    head = bp.RequestHead(1, b"GET", b"/", ((b"a", b"b"),))
    pair = Pair(host=bp.Config(limits=bp.Limits(max_header_bytes=head.head_size)))
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"GET", b"/", [(b"a", b"b")], 0.0)
    pair.pump()
    assert pair.take(h) == [bp.RequestHead(xid, b"GET", b"/", ((b"a", b"b"),))]
    with pytest.raises(bp.LocalProtocolError, match="peer accepts at most") as refused:
        s.start_exchange(b"GET", b"/", [(b"a", b"bb")], 0.0)
    assert refused.value.code is bp.ErrorCode.HEADERS_TOO_LARGE


def test_exactly_max_exchanges_may_be_open_and_not_one_more() -> None:
    pair = Pair(host=bp.Config(limits=bp.Limits(max_exchanges=2)))
    s = pair.sandbox
    s.start_exchange(b"GET", b"/", [], 0.0)
    assert not s.exchanges_full
    s.start_exchange(b"GET", b"/", [], 0.0)
    assert s.exchanges_full
    with pytest.raises(bp.LocalProtocolError, match="the peer allows 2") as refused:
        s.start_exchange(b"GET", b"/", [], 0.0)
    assert refused.value.code is bp.ErrorCode.TOO_MANY_EXCHANGES


def test_exactly_max_unacknowledged_bytes_is_tolerated_and_more_fails_the_session() -> None:
    host, peer = connected(bp.Role.HOST)
    request = peer.frame(bp.RequestHead(1, b"GET", b"/"))
    host.receive_data(request, 0.0)
    host.send_response(1, 200, b"", [], 0.0)
    size = host.retained_bytes
    at = bp.Config(max_unacknowledged_bytes=size)
    host, peer = connected(bp.Role.HOST, at)
    host.receive_data(request, 0.0)
    host.send_response(1, 200, b"", [], 0.0)
    assert host.handle_timer(0.0) == [] and host.failure is None  # exactly at the limit
    host.send_end(1, 0.0)
    assert kinds(host.handle_timer(0.0)) == ["ExchangeReset", "SessionFailed"]
    assert host.failure is not None and host.failure.code is bp.ErrorCode.PEER_UNRESPONSIVE


# ------------------------------------------------------------ survivors of the mutation run


@pytest.mark.parametrize("path", [b"/v1/a\\b", b"/v1/a%5cb", b"/v1/a%5Cb", b"/v1/a%2fb"])
def test_backslashes_and_encoded_separators_are_unsafe(path: bytes) -> None:
    refusal = check_target(b"GET", path, HttpPolicy())
    assert refusal is not None and refusal.cause == "unsafe-path", refusal


def test_a_capitalised_added_header_replaces_the_agents_own() -> None:
    upstream = Upstream("h", 1, HttpPolicy(), ((b"Authorization", b"Bearer real"),))
    head = bp.RequestHead(1, b"GET", b"/", ((b"authorization", b"Bearer placeholder"),))
    request = upstream_request(head, upstream)
    assert not isinstance(request, Refusal)
    sent = [(n.lower(), v) for n, v in request.headers]
    assert (b"authorization", b"Bearer real") in sent
    assert (b"authorization", b"Bearer placeholder") not in sent


def test_the_session_reports_closed_only_once_its_last_frames_are_acknowledged() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    s.close(0.0)
    pair.deliver(s)  # the host gets the goaway and answers with its own
    pair.deliver(h)  # the sandbox gets it, but the host has no ack for its goaway yet
    assert s.state is bp.SessionState.CLOSED  # the sandbox's goaway was acknowledged
    assert h.state is bp.SessionState.CLOSING and h.retained_bytes > 0
    assert "SessionClosed" not in kinds(pair.take(h))
    pair.deliver(s)  # the ack
    assert h.state is bp.SessionState.CLOSED
    assert kinds(pair.take(h)) == ["SessionClosed"]


def test_when_only_the_side_that_lost_frames_resumes_the_other_resends() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    first = s.start_exchange(b"GET", b"/1", [], 0.0)
    s.data_to_send()  # lost
    second = s.start_exchange(b"GET", b"/2", [], 0.0)
    pair.deliver(s)  # the host sees sequence 2 without 1: its link breaks
    assert kinds(pair.take(h)) == ["LinkBroken"]
    h.resume(0.0)  # only the host resumes; the sandbox never hears of the break
    pair.pump()
    assert [e.exchange_id for e in pair.take(h) if isinstance(e, bp.RequestHead)] == [
        first,
        second,
    ]
    assert pair.take(s) == [] and s.retained_bytes == 0


def test_send_data_is_bounded_by_the_session_credit_too() -> None:
    limits = bp.Limits(initial_window=1000, session_window=300)
    pair = Pair(host=bp.Config(limits=limits))
    s = pair.sandbox
    a = s.start_exchange(b"POST", b"/", [], 0.0)
    b = s.start_exchange(b"POST", b"/", [], 0.0)
    assert s.send_credit(a) == 300
    s.send_data(a, b"x" * 200, 0.0)
    assert s.send_credit(b) == 100  # what the other exchange spent is gone for both
    with pytest.raises(bp.LocalProtocolError, match="100 bytes of credit"):
        s.send_data(b, b"x" * 101, 0.0)


def test_credit_held_by_forgotten_closed_exchanges_comes_back() -> None:
    limits = bp.Limits(initial_window=1000, session_window=1000)
    pair = Pair(sandbox=bp.Config(limits=limits, closed_exchange_memory=1))
    s, h = pair.sandbox, pair.host
    pair.completed_download(600)  # delivered, never consumed by the sandbox
    pair.completed_download(0)  # closing it pushes the first out of the bounded map
    assert bp.CreditAvailable(0) in pair.take(h)
    third = s.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    assert h.send_credit(third) == 1000


def test_bytes_received_push_the_idle_timer_and_the_peer_timer_back() -> None:
    pair = Pair(
        sandbox=bp.Config(idle_timeout=10, ping_interval=None, peer_timeout=30),
        host=bp.Config(idle_timeout=None, ping_interval=None, peer_timeout=None),
    )
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    pair.now = 8.0
    h.send_response(xid, 200, b"", [], 8.0)  # received by the sandbox at 8
    pair.pump()
    assert s.next_deadline() == 18.0  # idle from the last byte received, not from the start
    pair.now = 17.0
    h.send_data(xid, b"x", 17.0)
    pair.pump()
    assert s.next_deadline() == 27.0
    s.reset(xid, bp.ErrorCode.CANCELLED)
    assert s.next_deadline() == 47.0  # the peer timer runs from the last frame heard


def test_after_a_ping_the_next_timer_is_a_whole_interval_away() -> None:
    pair = Pair(sandbox=bp.Config(ping_interval=5, peer_timeout=60))
    s = pair.sandbox
    assert s.next_deadline() == 5.0
    s.handle_timer(5.0)
    assert s.data_to_send()  # the ping
    assert s.next_deadline() == 10.0  # not 5.0 again: a timer loop would spin
    assert s.handle_timer(5.0) == [] and s.data_to_send() == b""


def test_the_armor_decoder_gives_batches_before_its_input_ends() -> None:
    decoder = ArmorDecoder(1 << 16)
    line = armor(b"first batch") + "\n"
    decoder.receive_data(line[:7])
    assert decoder.next_batch() is NEED_DATA  # half a line: wait, no error, no end
    decoder.receive_data(line[7:] + armor(b"second")[:3])
    assert decoder.next_batch() == b"first batch"
    assert decoder.next_batch() is NEED_DATA
    decoder.receive_data(armor(b"second")[3:] + "\n")
    assert decoder.next_batch() == b"second"
    decoder.receive_data("")
    assert decoder.next_batch() is END_OF_INPUT


def test_sending_under_max_body_bytes_in_pieces_is_allowed() -> None:
    pair = Pair(sandbox=bp.Config(max_body_bytes=10))
    s = pair.sandbox
    xid = s.start_exchange(b"POST", b"/", [], 0.0)
    s.send_data(xid, b"x" * 4, 0.0)
    s.send_data(xid, b"x" * 5, 0.0)  # 9 of 10
    with pytest.raises(bp.LocalProtocolError, match="max_body_bytes"):
        s.send_data(xid, b"xx", 0.0)  # 11 of 10


def test_the_exchange_deadline_fires_at_it_and_not_before() -> None:
    quiet = {"idle_timeout": None, "ping_interval": None, "peer_timeout": None}
    pair = Pair(host=bp.Config(exchange_timeout=60, **quiet))
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    assert pair.host.handle_timer(59.0) == []
    assert pair.host.is_open(xid)
    (reset,) = pair.host.handle_timer(60.0)
    assert isinstance(reset, bp.ExchangeReset) and reset.code is bp.ErrorCode.DEADLINE_EXCEEDED


def test_sending_out_of_turn_is_the_callers_error_not_the_peers() -> None:
    pair = Pair()
    s = pair.sandbox
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    s.send_end(xid, 0.0)
    with pytest.raises(bp.LocalProtocolError, match="cannot send end while its send half is done"):
        s.send_end(xid, 0.0)
    assert s.failure is None and s.is_open(xid)


def test_closed_ids_are_remembered_up_to_the_limit_then_forgotten() -> None:
    limits = bp.Limits(initial_window=1000, session_window=1000)
    pair = Pair(sandbox=bp.Config(limits=limits, closed_exchange_memory=2))
    s, h = pair.sandbox, pair.host
    first = pair.completed_download(600)
    pair.completed_download(0)  # two closed ids remembered: the first still holds its bytes
    assert bp.CreditAvailable(0) not in pair.take(h)
    s.consume(first, 600)  # still remembered, so consuming it returns the credit
    pair.pump()
    assert bp.CreditAvailable(0) in pair.take(h)


def test_a_late_frame_for_a_forgotten_exchange_is_dropped_quietly() -> None:
    host, peer = connected(bp.Role.HOST, bp.Config(closed_exchange_memory=1))
    for xid in (1, 3):
        host.receive_data(peer.frame(bp.RequestHead(xid, b"GET", b"/")), 0.0)
        host.receive_data(peer.frame(bp.EndOfBody(xid)), 0.0)
        host.send_response(xid, 204, b"", [], 0.0)
        host.send_end(xid, 0.0)
    host.data_to_send()
    # Exchange 1 is forgotten (the map holds one id): a late head for it is
    # neither a new exchange nor an error.
    assert host.receive_data(peer.frame(bp.RequestHead(1, b"GET", b"/")), 0.0) == []
    assert host.open_exchanges == []
    resets = [r for r in _records(host.data_to_send()) if isinstance(r, bp.Reset)]
    assert resets == []


def _records(data: bytes) -> list[bp.Record]:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(data)
    out = []
    while isinstance(item := decoder.next_frame(), Frame):
        out.append(item.record)
    return out


def test_head_sizes_count_every_byte_the_limit_is_about() -> None:
    headers = ((b"name", b"value"), (b"n", b""))
    assert bp.RequestHead(1, b"POST", b"/path", headers).head_size == (
        8 + 4 + 5 + (4 + 5 + 8) + (1 + 0 + 8)
    )
    assert bp.ResponseHead(1, 200, b"OK", headers).head_size == 4 + 2 + (4 + 5 + 8) + (1 + 8)


def test_wire_constants_are_the_specified_ones() -> None:
    assert bp.Ack(2**64 - 1).seq == 2**64 - 1
    with pytest.raises(bp.LocalProtocolError):
        bp.Ack(2**64)
    assert bp.Window(1, 2**32 - 1).increment == 2**32 - 1
    with pytest.raises(bp.LocalProtocolError):
        bp.Window(1, 2**32)
    assert FRAME_OVERHEAD == 20
    config = bp.Config()
    assert (config.max_retained_bytes, config.max_unacknowledged_bytes) == (32 << 20, 64 << 20)


def test_an_armored_batch_of_exactly_the_limit_is_read() -> None:
    decoder = ArmorDecoder(max_batch_bytes=10)
    decoder.receive_data(armor(b"0123456789") + armor(b"0123456789X"))
    assert decoder.next_batch() == b"0123456789"
    with pytest.raises(bp.RemoteProtocolError, match="limit"):
        decoder.next_batch()


def test_an_odd_window_is_returned_at_its_rounded_down_half() -> None:
    from bridgeproto._credit import Credit

    c = Credit(can_send=0, window=999)
    c.take(999)
    c.release(499)  # 999 // 2: due now (999 / 2 would wait for one more byte)
    assert c.due() == 499


def test_a_gap_names_the_sequence_number_expected_and_the_one_that_came() -> None:
    host, peer = connected(bp.Role.HOST)
    peer.frame(bp.RequestHead(1, b"GET", b"/"))  # sequence 1, lost
    (broken,) = host.receive_data(peer.frame(bp.RequestHead(3, b"GET", b"/")), 0.0)
    assert broken == bp.LinkBroken("frames were lost: expected sequence number 1, got 2")


def test_a_long_reason_is_clipped_to_fit_a_record() -> None:
    pair = Pair()
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    pair.host.abort("x" * 5000, bp.ErrorCode.INTERNAL_ERROR)  # a local reason of any length
    wire = pair.host.data_to_send()
    (goaway,) = [r for r in _records(wire) if isinstance(r, bp.GoAway)]
    assert len(goaway.reason) == 300 and goaway.reason.endswith("...")
    events = pair.sandbox.receive_data(wire, 0.0)
    assert isinstance(events[-1], bp.SessionFailed) and not pair.sandbox.is_open(xid)


def test_bytes_of_a_closed_exchange_may_be_consumed_in_parts() -> None:
    limits = bp.Limits(initial_window=1000, session_window=1000)
    pair = Pair(sandbox=bp.Config(limits=limits))
    s, h = pair.sandbox, pair.host
    xid = pair.completed_download(800)
    s.consume(xid, 300)  # 300 of 800: under half the session window, nothing returned yet
    pair.pump()
    assert bp.CreditAvailable(0) not in pair.take(h)
    s.consume(xid, 300)  # 600: returned
    s.consume(xid, 10_000)  # the last 200, and no more than that
    pair.pump()
    again = s.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    # 1000 - 800 sent + 600 returned; the last 200 wait for half a window.
    assert h.send_credit(again) == 800


def test_limits_are_checked_at_their_bounds() -> None:
    with pytest.raises(bp.LocalProtocolError, match="at least 1"):
        bp.Limits(max_exchanges=0)
    with pytest.raises(bp.LocalProtocolError, match="out of range"):
        bp.Limits(max_frame_size=2**32)
    assert bp.Limits(max_exchanges=1).max_exchanges == 1


def test_a_header_count_larger_than_the_payload_fails_fast() -> None:
    from bridgeproto._codec import HEADER, MAGIC, decode_payload

    payload = bytes(8) + b"\x00\x00\x00\x03GET" + b"\x00\x00\x00\x01/" + b"\xff\xff\xff\xff"
    with pytest.raises(bp.RemoteProtocolError, match="declares 4294967295 headers but has only 0"):
        decode_payload(2, bp.PROTOCOL_VERSION, 1, payload)
    assert HEADER.size == 16 and MAGIC == b"BP"


def test_exchanges_full_past_the_small_int_range_and_past_the_retention_mark() -> None:
    pair = Pair(host=bp.Config(limits=bp.Limits(max_exchanges=300)))
    s = pair.sandbox
    for _ in range(300):
        s.start_exchange(b"GET", b"/", [], 0.0)
        pair.pump()
    assert s.exchanges_full
    retained = Pair(sandbox=bp.Config(max_retained_bytes=100))
    xid = retained.sandbox.start_exchange(b"POST", b"/", [], 0.0)
    retained.sandbox.send_data(xid, b"x" * 1000, 0.0)  # one frame far past the mark
    assert retained.sandbox.retained_bytes > 100 and retained.sandbox.exchanges_full


def test_a_timer_handled_late_still_fires() -> None:
    quiet = {"idle_timeout": None, "ping_interval": None, "peer_timeout": None}
    pair = Pair(host=bp.Config(exchange_timeout=60, **quiet))
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    (reset,) = pair.host.handle_timer(75.5)  # the loop woke late: the deadline still counts
    assert isinstance(reset, bp.ExchangeReset) and reset.exchange_id == xid


def test_sequence_numbers_stop_at_two_to_the_64() -> None:
    assert encode_frame(bp.EndOfBody(1), 2**64 - 1)
    with pytest.raises(bp.LocalProtocolError, match="needs a sequence number"):
        encode_frame(bp.EndOfBody(1), 2**64)


def test_decoder_messages_count_what_is_wrong() -> None:
    from bridgeproto._codec import decode_payload

    head = bytes(8) + b"\x00\x00\x00\x03GET" + b"\x00\x00\x00\x01/"
    with pytest.raises(bp.RemoteProtocolError, match="declares 3 headers but has only 16"):
        decode_payload(2, bp.PROTOCOL_VERSION, 1, head + b"\x00\x00\x00\x03" + bytes(16))
    with pytest.raises(bp.RemoteProtocolError, match="END_OF_BODY payload has 2 trailing bytes"):
        decode_payload(5, bp.PROTOCOL_VERSION, 1, b"\x00\x00\x00\x01xx")


def test_armor_messages_count_what_is_wrong() -> None:
    cut = ArmorDecoder(1 << 10)
    cut.receive_data(armor(b"0123456789")[:30])
    cut.receive_data("")
    with pytest.raises(bp.CorruptFrameError, match=r"inside an armored batch \(30 chars\)"):
        cut.next_batch()
    line = armor(b"abc")
    bad = ArmorDecoder(1 << 10)
    bad.receive_data(line[:21] + "0" + line[22:])  # a digit where the second ':' belongs
    with pytest.raises(bp.CorruptFrameError, match="malformed armor header"):
        bad.next_batch()


def test_header_names_and_values_must_both_be_bytes() -> None:
    for header in (("name", b"v"), (b"name", "v")):
        with pytest.raises(bp.LocalProtocolError):
            bp.RequestHead(1, b"GET", b"/", (header,))  # type: ignore[arg-type]


def test_armor_errors_name_the_text_offset() -> None:
    decoder = ArmorDecoder(1 << 10)
    first = armor(b"fine")
    decoder.receive_data(first + "XYZ not armor\n")
    assert decoder.next_batch() == b"fine"
    with pytest.raises(bp.CorruptFrameError, match=rf"at text offset {len(first)}\)"):
        decoder.next_batch()


def test_an_idle_timer_handled_late_still_fires() -> None:
    quiet = {"ping_interval": None, "peer_timeout": None}
    pair = Pair(host=bp.Config(idle_timeout=10, **quiet))
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    assert pair.host.handle_timer(9.9) == []
    (reset,) = pair.host.handle_timer(12.5)
    assert isinstance(reset, bp.ExchangeReset) and reset.exchange_id == xid
    assert reset.code is bp.ErrorCode.IDLE_TIMEOUT


def test_zero_is_not_a_positive_time() -> None:
    with pytest.raises(bp.LocalProtocolError, match="shutdown_grace must be positive"):
        bp.Config(shutdown_grace=0)
    with pytest.raises(bp.LocalProtocolError, match="idle_timeout must be positive or None"):
        bp.Config(idle_timeout=0)


def test_the_smallest_frame_size_and_time_are_accepted() -> None:
    assert bp.Limits(max_frame_size=1024, max_header_bytes=0).max_frame_size == 1024
    with pytest.raises(bp.LocalProtocolError, match="below the minimum of 1024"):
        bp.Limits(max_frame_size=1023, max_header_bytes=0)
    assert bp.Config(idle_timeout=0.5).idle_timeout == 0.5


def test_a_peer_timer_handled_late_still_fails_the_session() -> None:
    pair = Pair(sandbox=bp.Config(ping_interval=None, peer_timeout=30))
    assert pair.sandbox.handle_timer(29.0) == []
    (failed,) = pair.sandbox.handle_timer(31.5)
    assert isinstance(failed, bp.SessionFailed) and failed.code is bp.ErrorCode.PEER_UNRESPONSIVE


def test_new_exchanges_wait_once_retention_reaches_the_mark_exactly() -> None:
    probe = Pair()
    probe.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    one_head = probe.sandbox.retained_bytes
    pair = Pair(sandbox=bp.Config(max_retained_bytes=one_head))
    pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    assert pair.sandbox.retained_bytes == one_head
    with pytest.raises(bp.LocalProtocolError, match="await the peer's acknowledgement"):
        pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)


def test_the_host_admits_up_to_its_limit_past_the_small_int_range() -> None:
    host, peer = connected(bp.Role.HOST, bp.Config(limits=bp.Limits(max_exchanges=300)))
    frames = b"".join(peer.frame(bp.RequestHead(2 * i + 1, b"GET", b"/")) for i in range(301))
    events = host.receive_data(frames, 0.0)
    assert len([e for e in events if isinstance(e, bp.RequestHead)]) == 300
    refused = [r for r in _records(host.data_to_send()) if isinstance(r, bp.Reset)]
    assert [(r.exchange_id, r.code) for r in refused] == [(601, bp.ErrorCode.TOO_MANY_EXCHANGES)]


def test_a_refused_exchange_holds_no_credit() -> None:
    host, peer = connected(
        bp.Role.HOST,
        bp.Config(limits=bp.Limits(max_exchanges=1, session_window=1), closed_exchange_memory=1),
    )
    host.receive_data(peer.frame(bp.RequestHead(1, b"GET", b"/")), 0.0)
    host.receive_data(peer.frame(bp.RequestHead(3, b"GET", b"/")), 0.0)  # refused: one at a time
    host.receive_data(peer.frame(bp.EndOfBody(1)), 0.0)
    host.send_response(1, 204, b"", [], 0.0)
    host.send_end(1, 0.0)  # exchange 1 closes; refused 3 is forgotten
    assert [r for r in _records(host.data_to_send()) if isinstance(r, bp.Window)] == []


# ------------------------------------------------ survivors of the second mutation sample


def test_a_percent_sign_encoded_once_more_is_unsafe_even_around_dot_segments() -> None:
    # %252e decodes to %2e: an upstream that decodes again would see "..".
    refusal = check_target(b"GET", b"/rollout/k1/%252e%252e/k2", HttpPolicy(["/rollout/k1"]))
    assert refusal is not None and refusal.cause == "unsafe-path", refusal
    assert "percent-encoded twice" in refusal.message and refusal.status == 400


def test_a_spent_decoder_fed_more_bytes_raises_its_crc_error_again() -> None:
    wire = encode_frame(bp.Data(1, b"abc"), 1)
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.receive_data(wire[:-1] + bytes([wire[-1] ^ 1]))
    with pytest.raises(bp.CorruptFrameError, match="CRC mismatch") as first:
        decoder.next_frame()
    decoder.receive_data(wire)  # the buffer is still growable: nothing holds a view of it
    with pytest.raises(bp.CorruptFrameError) as again:
        decoder.next_frame()
    assert again.value is first.value


def test_resume_on_a_failed_session_is_refused() -> None:
    pair = Pair(sandbox=bp.Config(ping_interval=None, peer_timeout=30))
    (failed,) = pair.sandbox.handle_timer(31.0)
    assert isinstance(failed, bp.SessionFailed)
    with pytest.raises(bp.LocalProtocolError, match="the session failed earlier"):
        pair.sandbox.resume(32.0)


def test_the_sandbox_side_refuses_to_consume_for_exchange_zero() -> None:
    pair = Pair()
    with pytest.raises(bp.LocalProtocolError, match="exchange 0 is unknown"):
        pair.sandbox.consume(0, 1)


def test_the_room_rule_accepts_exactly_1024_bytes_and_not_one_less() -> None:
    # max_header_bytes + 1024 may equal max_frame_size, not exceed it.
    assert bp.Limits(max_frame_size=4096, max_header_bytes=3072).max_header_bytes == 3072
    with pytest.raises(bp.LocalProtocolError, match="must leave 1024 bytes of room"):
        bp.Limits(max_frame_size=4096, max_header_bytes=3073)


def test_the_sentinels_print_as_their_names() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(END_OF_INPUT) == "END_OF_INPUT"
    assert str([NEED_DATA]) == "[NEED_DATA]"


@pytest.mark.parametrize(
    "field", ["max_body_bytes", "closed_exchange_memory", "max_retained_bytes",
              "max_unacknowledged_bytes"],
)  # fmt: skip
def test_config_refuses_sizes_that_are_not_positive(field: str) -> None:
    with pytest.raises(bp.LocalProtocolError, match=f"{field} must be positive"):
        bp.Config(**{field: 0})
