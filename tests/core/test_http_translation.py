"""The pure HTTP translation, without sockets: refusals, hygiene, rendering."""

from __future__ import annotations

import json
import re

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto import _http
from bridgeproto.http import (
    AgentBody,
    AgentClosed,
    AgentConnection,
    AgentEnd,
    AgentEvent,
    AgentRefused,
    AgentRequest,
    HttpPolicy,
    Refusal,
    Upstream,
    check_target,
    clean_headers,
    error_response,
    upgrade_token,
    upstream_request,
)

SIMPLE_PATH = _http._SIMPLE_PATH
POLICY = HttpPolicy(allowed_prefixes=["/rollout/k1/", b"/health"])


@pytest.mark.parametrize(
    ("method", "target", "cause"),
    [
        (b"GET", b"/rollout/k1/v1/models", None),
        (b"GET", b"/rollout/k1", None),
        (b"GET", b"/health?x=1", None),
        (b"GET", b"/rollout/k1x", "path-not-allowed"),
        (b"GET", b"/rollout/k2/v1", "path-not-allowed"),
        (b"GET", b"http://elsewhere/rollout/k1/", "absolute-target-refused"),
        (b"CONNECT", b"elsewhere:443", "connect-refused"),
        (b"GET", b"/rollout/k1/../k2", "unsafe-path"),
        (b"GET", b"/rollout/k1/%2e%2e/k2", "unsafe-path"),
        (b"GET", b"/rollout/k1/a%2Fb", "unsafe-path"),
        (b"GET", b"/rollout/k1/./x", "unsafe-path"),
        (b"OPTIONS", b"*", "path-not-allowed"),
        (b"GET", b"/rollout/k1/a%zz", "unsafe-path"),
        (b"GET", b"/rollout/k1/a%1f", "unsafe-path"),
        (b"GET", b"/rollout/k1/a%7f", "unsafe-path"),
        (b"GET", b"/rollout/k1/a%20b", None),
        (b"GET", b"*", "absolute-target-refused"),
        (b"OPTIONS", b"!", "absolute-target-refused"),
        (b"GET", b"/rollout/k1/a%4", "unsafe-path"),
    ],
)
def test_check_target(method: bytes, target: bytes, cause: str | None) -> None:
    refusal = check_target(method, target, POLICY)
    assert (refusal.cause if refusal else None) == cause
    if refusal:
        assert refusal.message and 400 <= refusal.status < 500


@given(st.text(alphabet="/.%;\\aZ09-_~2eEfF\x00", max_size=12).map(lambda t: "/" + t))
def test_a_path_the_quick_check_passes_passes_every_check(text: str) -> None:
    """Plain paths skip the path checks: none of those checks refuses one."""
    path = text.encode()
    quick = _http._SIMPLE_PATH.fullmatch(path) is not None
    try:
        _http._SIMPLE_PATH = re.compile(rb"(?!)")  # (matches nothing: every check runs)
        full = _http._path_problem(path, path)
    finally:
        _http._SIMPLE_PATH = SIMPLE_PATH
    assert _http._path_problem(path, path) == full
    if quick:
        assert full is None


def test_options_star_is_allowed_when_everything_is() -> None:
    assert check_target(b"OPTIONS", b"*", HttpPolicy()) is None


def test_prefixes_must_be_paths() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        HttpPolicy(allowed_prefixes=["rollout"])


def test_clean_headers_drops_hop_by_hop_and_keeps_framing() -> None:
    headers = [
        (b"Host", b"x"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authorization", b"Basic abc"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Upgrade", b"websocket"),
        (b"Expect", b"100-continue"),
        (b"Content-Length", b"12"),
        (b"Accept", b"*/*"),
        (b"Accept", b"text/plain"),
    ]
    assert clean_headers(headers) == [
        (b"content-length", b"12"),
        (b"accept", b"*/*"),
        (b"accept", b"text/plain"),
    ]
    chunked = clean_headers([(b"Transfer-Encoding", b"gzip, chunked"), (b"Content-Length", b"3")])
    assert chunked == [(b"transfer-encoding", b"chunked")]


