"""The connection state machine, one behaviour at a time."""

from __future__ import annotations

import binascii
import struct

import pytest

import bridgeproto as bp
from bridgeproto.wire import NEED_DATA, FrameDecoder
from pair import SID, Pair, RawPeer, connected

HEADERS = [(b"content-type", b"application/json")]


def kinds(events: list[bp.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def body(events: list[bp.Event], exchange_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, bp.Data) and e.exchange_id == exchange_id
    )


def complete_exchange(pair: Pair, request: bytes, response: bytes) -> int:
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"POST", b"/v1/chat", HEADERS, pair.now)
    s.send_data(xid, request, pair.now)
    s.send_end(xid, pair.now)
    pair.pump()
    h.consume(xid, len(request))
    h.send_response(xid, 200, b"OK", [], pair.now)
    h.send_data(xid, response, pair.now)
    h.send_end(xid, pair.now)
    pair.pump()
    s.consume(xid, len(response))
    return xid


# ------------------------------------------------------------------ handshake


def test_handshake_reports_the_peer_and_opens_the_session() -> None:
    pair = Pair(handshake=False)
    with pytest.raises(bp.LocalProtocolError, match="before the handshake completes"):
        pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    (event,) = pair.take(pair.sandbox)
    assert isinstance(event, bp.HandshakeComplete) and event.peer.role is bp.Role.HOST
    assert pair.sandbox.state is bp.SessionState.OPEN
    assert pair.host.state is bp.SessionState.OPEN


def test_version_mismatch_names_both_versions_and_tells_the_peer() -> None:
    conn = bp.Connection(bp.Role.HOST, SID)
    conn.start(0.0)
    events = conn.receive_data(RawPeer(bp.Role.SANDBOX).hello(version=3), 0.0)
    (failed,) = events
    assert isinstance(failed, bp.SessionFailed) and not failed.by_peer
    assert "peer speaks bridgeproto wire version 3 and this side speaks version 2" in failed.reason
    # The peer is told why: a GoAway carrying the error follows our hello.
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(conn.data_to_send())
    records = [f.record for f in iter(decoder.next_frame, NEED_DATA)]  # type: ignore[union-attr]
    assert isinstance(records[-1], bp.GoAway) and records[-1].code is bp.ErrorCode.PROTOCOL_ERROR
    with pytest.raises(bp.LocalProtocolError, match=r"session failed earlier .*version 3"):
        conn.receive_data(b"", 1.0)
    assert conn.next_deadline() is None and conn.handle_timer(100.0) == []


@pytest.mark.parametrize(
    ("peer_role", "session_id", "message"),
    [
        (bp.Role.HOST, SID, "both sides claim the host role"),
        (bp.Role.SANDBOX, bytes(16), "session id mismatch"),
        (bp.Role.SANDBOX, b"\xff" * 16, "session id mismatch"),
    ],
)
def test_wrong_peer_fails_the_handshake(
    peer_role: bp.Role, session_id: bytes, message: str
) -> None:
    conn = bp.Connection(bp.Role.HOST, SID)
    conn.start(0.0)
    (failed,) = conn.receive_data(RawPeer(peer_role).hello(session_id=session_id), 0.0)
    assert isinstance(failed, bp.SessionFailed) and message in failed.reason


def test_frames_before_hello_fail_the_session() -> None:
    conn = bp.Connection(bp.Role.HOST, SID)
    conn.start(0.0)
    events = conn.receive_data(RawPeer(bp.Role.SANDBOX).frame(bp.Ping()), 0.0)
    assert isinstance(events[-1], bp.SessionFailed) and "before HELLO" in events[-1].reason


def test_failure_of_the_peer_reaches_this_side() -> None:
    pair = Pair()
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    pair.take(pair.host)
    # The host receives a frame that acknowledges something never sent.
    events = pair.host.receive_data(RawPeer(bp.Role.SANDBOX).frame(bp.Ack(99)), 0.0)
    assert kinds(events) == ["ExchangeReset", "SessionFailed"]
    assert "acknowledged sequence number 99" in events[-1].reason  # type: ignore[union-attr]
    pair.deliver(pair.host)
    events = pair.take(pair.sandbox)
    assert kinds(events) == ["ExchangeReset", "SessionFailed"]
    assert events[0] == bp.ExchangeReset(xid, bp.ErrorCode.PROTOCOL_ERROR, events[0].reason, True)  # type: ignore[union-attr]
    assert events[1].by_peer  # type: ignore[union-attr]
    with pytest.raises(bp.LocalProtocolError, match="failed earlier"):
        pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)


def test_handshake_timeout() -> None:
    conn = bp.Connection(bp.Role.SANDBOX, SID, bp.Config(handshake_timeout=5))
    conn.start(10.0)
    assert conn.next_deadline() == 15.0
    assert conn.handle_timer(14.9) == []
    (failed,) = conn.handle_timer(15.0)
    assert (
        isinstance(failed, bp.SessionFailed)
        and "no hello from the peer within 5 s" in failed.reason
        and not failed.by_peer
    )


# ------------------------------------------------------------------ exchanges


