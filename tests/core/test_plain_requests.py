"""Requests AgentConnection reads without h11 (docs/core.md, "HTTP
translation"): whatever the agent sends, in whatever pieces, the events,
the refusals, the answers and the next request come out as they do when
h11 reads every request, and a common request never reaches h11. Last, the
responses the host side reads without h11, case by case."""

from __future__ import annotations

import attrs
import h11
import pytest
from hypothesis import example, given, settings
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
    read_plain_response,
)

POLICY = HttpPolicy(allowed_prefixes=["/a"], max_header_bytes=300, max_body_bytes=40)

# Parts of requests read here, and parts that make a request h11's.
LINES = [b"GET /a HTTP/1.1\r\n", b"POST /a/b?c=d HTTP/1.1\r\n", b"PUT /a HTTP/1.1\r\n"]
ODD_LINES = [
    b"HEAD /a HTTP/1.1\r\n", b"CONNECT a:1 HTTP/1.1\r\n", b"GET /a HTTP/1.0\r\n",
    b"GET /a HTTP/2.0\r\n", b"GET /b HTTP/1.1\r\n", b"GET /a/../b HTTP/1.1\r\n",
    b"G(T /a HTTP/1.1\r\n", b"GET /a  HTTP/1.1\r\n", b"GET /a HTTP/1.1\n",
    b"\r\nGET /a HTTP/1.1\r\n",
]  # fmt: skip
FIELDS = [
    b"Content-Length: 3\r\n", b"content-length: 003\r\n", b"Content-Length: 0\r\n",
    b"Content-Length: 99\r\n", b"Connection: close\r\n", b"Connection: keep-alive, Close\r\n",
    b"Connection: x-a\r\n", b"Connection: upgrade\r\n", b"X-A: b  c\r\n",
    b"X-A: \x01\x7f\x80\r\n", b"X-A:\r\n", b"X-A: \t b \t\r\n", b"X-Forwarded-For: 1.2.3.4\r\n",
    b"X-Long: " + b"v" * 200 + b"\r\n",
]  # fmt: skip
ODD_FIELDS = [
    b"host:a\r\n", b"Host: b\r\n", b"Content-Length: 3, 3\r\n", b"Content-Length: x\r\n",
    b"Content-Length: 1234567890123456789\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\n", b"X-A : b\r\n", b"X@A: b\r\n",
    b" folded\r\n", b"X-A: b\n", b"X-A: b\rc\r\n",
]  # fmt: skip
BODIES = [b"", b"abc", b"ab", b"abcd", b"3\r\nabc\r\n0\r\n\r\n", b"x" * 50]
NEXT = b"GET /a/next HTTP/1.1\r\nHost: a\r\n\r\n"


@st.composite
def agent_bytes(draw: st.DrawFn) -> bytes:
    requests = []
    for _ in range(draw(st.integers(1, 3))):
        odd = draw(st.integers(0, 3)) == 0  # (a quarter of them h11's)
        line = draw(st.sampled_from(LINES + ODD_LINES if odd else LINES))
        fields = draw(st.lists(st.sampled_from(FIELDS + ODD_FIELDS if odd else FIELDS), max_size=4))
        if not odd or draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), b"Host: a\r\n")
        head = line + b"".join(fields) + b"\r\n"
        requests.append(head + draw(st.sampled_from(BODIES)))
    return b"".join(requests)


def h11_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request h11's to read, as before requests were read here."""
    monkeypatch.setattr(_http, "_read_plain_head", lambda data: None)


def run(data: bytes, piece: int, close: bool) -> list[object]:
    """Everything the agent's side of a connection shows, fed ``data`` in
    pieces: each event (a refusal by its code, status and answer's head, but
    for the length of its message, which says the same in other words),
    the answer to each request, and whether the connection goes on."""
    agent = AgentConnection(POLICY)
    seen: list[object] = []
    method = b""
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    pieces += [b""] if close else []
    for chunk in pieces:
        agent.receive_data(chunk)
        while (event := agent.next_event()) is not None:
            seen.append(describe(event))
            if isinstance(event, AgentRequest):
                method = event.method
            if isinstance(event, (AgentRefused, AgentClosed)):
                return seen
            if isinstance(event, AgentEnd):
                seen.append(answer(agent, len(seen), body=b"" if method == b"HEAD" else b"ok"))
                seen.append(("request started", agent.request_started))
                if not agent.next_cycle():
                    return [*seen, "closed"]
    return [*seen, ("request started", agent.request_started)]


def describe(event: AgentEvent) -> object:
    if isinstance(event, AgentRefused):
        head = event.reply.split(b"\r\n\r\n")[0] if event.reply else b""
        lines = [line for line in head.split(b"\r\n") if not line.startswith(b"content-length")]
        return ("refused", event.refusal.code, event.refusal.status, event.reply is None, lines)
    return event


def answer(agent: AgentConnection, n: int, body: bytes) -> bytes:
    """An answer of a different kind each time: plain, chunked, an interim
    one first, one that closes."""
    kind = n % 4
    out = b""
    if kind == 2:
        out += agent.respond_head(bp.ResponseHead(1, 103, b"", [(b"link", b"</a>")]))
    length = (b"content-length", b"2")
    headers = [[length], [], [length], [length, (b"connection", b"close")]][kind]
    out += agent.respond_head(bp.ResponseHead(1, 200, b"OK", headers))
    return out + (agent.respond_data(body) if body else b"") + agent.respond_end()