def test_upstream_request_checks_again_and_adds_credentials() -> None:
    upstream = Upstream(
        "127.0.0.1", 8080, POLICY, added_headers=((b"authorization", b"Bearer real"),)
    )
    head = bp.RequestHead(
        1,
        b"POST",
        b"/rollout/k1/v1/chat",
        [
            (b"Authorization", b"Bearer placeholder"),
            (b"Host", b"sandbox"),
            (b"content-length", b"2"),
        ],
    )
    request = upstream_request(head, upstream)
    assert isinstance(request, h11.Request)
    headers = list(request.headers.raw_items())
    assert (b"host", b"127.0.0.1:8080") in headers
    assert [v for n, v in headers if n.lower() == b"authorization"] == [b"Bearer real"]
    assert (b"via", b"1.1 bridgeproto") in headers
    # A sandbox that skips its own checks is stopped here.
    for target in (b"/rollout/k2/", b"http://evil/", b"/rollout/k1/../k2"):
        refused = upstream_request(bp.RequestHead(1, b"GET", target), upstream)
        assert isinstance(refused, Refusal)
    assert isinstance(upstream_request(bp.RequestHead(1, b"CONNECT", b"/x"), upstream), Refusal)


def test_error_response_is_openai_shaped_json() -> None:
    headers, body = error_response(502, "upstream-unreachable", "cannot connect")
    assert (b"x-bridge-error", b"upstream-unreachable") in headers
    assert (b"content-length", str(len(body)).encode()) in headers
    assert json.loads(body) == {
        "error": {
            "message": "cannot connect",
            "type": "bridge_error",
            "code": "upstream-unreachable",
        }
    }


def feed(agent: AgentConnection, data: bytes) -> list[AgentEvent]:
    agent.receive_data(data)
    events = []
    while (event := agent.next_event()) is not None:
        events.append(event)
        if isinstance(event, (AgentRefused, AgentClosed)):
            break
    return events