def test_an_exchange_streams_both_ways_and_closes_on_both_sides() -> None:
    pair = Pair()
    xid = complete_exchange(pair, b'{"q": 1}', b"data: hi\n\n")
    host_events = pair.take(pair.host)
    assert host_events[0] == bp.RequestHead(xid, b"POST", b"/v1/chat", HEADERS)
    assert body(host_events, xid) == b'{"q": 1}'
    sandbox_events = pair.take(pair.sandbox)
    assert kinds(sandbox_events) == ["ResponseHead", "Data", "EndOfBody"]
    assert body(sandbox_events, xid) == b"data: hi\n\n"
    assert pair.sandbox.open_exchanges == [] and pair.host.open_exchanges == []
    assert pair.sandbox.retained_bytes == 0 and pair.host.retained_bytes == 0


def test_exchanges_are_multiplexed_and_independent() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    a = s.start_exchange(b"GET", b"/a", [], 0.0)
    b = s.start_exchange(b"GET", b"/b", [], 0.0)
    assert (a, b) == (1, 3)
    s.send_end(a, 0.0)
    s.send_end(b, 0.0)
    pair.pump()
    h.send_response(b, 200, b"", [], 0.0)
    h.send_response(a, 404, b"", [], 0.0)
    h.send_data(a, b"A", 0.0)
    h.send_data(b, b"B", 0.0)
    s.reset(a, bp.ErrorCode.CANCELLED, "client went away")
    h.send_end(b, 0.0)
    pair.pump()
    events = pair.take(s)
    assert body(events, b) == b"B" and body(events, a) == b""  # late data for a dropped
    assert kinds(pair.take(h))[-1] == "ExchangeReset"
    assert h.open_exchanges == [] and s.open_exchanges == []


def test_informational_response_then_final() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"PUT", b"/up", [(b"expect", b"100-continue")], 0.0)
    pair.pump()
    h.send_response(xid, 100, b"Continue", [], 0.0)
    pair.pump()
    s.send_data(xid, b"payload", 0.0)
    s.send_end(xid, 0.0)
    h.send_response(xid, 201, b"Created", [], 0.0)
    h.send_end(xid, 0.0)
    pair.pump()
    heads = [e for e in pair.take(s) if isinstance(e, bp.ResponseHead)]
    assert [hd.status for hd in heads] == [100, 201]


def test_cancel_from_the_host_reaches_the_sandbox() -> None:
    pair = Pair()
    xid = pair.sandbox.start_exchange(b"GET", b"/slow", [], 0.0)
    pair.pump()
    pair.host.reset(xid, bp.ErrorCode.UPSTREAM_FAILED, "upstream closed the connection")
    pair.host.reset(xid, bp.ErrorCode.UPSTREAM_FAILED)  # a second reset does nothing
    pair.pump()
    (event,) = pair.take(pair.sandbox)
    assert event == bp.ExchangeReset(
        xid, bp.ErrorCode.UPSTREAM_FAILED, "upstream closed the connection", by_peer=True
    )
    assert bp.ErrorCode.UPSTREAM_FAILED.http_status == 502


def test_misuse_of_the_api_is_a_local_error() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    with pytest.raises(bp.LocalProtocolError, match="route 0 was never declared"):
        h.start_exchange(b"GET", b"/", [], 0.0)
    with pytest.raises(bp.LocalProtocolError, match="only the host side declares"):
        s.declare_route(1, 80)
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    with pytest.raises(bp.LocalProtocolError, match="was started by this side"):
        s.send_response(xid, 200, b"", [], 0.0)
    s.send_end(xid, 0.0)
    with pytest.raises(bp.LocalProtocolError, match="cannot send data while its send half is done"):
        s.send_data(xid, b"late", 0.0)
    with pytest.raises(bp.LocalProtocolError, match="exchange 99 does not exist"):
        s.send_end(99, 0.0)
    with pytest.raises(bp.LocalProtocolError, match="has only 0 unconsumed"):
        s.consume(xid, 1)
    with pytest.raises(bp.LocalProtocolError, match="negative"):
        s.consume(xid, -1)
    with pytest.raises(bp.LocalProtocolError, match="unknown"):
        s.consume(77, 1)
    with pytest.raises(bp.LocalProtocolError, match="already called"):
        s.start(0.0)
    with pytest.raises(bp.LocalProtocolError, match="is not a token"):
        s.start_exchange(b"BAD METHOD", b"/", [], 0.0)
    with pytest.raises(bp.LocalProtocolError, match="session_id must be 16 bytes"):
        bp.Connection(bp.Role.HOST, b"short")
    fresh = bp.Connection(bp.Role.HOST, SID)
    for call in (
        lambda: fresh.resume(0.0),
        lambda: fresh.close(0.0),
        lambda: fresh.receive_data(b"", 0.0),
    ):
        with pytest.raises(bp.LocalProtocolError, match="before start"):
            call()
    pair.pump()
    h.send_response(xid, 204, b"", [], 0.0)
    h.send_end(xid, 0.0)
    with pytest.raises(bp.LocalProtocolError, match="has already ended"):
        h.send_end(xid, 0.0)