@settings(max_examples=400, deadline=None)
@given(agent_bytes(), st.integers(1, 400), st.booleans())
@example(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" + NEXT, 400, False)
@example(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab", 400, True)
@example(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + NEXT, 7, True)
def test_what_the_agent_sees_is_what_h11_alone_gives(data: bytes, piece: int, close: bool) -> None:
    ours = run(data, piece, close)
    with pytest.MonkeyPatch.context() as monkeypatch:
        h11_only(monkeypatch)
        theirs = run(data, piece, close)
    assert ours == theirs


def test_a_common_request_and_its_answer_never_reach_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> object:
        raise AssertionError("h11 read a common request")

    monkeypatch.setattr(h11.Connection, "next_event", refuse)
    monkeypatch.setattr(h11.Connection, "receive_data", refuse)
    agent = AgentConnection(POLICY)
    agent.receive_data(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + NEXT)
    request = agent.next_event()
    assert isinstance(request, AgentRequest) and request.target == b"/a"
    assert [agent.next_event(), agent.next_event(), agent.next_event()] == [
        AgentBody(b"abc"),
        AgentEnd(),
        None,
    ]
    agent.respond_head(bp.ResponseHead(1, 200, b"OK", [(b"content-length", b"0")]))
    agent.respond_end()
    assert agent.next_cycle()
    following = agent.next_event()
    assert isinstance(following, AgentRequest) and following.target == b"/a/next"


def test_the_body_of_a_request_read_here_is_handed_over_as_it_came() -> None:
    agent = AgentConnection(POLICY)
    agent.receive_data(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
    assert isinstance(agent.next_event(), AgentRequest)
    chunk = b"abc" * 2
    agent.receive_data(chunk)
    body = agent.next_event()
    assert isinstance(body, AgentBody) and body.data is chunk


def test_the_body_bytes_still_to_come_are_counted_for_a_request_read_here_only() -> None:
    agent = AgentConnection(POLICY)
    assert agent.missing_body_bytes == 0  # (no request yet)
    agent.receive_data(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    assert isinstance(agent.next_event(), AgentRequest)
    assert agent.missing_body_bytes == 4
    agent.receive_data(b"cdefGET")  # the end of the body, and the next request's start
    assert agent.missing_body_bytes == 0
    assert agent.next_event() == AgentBody(b"abcdef")
    assert agent.next_event() == AgentEnd()
    assert agent.missing_body_bytes == 0
    refused = AgentConnection(attrs.evolve(POLICY, max_body_bytes=5))  # too large: answered
    refused.receive_data(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
    assert isinstance(refused.next_event(), AgentRefused)
    assert refused.missing_body_bytes == 0
    chunked = AgentConnection(POLICY)  # h11 reads it, and gives its body as it comes
    chunked.receive_data(b"PUT /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(chunked.next_event(), AgentRequest)
    assert chunked.missing_body_bytes == 0


def test_a_body_cut_short_by_the_agent_is_a_bad_request_naming_the_bytes_missing() -> None:
    agent = AgentConnection(POLICY)
    agent.receive_data(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert isinstance(agent.next_event(), AgentRequest)
    assert agent.next_event() == AgentBody(b"abc")
    agent.receive_data(b"")
    refused = agent.next_event()
    assert isinstance(refused, AgentRefused) and refused.refusal.status == 400
    assert "3 bytes before the end of the body" in refused.refusal.message
    assert refused.reply is not None and refused.reply.startswith(b"HTTP/1.1 400 ")


def test_a_request_sent_ahead_in_pieces_during_an_answer_is_read_whole_after_it() -> None:
    agent = AgentConnection(POLICY)
    agent.receive_data(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(agent.next_event(), AgentRequest)
    assert agent.next_event() == AgentEnd()
    for piece in (NEXT[:5], NEXT[5:20], NEXT[20:]):  # while the answer is on its way
        agent.receive_data(piece)
        assert agent.next_event() is None
    agent.respond_head(bp.ResponseHead(1, 200, b"OK", [(b"content-length", b"0")]))
    agent.respond_end()
    assert agent.next_cycle()
    following = agent.next_event()
    assert isinstance(following, AgentRequest) and following.target == b"/a/next"


@pytest.mark.parametrize(
    ("response", "method", "plain"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"GET", True),
        (b"HTTP/1.1 404 \r\ncontent-length: 0\r\nX-A:  b \r\n\r\n", b"POST", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"HEAD", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", b"GET", False),  # (not whole)
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", False),
        (b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n", b"GET", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"GET", False),
        (b"HTTP/1.1 200 OK\r\n folded\r\nContent-Length: 2\r\n\r\nok", b"GET", False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            b"GET",
            False,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", b"GET", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Close\r\n\r\nok", b"GET", False),
        (b"HTTP/1.1 200 OK\r\n\r\nok", b"GET", False),  # (ends with the connection)
    ],
)
def test_the_responses_the_host_side_reads_itself(
    response: bytes, method: bytes, plain: bool
) -> None:
    head = read_plain_response(response, method)
    assert (head is not None) is plain
    if head is not None:
        assert response[head.size :] == response.partition(b"\r\n\r\n")[2]
        assert head.length == int(dict((n.lower(), v) for n, v in head.headers)[b"content-length"])