def test_agent_request_body_and_response_rendering() -> None:
    agent = AgentConnection(HttpPolicy())
    events = feed(agent, b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    request, body, end = events
    assert isinstance(request, AgentRequest) and request.interim == b""
    assert (b"content-length", b"3") in request.headers
    assert body == AgentBody(b"abc") and end == AgentEnd()
    out = agent.respond_head(bp.ResponseHead(1, 200, b"OK", [(b"content-length", b"2")]))
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"via: 1.1 bridgeproto" in out.lower()
    assert agent.respond_data(b"hi") == b"hi"
    agent.respond_end()
    assert agent.next_cycle()
    assert feed(agent, b"") == [AgentClosed()]


def test_failure_before_and_after_the_response_head() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    reply = agent.respond_failure(bp.ErrorCode.UPSTREAM_TIMEOUT, "too slow")
    assert reply is not None and reply.startswith(b"HTTP/1.1 504 ")
    assert b"x-bridge-error: upstream-timeout" in reply.lower()
    assert not agent.next_cycle()  # the connection closes after an error answer

    started = AgentConnection(HttpPolicy())
    feed(started, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    started.respond_head(bp.ResponseHead(1, 200, b"", [(b"transfer-encoding", b"chunked")]))
    assert started.respond_failure(bp.ErrorCode.UPSTREAM_FAILED, "broke") is None  # abort


def test_head_request_error_has_no_body() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    reply = agent.respond_failure(bp.ErrorCode.REFUSED, "busy")
    assert reply is not None and reply.endswith(b"\r\n\r\n")


def test_body_limit_while_streaming_after_the_head_started() -> None:
    agent = AgentConnection(HttpPolicy(max_body_bytes=4))
    feed(agent, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    agent.respond_head(bp.ResponseHead(1, 200, b"", [(b"transfer-encoding", b"chunked")]))
    (refused,) = feed(agent, b"5\r\nhello\r\n")
    assert isinstance(refused, AgentRefused) and refused.reply is None
    assert refused.refusal.status == 413


def test_expect_100_continue_is_answered_here() -> None:
    agent = AgentConnection(HttpPolicy())
    (request,) = feed(
        agent, b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert isinstance(request, AgentRequest)
    assert request.interim.startswith(b"HTTP/1.1 100 ")
    assert all(name != b"expect" for name, _ in request.headers)


def test_a_malformed_request_is_a_bad_request_and_an_oversized_one_a_431() -> None:
    (refused,) = feed(AgentConnection(HttpPolicy()), b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert isinstance(refused, AgentRefused)
    assert (refused.refusal.status, refused.refusal.cause) == (400, "bad-request")
    small = AgentConnection(HttpPolicy(max_header_bytes=100))
    (refused,) = feed(small, b"GET / HTTP/1.1\r\nx: " + b"y" * 200)  # a head that never ends
    assert (refused.refusal.status, refused.refusal.cause) == (431, "headers-too-large")


def test_a_request_head_of_exactly_the_limit_passes_and_one_byte_more_is_431() -> None:
    head = b"GET /abc HTTP/1.1\r\nHost: a\r\nx-pad: "
    # The size counted is docs/protocol.md's, the session's own: 8 + method
    # + target + each header's name, value and 8 bytes.
    size_without_pad = 8 + 3 + 4 + (4 + 1 + 8) + (5 + 8)
    limit = size_without_pad + 20
    for pad, allowed in ((20, True), (21, False)):
        events = feed(
            AgentConnection(HttpPolicy(max_header_bytes=limit)), head + b"p" * pad + b"\r\n\r\n"
        )
        if allowed:
            assert isinstance(events[0], AgentRequest), events
        else:
            assert isinstance(events[0], AgentRefused) and events[0].refusal.status == 431


def test_a_declared_length_past_the_body_limit_is_refused_before_the_body() -> None:
    for length, allowed in ((10, True), (11, False)):
        agent = AgentConnection(HttpPolicy(max_body_bytes=10))
        events = feed(agent, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % length)
        if allowed:
            assert isinstance(events[0], AgentRequest)
        else:
            assert isinstance(events[0], AgentRefused) and events[0].refusal.status == 413


def test_the_chunk_size_refusal_names_the_largest_accepted() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    (refused,) = feed(agent, b"8000000000000000\r\n")
    assert isinstance(refused, AgentRefused)
    assert f"the largest accepted is {2**63 - 1}" in refused.refusal.message


def test_request_started_says_whether_the_next_request_has_begun() -> None:
    agent = AgentConnection(HttpPolicy())
    assert not agent.request_started
    feed(agent, b"GE")
    assert agent.request_started


def test_a_head_h11_will_not_send_upstream_is_refused_as_a_bad_request() -> None:
    upstream = Upstream("h", 1, HttpPolicy(), ((b"x-key", b"v"),))
    head = bp.RequestHead(1, b"GET", b"/", ((b"x", b"a"),))
    broken = Upstream("h", 1, HttpPolicy(), ((b"bad name", b"v"),))  # h11 refuses the name
    assert not isinstance(upstream_request(head, upstream), Refusal)
    refusal = upstream_request(head, broken)
    assert isinstance(refusal, Refusal) and refusal.cause == "bad-request"


def test_content_length_with_transfer_encoding_is_refused() -> None:
    request = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    (refused,) = feed(AgentConnection(HttpPolicy()), request)
    assert isinstance(refused, AgentRefused) and "smuggle" in refused.refusal.message
    plain = feed(AgentConnection(HttpPolicy()), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(plain[0], AgentRequest)


def test_after_an_error_reply_a_failure_only_closes() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert agent.reply_error(503, "bridge-busy", "busy").startswith(b"HTTP/1.1 503 ")
    assert agent.respond_failure(bp.ErrorCode.CANCELLED, "gone") is None


def test_a_chunked_body_of_exactly_the_limit_passes() -> None:
    agent = AgentConnection(HttpPolicy(max_body_bytes=5))
    events = feed(
        agent,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    assert [type(e) for e in events] == [AgentRequest, AgentBody, AgentEnd]


def test_a_chunked_message_keeps_its_other_headers_and_loses_only_its_length() -> None:
    cleaned = clean_headers(
        [
            (b"Age", b"1"),
            (b"Content-Length", b"5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-After", b"2"),
        ]
    )
    assert cleaned == [(b"age", b"1"), (b"x-after", b"2"), (b"transfer-encoding", b"chunked")]


def test_a_chunk_declared_past_the_body_limit_is_refused_before_its_data() -> None:
    agent = AgentConnection(HttpPolicy(max_body_bytes=10))
    feed(agent, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    (refused,) = feed(agent, b"6\r\n")  # 5 + 6 > 10, and not one byte of it has come
    assert isinstance(refused, AgentRefused) and refused.refusal.status == 413


def test_length_and_chunking_together_are_refused_even_with_no_other_header() -> None:
    request = b"POST / HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    (refused,) = feed(AgentConnection(HttpPolicy()), request)
    assert isinstance(refused, AgentRefused) and "smuggle" in refused.refusal.message


def test_another_http_version_is_a_505() -> None:
    (refused,) = feed(AgentConnection(HttpPolicy()), b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    assert isinstance(refused, AgentRefused) and refused.refusal.status == 505


def test_the_default_head_limit_is_64_kib() -> None:
    assert HttpPolicy().max_header_bytes == 64 << 10


def test_status_199_is_informational() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert agent.respond_head(bp.ResponseHead(1, 199)).startswith(b"HTTP/1.1 199 ")
    final = agent.respond_head(bp.ResponseHead(1, 200, b"OK", [(b"content-length", b"0")]))
    assert final.startswith(b"HTTP/1.1 200 OK")


WEBSOCKET = (
    b"GET /rollout/k1/ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_an_upgrade_request_carries_its_upgrade_and_the_101_switches_the_connection() -> None:
    agent = AgentConnection(POLICY)
    request, end = feed(agent, WEBSOCKET + b"early frame")
    assert isinstance(request, AgentRequest) and request.upgrade and end == AgentEnd()
    assert request.headers[-2:] == ((b"connection", b"upgrade"), (b"upgrade", b"websocket"))
    assert (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==") in request.headers
    assert b"keep-alive" not in b"".join(v for _, v in request.headers)
    accept = [
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]
    out = agent.respond_head(bp.ResponseHead(1, 101, b"Switching Protocols", accept))
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nupgrade: websocket\r\n" in out and b"\r\nconnection: upgrade\r\n" in out
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in out
    assert agent.switched
    assert agent.upgraded_data() == b"early frame"  # read with the request, not lost
    assert agent.respond_data(b"\x81\x02hi") == b"\x81\x02hi"  # bytes as they are
    assert agent.respond_end() == b""
    assert not agent.next_cycle()  # no HTTP on this connection any more


def test_a_101_to_a_request_that_asked_for_no_upgrade_is_refused() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(h11.LocalProtocolError):
        agent.respond_head(bp.ResponseHead(1, 101))
    assert not agent.switched


def test_a_declined_upgrade_is_an_ordinary_answer_and_the_connection_goes_on() -> None:
    agent = AgentConnection(POLICY)
    feed(agent, WEBSOCKET)
    out = agent.respond_head(
        bp.ResponseHead(1, 403, b"", [(b"content-length", b"0"), (b"upgrade", b"websocket")])
    )
    assert out.startswith(b"HTTP/1.1 403 ") and b"upgrade" not in out.lower()
    agent.respond_end()
    assert not agent.switched and agent.next_cycle()


def test_an_upgrade_with_a_body_is_refused_on_both_sides() -> None:
    agent = AgentConnection(POLICY)
    (refused,) = feed(agent, WEBSOCKET.replace(b"\r\n\r\n", b"\r\nContent-Length: 2\r\n\r\nhi"))
    assert isinstance(refused, AgentRefused) and refused.refusal.code is bp.ErrorCode.BAD_REQUEST
    assert "Upgrade" in refused.refusal.message and "without one" in refused.refusal.message
    head = bp.RequestHead(
        1,
        b"GET",
        b"/rollout/k1/ws",
        [
            (b"connection", b"upgrade"),
            (b"upgrade", b"websocket"),
            (b"transfer-encoding", b"chunked"),
        ],
    )
    assert isinstance(upstream_request(head, Upstream("h", 1, POLICY)), Refusal)


def test_the_upstream_gets_the_upgrade_under_the_same_policy_and_credentials() -> None:
    upstream = Upstream(
        "127.0.0.1", 8080, POLICY, added_headers=((b"authorization", b"Bearer real"),)
    )
    asks = [
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        (b"authorization", b"Bearer fake"),
        (b"x-forwarded-for", b"1.2.3.4"),
    ]
    request = upstream_request(bp.RequestHead(1, b"GET", b"/rollout/k1/ws", asks), upstream)
    assert isinstance(request, h11.Request)
    headers = list(request.headers.raw_items())
    assert upgrade_token(headers) == b"websocket"
    assert [v for n, v in headers if n == b"authorization"] == [b"Bearer real"]
    assert not any(n == b"x-forwarded-for" for n, _ in headers)
    outside = upstream_request(bp.RequestHead(1, b"GET", b"/rollout/k2/ws", asks), upstream)
    assert isinstance(outside, Refusal) and outside.cause == "path-not-allowed"
    # Without "Connection: upgrade" an Upgrade header is only hop-by-hop noise,
    # and "Connection: upgrade" alone names no protocol.
    assert upgrade_token([(b"upgrade", b"websocket")]) is None
    assert upgrade_token([(b"connection", b"upgrade")]) is None
    plain = upstream_request(
        bp.RequestHead(1, b"GET", b"/rollout/k1/ws", [(b"upgrade", b"websocket")]), upstream
    )
    assert isinstance(plain, h11.Request) and upgrade_token(plain.headers.raw_items()) is None


def test_a_101_is_a_final_head_in_the_core() -> None:
    """After a 101 the response half is open: its body carries the new protocol."""
    from pair import Pair

    pair = Pair()
    s, h = pair.sandbox, pair.host
    xid = s.start_exchange(
        b"GET", b"/ws", [(b"connection", b"upgrade"), (b"upgrade", b"websocket")], 0.0
    )
    pair.pump()
    h.send_response(xid, 101, b"Switching Protocols", [], 0.0)
    h.send_data(xid, b"from the upstream", 0.0)
    s.send_data(xid, b"from the agent", 0.0)
    pair.pump()
    to_sandbox, to_host = pair.take(s), pair.take(h)
    assert [type(e) for e in to_sandbox] == [bp.ResponseHead, bp.Data]
    assert to_sandbox[1].data == b"from the upstream"  # type: ignore[union-attr]
    assert [e.data for e in to_host if isinstance(e, bp.Data)] == [b"from the agent"]
    s.send_end(xid, 0.0)  # the agent's half-close
    h.send_end(xid, 0.0)  # the upstream's
    pair.pump()
    assert not s.is_open(xid) and not h.is_open(xid)
    assert not any(isinstance(e, bp.ExchangeReset) for e in pair.take(s) + pair.take(h))


# The answers AgentConnection writes itself (a final head with one
# Content-Length to a request that keeps the connection) and those it has h11
# write: each must come out as h11 alone writes it, and the connection must go
# on (or close) as h11's would, reading a request sent ahead the same way.
_REQUESTS = {
    "keep-alive": b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    "get": b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
    "head": b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n",
    "close": b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "keep-alive, close": b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n",
    "http/1.0": b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n",
    "chunked": (
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    ),
}
_ANSWERS = {
    "length": (200, b"OK", [(b"content-length", b"5"), (b"x-a", b"1")], [b"he", b"llo"]),
    "empty": (201, b"", [(b"content-length", b"0")], []),
    "no length": (200, b"OK", [(b"content-type", b"text/plain")], [b"hello"]),
    "chunked": (200, b"OK", [(b"transfer-encoding", b"chunked")], [b"hel", b"lo"]),
    "length, chunked": (
        200,
        b"",
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [b"hello"],
    ),
    "no content": (204, b"", [], []),
    "not modified": (304, b"", [(b"content-length", b"5")], []),
    "two lengths": (200, b"", [(b"content-length", b"5"), (b"content-length", b"5")], [b"hello"]),
}
_NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("answer", sorted(_ANSWERS))
@pytest.mark.parametrize("request_kind", sorted(_REQUESTS))
def test_answers_come_out_as_h11_writes_them(request_kind: str, answer: str) -> None:
    status, reason, headers, body = _ANSWERS[answer]
    if request_kind == "head":
        body = []
    agent = AgentConnection(HttpPolicy())
    oracle = h11.Connection(h11.SERVER)
    # The next request sent ahead, where the first lets the connection go on.
    ahead = _NEXT if request_kind in ("keep-alive", "get", "head", "chunked") else b""
    oracle.receive_data(_REQUESTS[request_kind] + ahead)
    kinds = [type(event) for event in feed(agent, _REQUESTS[request_kind] + ahead)]
    assert kinds[0] is AgentRequest and kinds[-1] is AgentEnd, kinds
    while not isinstance(oracle.next_event(), h11.EndOfMessage):
        pass

    head = bp.ResponseHead(1, status, reason, headers)
    ours = [agent.respond_head(head)] + [agent.respond_data(chunk) for chunk in body]
    ours.append(agent.respond_end())
    cleaned = [*clean_headers(headers), (b"via", b"1.1 bridgeproto")]
    theirs = [oracle.send(h11.Response(status_code=status, reason=reason, headers=cleaned))]
    theirs += [oracle.send(h11.Data(data=chunk)) for chunk in body]
    theirs.append(oracle.send(h11.EndOfMessage()))
    assert b"".join(ours) == b"".join(part or b"" for part in theirs)

    goes_on = oracle.our_state is h11.DONE and oracle.their_state is h11.DONE
    assert agent.next_cycle() is goes_on
    if goes_on:
        assert ahead
        oracle.start_next_cycle()
        request = agent.next_event()
        assert isinstance(request, AgentRequest) and request.target == b"/next"
        assert isinstance(oracle.next_event(), h11.Request)


def test_an_answer_written_here_is_held_to_its_length() -> None:
    for chunks, words in (([b"toolong"], "Too much"), ([b"shor"], "Too little")):
        agent = AgentConnection(HttpPolicy())
        feed(agent, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        agent.respond_head(bp.ResponseHead(1, 200, b"", [(b"content-length", b"5")]))
        with pytest.raises(h11.LocalProtocolError, match=words):
            for chunk in chunks:
                agent.respond_data(chunk)
            agent.respond_end()
        assert agent.answer_error(500, "x", "y") is None  # started: the caller aborts
        assert not agent.next_cycle()


def test_an_agent_that_closes_after_its_request_is_seen_closed_on_the_next_cycle() -> None:
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    agent.receive_data(b"")
    agent.respond_head(bp.ResponseHead(1, 200, b"", [(b"content-length", b"0")]))
    agent.respond_end()
    assert agent.next_cycle()
    assert isinstance(agent.next_event(), AgentClosed)


def test_a_plain_answer_is_written_without_h11s_state_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object) -> bytes:
        raise AssertionError("h11 wrote a plain answer")

    agent = AgentConnection(HttpPolicy())
    feed(agent, _REQUESTS["keep-alive"] + _NEXT)
    monkeypatch.setattr(h11.Connection, "send", refuse)
    out = agent.respond_head(bp.ResponseHead(1, 200, b"OK", [(b"content-length", b"2")]))
    out += agent.respond_data(b"ok") + agent.respond_end()
    assert out == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nvia: 1.1 bridgeproto\r\n\r\nok"
    assert agent.next_cycle()
    request = agent.next_event()
    assert isinstance(request, AgentRequest) and request.target == b"/next"


def test_a_refusal_after_a_head_request_has_its_body() -> None:
    """The method of the request before does not carry over: a malformed
    request after a HEAD exchange is answered with the whole error."""
    agent = AgentConnection(HttpPolicy())
    feed(agent, b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n")
    agent.respond_head(bp.ResponseHead(1, 200, b"", [(b"content-length", b"5")]))
    agent.respond_end()
    assert agent.next_cycle()
    (refused,) = feed(agent, b"GET /a HTTP/1.1\r\n\r\n")  # (no Host)
    assert isinstance(refused, AgentRefused) and refused.reply is not None
    head, _, body = refused.reply.partition(b"\r\n\r\n")
    assert json.loads(body)["error"]["code"] == "bad-request"
    assert f"content-length: {len(body)}".encode() in head.lower()