def test_peer_breaking_one_exchange_resets_only_that_exchange() -> None:
    conn, peer = connected(bp.Role.HOST)
    good = peer.frame(bp.RequestHead(1, b"GET", b"/good"))
    bad = peer.frame(bp.RequestHead(3, b"GET", b"/bad")) + peer.frame(bp.EndOfBody(3))
    bad += peer.frame(bp.Data(3, b"after the end"))
    events = conn.receive_data(good + bad, 1.0)
    assert kinds(events) == ["RequestHead", "RequestHead", "EndOfBody", "ExchangeReset"]
    reset = events[-1]
    assert isinstance(reset, bp.ExchangeReset) and reset.exchange_id == 3
    assert "cannot receive data while its receive half is done" in reset.reason
    assert conn.open_exchanges == [1] and conn.state is bp.SessionState.OPEN
    # Anything more for the reset exchange is dropped quietly.
    assert (
        conn.receive_data(peer.frame(bp.Data(3, b"more")) + peer.frame(bp.EndOfBody(3)), 1.0) == []
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (bp.Data(5, b"x"), "which has no request head"),
        (bp.EndOfBody(5), "which has no request head"),
        (bp.RequestHead(2, b"GET", b"/"), "exchange 2 was never opened"),
        (bp.ResponseHead(1, 200), "ResponseHead on exchange 1, which the peer started"),
    ],
)
def test_records_for_exchanges_that_cannot_exist_are_refused(
    record: bp.Record, message: str
) -> None:
    conn, peer = connected(bp.Role.HOST)
    conn.receive_data(peer.frame(bp.RequestHead(1, b"GET", b"/")), 1.0)
    events = conn.receive_data(peer.frame(record), 1.0)
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(conn.data_to_send())
    sent = [f.record for f in iter(decoder.next_frame, NEED_DATA)]  # type: ignore[union-attr]
    resets = [r for r in sent if isinstance(r, bp.Reset)]
    assert len(resets) == 1 and message in resets[0].reason
    assert resets[0].code is bp.ErrorCode.PROTOCOL_ERROR
    assert conn.state is bp.SessionState.OPEN
    # An event only when the exchange was one the application knew about.
    assert kinds(events) == (["ExchangeReset"] if record.exchange_id == 1 else [])  # type: ignore[union-attr]


def _sent_records(conn: bp.Connection) -> list[bp.Record]:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(conn.data_to_send())
    return [f.record for f in iter(decoder.next_frame, NEED_DATA)]  # type: ignore[union-attr]


def test_a_release_1_peer_fails_at_the_handshake_naming_both_versions() -> None:
    # The hello a wire version 1 peer sends, byte for byte as release 1's spec lays it out.
    payload = struct.pack(">IB16sIIIII", 1, 1, SID, 1 << 20, 4 << 20, 16 << 20, 256, 64 << 10)
    header = b"BP" + struct.pack(">BBIQ", 1, 1, len(payload), 0)
    v1_hello = header + payload + struct.pack(">I", binascii.crc32(header + payload))
    for role in (bp.Role.HOST, bp.Role.SANDBOX):
        conn = bp.Connection(role, SID)
        conn.start(0.0)
        (failed,) = conn.receive_data(v1_hello, 0.0)
        assert isinstance(failed, bp.SessionFailed)
        assert "the peer speaks bridgeproto wire version 1 and this side speaks version 2" in (
            failed.reason
        )


def test_host_opened_exchanges_need_a_declared_route() -> None:
    conn, peer = connected(bp.Role.SANDBOX)
    assert conn.receive_data(peer.frame(bp.RequestHead(2, b"GET", b"/", route=5)), 0.0) == []
    (reset,) = [r for r in _sent_records(conn) if isinstance(r, bp.Reset)]
    assert reset.exchange_id == 2 and reset.code is bp.ErrorCode.FORBIDDEN
    assert "route 5 was never declared" in reset.reason
    # A reset for such an id is not answered with another reset.
    assert conn.receive_data(peer.frame(bp.Reset(4, bp.ErrorCode.CANCELLED)), 0.0) == []
    assert b"Reset" not in conn.data_to_send()
    # Declared, the same request is admitted, and the sandbox side answers it.
    conn.receive_data(peer.frame(bp.Route(5, 8080)), 0.0)
    assert conn.routes == {5: 8080}
    events = conn.receive_data(peer.frame(bp.RequestHead(6, b"GET", b"/", route=5)), 0.0)
    assert events == [bp.RequestHead(6, b"GET", b"/", route=5)]
    conn.send_response(6, 200, b"", [], 0.0)
    assert bp.ResponseHead(6, 200) in _sent_records(conn)


def test_routes_are_declared_once_each_and_only_by_the_host() -> None:
    conn, peer = connected(bp.Role.SANDBOX)
    conn.receive_data(peer.frame(bp.Route(1, 80)) + peer.frame(bp.Route(1, 80)), 0.0)
    (failed,) = conn.receive_data(peer.frame(bp.Route(1, 81)), 0.0)
    assert isinstance(failed, bp.SessionFailed)
    assert "route 1 was declared for port 80 and again for 81" in failed.reason
    host, sandbox_peer = connected(bp.Role.HOST)
    (failed,) = host.receive_data(sandbox_peer.frame(bp.Route(1, 80)), 0.0)
    assert isinstance(failed, bp.SessionFailed) and "only sent to the sandbox side" in failed.reason
    fresh = bp.Connection(bp.Role.HOST, SID)
    with pytest.raises(bp.LocalProtocolError, match="before start"):
        fresh.declare_route(1, 80)
    pair = Pair()
    pair.host.declare_route(3, 9000)
    pair.host.declare_route(3, 9000)  # the same again: nothing new
    with pytest.raises(bp.LocalProtocolError, match="already leads to port 9000"):
        pair.host.declare_route(3, 9001)
    with pytest.raises(bp.LocalProtocolError, match="out of range"):
        pair.host.declare_route(4, 70000)


def test_exchanges_both_ways_on_one_session() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    h.declare_route(1, 8080)
    inward = h.start_exchange(b"POST", b"/in", [], 0.0, route=1)
    outward = s.start_exchange(b"POST", b"/out", [], 0.0, route=3)
    assert inward % 2 == 0 and outward % 2 == 1
    h.send_end(inward, 0.0)
    s.send_end(outward, 0.0)
    pair.pump()
    assert s.routes == {1: 8080}
    sandbox_got = pair.take(pair.sandbox)
    host_got = pair.take(pair.host)
    assert bp.RequestHead(inward, b"POST", b"/in", route=1) in sandbox_got
    assert bp.RequestHead(outward, b"POST", b"/out", route=3) in host_got
    s.send_response(inward, 201, b"", [], 0.0)
    s.send_end(inward, 0.0)
    h.send_response(outward, 202, b"", [], 0.0)
    h.send_end(outward, 0.0)
    pair.pump()
    assert bp.ResponseHead(inward, 201) in pair.take(pair.host)
    assert bp.ResponseHead(outward, 202) in pair.take(pair.sandbox)
    assert s.open_exchanges == h.open_exchanges == []


# ------------------------------------------------------------------ limits


def test_exchange_count_limit_is_enforced_on_both_sides() -> None:
    pair = Pair(host=bp.Config(limits=bp.Limits(max_exchanges=1)))
    pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    with pytest.raises(bp.LocalProtocolError, match="the peer allows 1") as err:
        pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    assert err.value.status_hint == 503
    # A peer that ignores the limit gets the extra exchange refused.
    conn, peer = connected(bp.Role.HOST, bp.Config(limits=bp.Limits(max_exchanges=1)))
    conn.receive_data(peer.frame(bp.RequestHead(1, b"GET", b"/")), 0.0)
    assert conn.receive_data(peer.frame(bp.RequestHead(3, b"GET", b"/")), 0.0) == []
    assert b"exchanges are already in flight" in conn.data_to_send()
    assert conn.open_exchanges == [1]


def test_header_limit_is_enforced_on_both_sides() -> None:
    small = bp.Config(limits=bp.Limits(max_frame_size=4096, max_header_bytes=1024))
    pair = Pair(host=small)
    big = [(b"x-big", b"v" * 2000)]
    with pytest.raises(bp.LocalProtocolError, match="the peer accepts at most 1024") as err:
        pair.sandbox.start_exchange(b"GET", b"/", big, 0.0)
    assert err.value.status_hint == 431
    conn, peer = connected(bp.Role.HOST, small)
    conn.receive_data(peer.frame(bp.RequestHead(1, b"GET", b"/", big)), 0.0)
    out = conn.data_to_send()
    assert b"request head is" in out and conn.open_exchanges == []
    # The response side is limited the same way.
    sandbox, host_peer = connected(bp.Role.SANDBOX, small)
    xid = sandbox.start_exchange(b"GET", b"/", [], 0.0)
    (event,) = sandbox.receive_data(host_peer.frame(bp.ResponseHead(xid, 200, b"", big)), 0.0)
    assert isinstance(event, bp.ExchangeReset) and event.code is bp.ErrorCode.HEADERS_TOO_LARGE
    assert event.code.http_status == 431
    # And the host side cannot send a head its peer would refuse.
    pair.pump()
    small_sandbox = Pair(sandbox=small)
    xid = small_sandbox.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    small_sandbox.pump()
    with pytest.raises(bp.LocalProtocolError, match="accepts at most 1024"):
        small_sandbox.host.send_response(xid, 200, b"", big, 0.0)


def test_body_limit_resets_with_413() -> None:
    pair = Pair(host=bp.Config(max_body_bytes=10))
    xid = pair.sandbox.start_exchange(b"POST", b"/", [], 0.0)
    pair.sandbox.send_data(xid, b"x" * 11, 0.0)
    pair.pump()
    reset = pair.take(pair.sandbox)[-1]
    assert isinstance(reset, bp.ExchangeReset) and reset.code is bp.ErrorCode.BODY_TOO_LARGE
    assert reset.code.http_status == 413 and reset.by_peer
    # The same limit refuses sending a body that is too large.
    limited = Pair(sandbox=bp.Config(max_body_bytes=10))
    xid = limited.sandbox.start_exchange(b"POST", b"/", [], 0.0)
    limited.sandbox.send_data(xid, b"x" * 10, 0.0)
    with pytest.raises(bp.LocalProtocolError, match="would exceed max_body_bytes") as err:
        limited.sandbox.send_data(xid, b"x", 0.0)
    assert err.value.status_hint == 413


# ------------------------------------------------------------------ flow control


def test_credit_limits_the_sender_and_is_returned_as_data_is_consumed() -> None:
    limits = bp.Limits(initial_window=100, session_window=150)
    pair = Pair(host=bp.Config(limits=limits))
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"POST", b"/", [], 0.0)
    assert s.send_credit(xid) == 100
    with pytest.raises(bp.LocalProtocolError, match="exceeds the 100 bytes of credit"):
        s.send_data(xid, b"x" * 101, 0.0)
    s.send_data(xid, b"x" * 100, 0.0)
    assert s.send_credit(xid) == 0
    pair.pump()
    assert body(pair.take(h), xid) == b"x" * 100
    h.consume(xid, 40)  # below half the window: nothing returned yet
    pair.pump()
    assert pair.take(s) == [] and s.send_credit(xid) == 0
    h.consume(xid, 20)
    pair.pump()
    assert pair.take(s) == [bp.CreditAvailable(xid)]
    assert s.send_credit(xid) == 50  # exchange has 60, the session only 50 left
    h.consume(xid, 40)
    pair.pump()
    assert bp.CreditAvailable(0) in pair.take(s)
    assert s.send_credit(xid) == 60


def test_sending_more_than_granted_by_a_broken_peer_is_caught() -> None:
    limits = bp.Limits(initial_window=10, session_window=15)
    conn, peer = connected(bp.Role.HOST, bp.Config(limits=limits))
    events = conn.receive_data(
        peer.frame(bp.RequestHead(1, b"POST", b"/")) + peer.frame(bp.Data(1, b"x" * 11)), 0.0
    )
    assert events[-1] == bp.ExchangeReset(
        1,
        bp.ErrorCode.FLOW_CONTROL_ERROR,
        "11 body bytes arrived with only 10 bytes of credit",
        by_peer=False,
    )
    # The session window is shared: going past it fails the whole session.
    events = conn.receive_data(
        peer.frame(bp.RequestHead(3, b"POST", b"/")) + peer.frame(bp.Data(3, b"y" * 10)), 0.0
    )
    assert isinstance(events[-1], bp.SessionFailed)
    assert events[-1].code is bp.ErrorCode.FLOW_CONTROL_ERROR


def test_oversized_credit_grants_are_refused() -> None:
    conn, peer = connected(bp.Role.SANDBOX)
    xid = conn.start_exchange(b"GET", b"/", [], 0.0)
    events = conn.receive_data(peer.frame(bp.Window(xid, 2**32 - 1)), 0.0)
    assert isinstance(events[0], bp.ExchangeReset)
    assert events[0].code is bp.ErrorCode.FLOW_CONTROL_ERROR
    assert conn.receive_data(peer.frame(bp.Window(xid, 5)), 0.0) == []  # ended: ignored
    conn.data_to_send()
    # ... but a WINDOW for an id never opened is answered with a RESET.
    assert conn.receive_data(peer.frame(bp.Window(xid + 100, 5)), 0.0) == []
    answered = _records(conn.data_to_send())
    assert [r for r in answered if isinstance(r, bp.Reset)] == [
        bp.Reset(xid + 100, bp.ErrorCode.PROTOCOL_ERROR,
                 f"WINDOW for exchange {xid + 100}, which was never opened")
    ]  # fmt: skip
    events = conn.receive_data(peer.frame(bp.Window(0, 2**32 - 1)), 0.0)
    assert isinstance(events[-1], bp.SessionFailed)


def test_large_bodies_are_split_to_the_peer_frame_size() -> None:
    limits = bp.Limits(max_frame_size=4096, max_header_bytes=1024)
    pair = Pair(host=bp.Config(limits=limits))
    xid = pair.sandbox.start_exchange(b"POST", b"/", [], 0.0)
    payload = bytes(range(256)) * 100
    pair.sandbox.send_data(xid, payload, 0.0)
    pair.pump()
    chunks = [e for e in pair.take(pair.host) if isinstance(e, bp.Data)]
    assert b"".join(c.data for c in chunks) == payload
    assert max(len(c.data) for c in chunks) == 4096 - 4


def test_reset_releases_unconsumed_bytes_and_late_data_returns_credit() -> None:
    limits = bp.Limits(initial_window=1000, session_window=1000)
    pair = Pair(host=bp.Config(limits=limits))
    s, h = pair.sandbox, pair.host
    a = s.start_exchange(b"POST", b"/", [], 0.0)
    s.send_data(a, b"x" * 600, 0.0)
    pair.pump()
    h.reset(a, bp.ErrorCode.CANCELLED)  # never consumed: released by the reset
    pair.pump()
    b = s.start_exchange(b"POST", b"/", [], 0.0)
    assert s.send_credit(b) == 1000
    pair.pump()
    s.send_data(b, b"y" * 600, 0.0)
    h.reset(b, bp.ErrorCode.CANCELLED)
    pair.pump()  # the reset crosses the data; the host drops it and returns its credit
    c = s.start_exchange(b"POST", b"/", [], 0.0)
    assert s.send_credit(c) == 1000


def test_bytes_of_a_completed_exchange_are_returned_when_consumed() -> None:
    limits = bp.Limits(initial_window=1000, session_window=1000)
    pair = Pair(sandbox=bp.Config(limits=limits))
    s, h = pair.sandbox, pair.host
    xid = pair.completed_download(800)
    assert s.open_exchanges == []
    s.consume(xid, 10_000)  # capped at what was delivered
    pair.pump()
    assert bp.CreditAvailable(0) in pair.take(h)
    again = s.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    assert h.send_credit(again) == 1000  # the whole session window is back


# ------------------------------------------------------------------ timers


def test_idle_timeout_resets_the_exchange_on_both_sides() -> None:
    pair = Pair(sandbox=bp.Config(idle_timeout=30, ping_interval=None))
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    assert pair.sandbox.next_deadline() == 30.0
    pair.advance(29)
    assert pair.take(pair.sandbox) == []
    pair.advance(1)
    (event,) = pair.take(pair.sandbox)
    assert event == bp.ExchangeReset(
        xid, bp.ErrorCode.IDLE_TIMEOUT, "no activity on the exchange for 30 s", by_peer=False
    )
    pair.pump()
    assert pair.take(pair.host)[-1] == bp.ExchangeReset(
        xid, bp.ErrorCode.IDLE_TIMEOUT, "no activity on the exchange for 30 s", by_peer=True
    )
    assert bp.ErrorCode.IDLE_TIMEOUT.http_status == 504


def test_activity_pushes_the_idle_timeout_back() -> None:
    pair = Pair(host=bp.Config(idle_timeout=10, ping_interval=None))
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.sandbox.send_end(xid, 0.0)
    pair.pump()
    pair.host.send_response(xid, 200, b"", [], 0.0)
    for _ in range(5):
        pair.advance(8)
        pair.host.send_data(xid, b": keepalive\n\n", pair.now)
        pair.pump()
    assert pair.host.open_exchanges == [xid]
    assert pair.host.next_deadline() == pair.now + 10


def test_total_deadline() -> None:
    pair = Pair(host=bp.Config(exchange_timeout=60, idle_timeout=None, ping_interval=None))
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    pair.pump()
    pair.host.send_response(xid, 200, b"", [], 0.0)
    for _ in range(5):
        pair.advance(10)
        pair.host.send_data(xid, b"tick", pair.now)
        pair.pump()
    pair.advance(10)
    events = pair.take(pair.host)
    assert events[-1] == bp.ExchangeReset(
        xid, bp.ErrorCode.DEADLINE_EXCEEDED, "exchange took longer than 60 s", by_peer=False
    )


def test_ping_keeps_a_quiet_session_alive_and_a_dead_peer_is_noticed() -> None:
    config = bp.Config(ping_interval=20, peer_timeout=60)
    pair = Pair(sandbox=config, host=bp.Config(ping_interval=None, peer_timeout=None))
    assert pair.sandbox.next_deadline() == 20
    for _ in range(10):  # 200 quiet seconds, answered pings each time
        pair.advance(20)
        pair.pump()
    assert pair.sandbox.state is bp.SessionState.OPEN
    assert pair.take(pair.sandbox) == []
    # Now the host stops answering: its pongs are lost.
    for _ in range(3):
        pair.advance(20)
        pair.host.receive_data(pair.sandbox.data_to_send(), pair.now)
        pair.host.data_to_send()
    (failed,) = pair.take(pair.sandbox)
    assert isinstance(failed, bp.SessionFailed) and failed.code is bp.ErrorCode.PEER_UNRESPONSIVE
    assert "nothing heard from the peer for 60 s" in failed.reason


# ------------------------------------------------------------------ shutdown


def test_graceful_shutdown_drains_then_closes() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    s.send_end(xid, 0.0)
    pair.pump()
    h.close(0.0)
    h.close(0.0)  # idempotent
    pair.pump()
    assert isinstance(pair.take(s)[-1], bp.GoAway)
    with pytest.raises(bp.LocalProtocolError, match="the session is closing") as err:
        s.start_exchange(b"GET", b"/", [], 0.0)
    assert err.value.status_hint == 503
    # The exchange in flight still completes.
    h.send_response(xid, 200, b"", [], 0.0)
    h.send_end(xid, 0.0)
    pair.pump()
    assert pair.take(s)[-1] == bp.SessionClosed(forced=False)
    assert pair.take(h)[-1] == bp.SessionClosed(forced=False)
    assert s.state is h.state is bp.SessionState.CLOSED
    assert s.next_deadline() is None
    # A closed side still reads, so it can acknowledge and refuse late arrivals.
    late = RawPeer(bp.Role.SANDBOX)
    late.seq = 100  # past everything the host has seen
    assert h.receive_data(late.frame(bp.RequestHead(101, b"GET", b"/late"), seq=4), 1.0) == []
    assert b"shutting down" in h.data_to_send()


def test_exchanges_the_peer_never_took_are_refused_at_goaway() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    taken = s.start_exchange(b"GET", b"/taken", [], 0.0)
    pair.pump()
    untaken = s.start_exchange(b"POST", b"/untaken", [], 0.0)
    h.close(0.0)  # crosses the request head for `untaken` on the wire
    pair.deliver(h)
    refused = pair.take(s)
    assert refused[0] == bp.ExchangeReset(untaken, bp.ErrorCode.REFUSED, refused[0].reason, True)  # type: ignore[union-attr]
    assert s.open_exchanges == [taken]
    pair.pump()
    # The host refuses the head when it arrives; the sandbox drops that reset quietly.
    assert kinds(pair.take(s)) == []
    assert h.open_exchanges == [taken]


def test_grace_period_bounds_the_shutdown() -> None:
    pair = Pair(host=bp.Config(shutdown_grace=3, ping_interval=None))
    xid = pair.sandbox.start_exchange(b"GET", b"/stream", [], 0.0)
    pair.pump()
    pair.take(pair.host)
    pair.host.close(0.0)
    pair.pump()
    assert isinstance(pair.take(pair.host)[-1], bp.GoAway)  # the sandbox's answer
    assert pair.host.next_deadline() == 3.0
    pair.advance(3)
    events = pair.take(pair.host)
    assert kinds(events) == ["ExchangeReset", "SessionClosed"]
    assert events[0].code is bp.ErrorCode.SHUTTING_DOWN  # type: ignore[union-attr]
    assert events[1] == bp.SessionClosed(forced=True)
    pair.pump()
    assert bp.ExchangeReset(xid, bp.ErrorCode.SHUTTING_DOWN, events[0].reason, True) in pair.take(  # type: ignore[union-attr]
        pair.sandbox
    )


def test_a_close_may_give_its_own_grace_and_only_bring_the_end_closer() -> None:
    pair = Pair(host=bp.Config(shutdown_grace=30, ping_interval=None))
    xid = pair.sandbox.start_exchange(b"GET", b"/ws", [], 0.0)
    pair.pump()
    pair.host.close(0.0, grace=5)
    assert pair.host.next_deadline() == 5.0  # not the config's 30
    pair.host.close(1.0, grace=1)  # closer: taken
    assert pair.host.next_deadline() == 2.0
    pair.host.close(1.5)  # the config's 30 s from now: later, so ignored
    assert pair.host.next_deadline() == 2.0
    pair.advance(2)
    assert kinds(pair.take(pair.host))[-2:] == ["ExchangeReset", "SessionClosed"]
    pair.pump()
    assert any(
        isinstance(e, bp.ExchangeReset) and e.exchange_id == xid for e in pair.take(pair.sandbox)
    )


def test_goaway_with_an_error_fails_the_session() -> None:
    conn, peer = connected(bp.Role.SANDBOX)
    conn.start_exchange(b"GET", b"/", [], 0.0)
    events = conn.receive_data(
        peer.frame(bp.GoAway(0, bp.ErrorCode.INTERNAL_ERROR, "host is going down")), 0.0
    )
    assert kinds(events) == ["ExchangeReset", "SessionFailed"]
    assert events[-1] == bp.SessionFailed(
        bp.ErrorCode.INTERNAL_ERROR, "the peer ended the session: host is going down", True
    )
    conn.close(0.0)  # closing a failed session does nothing


# ------------------------------------------------------------------ delivery


def test_lost_bytes_are_resent_after_resume_and_delivered_once() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"POST", b"/once", [], 0.0)
    s.send_data(xid, b"non-idempotent", 0.0)
    s.send_end(xid, 0.0)
    lost = s.data_to_send()  # the link dies with these bytes in it
    assert lost and s.retained_bytes > 0
    s.resume(0.0)
    h.resume(0.0)
    pair.pump()
    events = pair.take(h)
    assert kinds(events) == ["RequestHead", "Data", "EndOfBody"]
    # A duplicate of the lost batch arriving late changes nothing.
    assert h.receive_data(lost, 0.0) == []
    assert s.retained_bytes == 0


def test_a_gap_breaks_the_link_not_the_session() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    a = s.start_exchange(b"GET", b"/a", [], 0.0)
    first = s.data_to_send()
    s.send_end(a, 0.0)
    second = s.data_to_send()
    events = h.receive_data(second, 0.0)  # `first` was lost on the way
    assert kinds(events) == ["LinkBroken"]
    assert "expected sequence number 1, got 2" in events[0].reason  # type: ignore[union-attr]
    assert h.receive_data(first, 0.0) == []  # ignored until the link is reopened
    h.resume(0.0)
    s.resume(0.0)
    pair.pump()
    assert kinds(pair.take(h)) == ["RequestHead", "EndOfBody"]


def test_damaged_bytes_and_end_of_input_break_the_link() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    wire = bytearray(s.data_to_send())
    wire[-3] ^= 0xFF
    (broken,) = h.receive_data(bytes(wire), 0.0)
    assert isinstance(broken, bp.LinkBroken) and "CRC mismatch" in broken.reason
    h.resume(0.0)
    s.resume(0.0)
    pair.pump()
    assert kinds(pair.take(h)) == ["RequestHead"]
    (closed,) = h.receive_data(b"", 0.0)
    assert closed == bp.LinkBroken("the peer closed the link")
    h.resume(0.0)
    s.resume(0.0)
    s.send_end(xid, 0.0)
    pair.pump()
    assert kinds(pair.take(h)) == ["EndOfBody"]


def test_resume_only_on_one_side_is_enough() -> None:
    pair = Pair()
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    s.data_to_send()  # lost
    h.resume(0.0)  # the host's hello makes the sandbox resend
    pair.pump()
    assert pair.take(h) == [bp.RequestHead(xid, b"GET", b"/")]


def test_config_values_are_checked() -> None:
    with pytest.raises(bp.LocalProtocolError, match="idle_timeout must be positive or None"):
        bp.Config(idle_timeout=0)
    with pytest.raises(bp.LocalProtocolError, match="shutdown_grace must be positive"):
        bp.Config(shutdown_grace=-1)


def test_a_peer_that_stops_acknowledging_cannot_make_this_side_hold_more() -> None:
    pair = Pair(sandbox=bp.Config(max_retained_bytes=200))
    s = pair.sandbox
    while s.retained_bytes < 200:
        s.start_exchange(b"GET", b"/" + b"x" * 50, [], 0.0)
    with pytest.raises(bp.LocalProtocolError, match="await the peer's acknowledgement") as err:
        s.start_exchange(b"GET", b"/", [], 0.0)
    assert err.value.status_hint == 503
    pair.pump()  # acknowledgements arrive: room again
    assert s.retained_bytes == 0
    s.start_exchange(b"GET", b"/", [], 0.0)


def test_consume_after_a_closed_exchange_was_forgotten_is_ignored() -> None:
    pair = Pair(sandbox=bp.Config(closed_exchange_memory=1))
    s, h = pair.sandbox, pair.host
    first = complete_exchange(pair, b"", b"")
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    s.send_end(xid, 0.0)
    pair.pump()
    h.send_response(xid, 200, b"", [], 0.0)
    h.send_data(xid, b"held by the application", 0.0)
    h.send_end(xid, 0.0)
    pair.pump()
    complete_exchange(pair, b"", b"")  # pushes `xid` out of the closed-id memory
    s.consume(xid, 23)  # released already; nothing to do, nothing raised
    s.consume(first, 0)
    with pytest.raises(bp.LocalProtocolError, match="exchange 99 is unknown"):
        s.consume(99, 1)


def test_exchange_ids_run_out_cleanly() -> None:
    pair = Pair()
    pair.sandbox._exchanges._next_local_id = 2**32 - 1  # the last odd id
    pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    with pytest.raises(bp.LocalProtocolError, match="exchange ids are exhausted"):
        pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)


def test_data_to_send_in_pieces() -> None:
    pair = Pair()
    xid = pair.sandbox.start_exchange(b"POST", b"/", [], 0.0)
    for _ in range(10):
        pair.sandbox.send_data(xid, b"x" * 1000, 0.0)
    pieces = []
    while piece := pair.sandbox.data_to_send(max_bytes=2500):
        pieces.append(piece)
    assert len(pieces) == 4  # head + 2 data, then 3 data at a time (whole frames only)
    assert all(len(p) < 2500 + 1100 for p in pieces)
    events = [e for piece in pieces for e in pair.host.receive_data(piece, 0.0)]
    assert body(events, xid) == b"x" * 10_000


def test_abort_ends_everything_once() -> None:
    pair = Pair()
    xid = pair.sandbox.start_exchange(b"GET", b"/", [], 0.0)
    assert pair.sandbox.is_open(xid)
    events = pair.sandbox.abort("the transport is gone")
    assert kinds(events) == ["ExchangeReset", "SessionFailed"]
    assert events[0] == bp.ExchangeReset(
        xid, bp.ErrorCode.PEER_UNRESPONSIVE, "the transport is gone", by_peer=False
    )
    assert not pair.sandbox.is_open(xid)
    assert pair.sandbox.abort("again") == []  # already over


def test_sequence_and_acknowledgement_counters() -> None:
    pair = Pair()
    s = pair.sandbox
    assert (s.sent_seq, s.acked_seq, s.unsent_bytes) == (0, 0, 0)
    xid = s.start_exchange(b"GET", b"/", [], 0.0)
    s.send_end(xid, 0.0)
    assert s.sent_seq == 2 and s.unsent_bytes > 0
    pair.pump()
    assert s.acked_seq == 2 and s.unsent_bytes == 0


def _records(data: bytes) -> list[bp.Record]:
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(data)
    return [f.record for f in iter(decoder.next_frame, NEED_DATA)]  # type: ignore[union-attr]


def test_ack_zero_is_always_valid() -> None:
    """Resuming sends ACK 0 when nothing arrived yet: never an ACK of an unsent number."""
    conn = bp.Connection(bp.Role.HOST, SID)
    conn.start(0.0)
    peer = RawPeer(bp.Role.SANDBOX)
    conn.receive_data(peer.hello(), 0.0)
    assert conn.sent_seq == 0
    assert conn.receive_data(peer.frame(bp.Ack(0)), 0.0) == []
    assert conn.failure is None
    events = conn.receive_data(peer.frame(bp.Ack(1)), 0.0)  # one never sent
    assert isinstance(events[-1], bp.SessionFailed) and "only 0 were sent" in events[-1].reason


def test_a_frame_whose_rest_never_comes_breaks_the_link_not_the_session() -> None:
    """Part of a frame, then nothing for ``ping_interval`` (a live peer would
    have answered a ping by then): bytes were lost, so the link is given up."""
    config = bp.Config(ping_interval=2.0)
    for handshake_done in (False, True):
        conn = bp.Connection(bp.Role.HOST, SID, config)
        conn.start(0.0)
        peer = RawPeer(bp.Role.SANDBOX)
        if handshake_done:
            conn.receive_data(peer.hello(), 0.0)
            partial = peer.frame(bp.RequestHead(1, b"GET", b"/"))[:-3]
        else:
            partial = peer.hello()[:-3]
        assert conn.receive_data(partial, 0.5) == []
        assert conn.next_deadline() == 2.0  # counted from the last whole frame (or the start)
        assert conn.handle_timer(1.9) == []
        (broken,) = [e for e in conn.handle_timer(2.0) if isinstance(e, bp.LinkBroken)]
        assert "waited 2 s for the rest" in broken.reason
        assert conn.failure is None  # the session lives on, to resume
        conn.resume(2.1)  # a new link, with nothing half-received on it
        assert not any(isinstance(e, bp.LinkBroken) for e in conn.handle_timer(2.2))
