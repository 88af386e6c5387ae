"""Requests the host side writes and responses it reads without h11
(``UpstreamConnection``; ``bridgeproto.http.plain_upstream_request`` and
``read_plain_response`` say which). A request goes out byte for byte as h11
writes it, and its body is held to its Content-Length against a sandbox
side that says one length and sends another. Whatever the upstream sends,
in whatever pieces, the heads, bodies, failures and reuse of the connection
come out as they do when h11 reads every response, a common exchange never
reaches h11, and bytes past a response's length keep its connection out of
the pool."""

from __future__ import annotations

from typing import Any

import anyio
import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bridgeproto as bp
from bridgeproto.http import (
    HttpPolicy,
    PlainRequest,
    PlainResponse,
    Refusal,
    plain_upstream_request,
    upstream_request,
)
from bridgeproto.http import Upstream as UpstreamAddress
from bridgeproto_adapters import host_side
from bridgeproto_adapters.host_side import UpstreamConnection, run_host_side
from bridgeproto_adapters.session import Session
from bridgeproto_adapters.streams import memory_stream_pair
from upstream import running_upstream

ADDRESS = UpstreamAddress("127.0.0.1", 1)
STATUS_LINES = [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 201 \r\n", b"HTTP/1.1 404 Not Found\r\n",
                b"HTTP/1.1 299\r\n", b"HTTP/1.1 500 a \x01 b\r\n"]  # fmt: skip
ODD_STATUS_LINES = [
    b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 304 \r\n", b"HTTP/1.0 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", b"HTTP/1.1 103 E\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 20 x\r\n", b"HTTP/1.1 200 OK\n", b"HTTP/2 200\r\n",
]  # fmt: skip
FIELDS = [b"Content-Type: text/plain\r\n", b"Connection: keep-alive\r\n", b"X-A: b  c\r\n",
          b"X-A: \x01\x7f\x80\r\n", b"X-A:\r\n", b"Keep-Alive: timeout=5\r\n"]  # fmt: skip
ODD_FIELDS = [
    b"Content-Length: 2\r\n", b"Content-Length: 2, 2\r\n", b"Content-Length: x\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"X-A : b\r\n", b" folded\r\n",
    b"X-A: b\n",
]  # fmt: skip
LENGTHS = [b"Content-Length: 2\r\n", b"content-length: 002\r\n", b"Content-Length: 0\r\n",
           b"Content-Length: 5\r\n"]  # fmt: skip
BODIES = [b"", b"ok", b"2\r\nok\r\n0\r\n\r\n"]


@st.composite
def upstream_responses(draw: st.DrawFn) -> list[bytes]:
    responses = []
    for _ in range(draw(st.integers(1, 3))):
        odd = draw(st.integers(0, 3)) == 0  # (a quarter of them h11's)
        line = draw(st.sampled_from(STATUS_LINES + ODD_STATUS_LINES if odd else STATUS_LINES))
        fields = draw(st.lists(st.sampled_from(FIELDS + ODD_FIELDS if odd else FIELDS), max_size=3))
        if not odd or draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from(LENGTHS)))
        responses.append(line + b"".join(fields) + b"\r\n" + draw(st.sampled_from(BODIES)))
    return responses


class Upstream:
    """An upstream's side of one connection, as a byte stream: each response
    comes in pieces once its request is sent, then the connection ends."""

    def __init__(self, responses: list[bytes], piece: int) -> None:
        self.responses, self.piece = list(responses), piece
        self.current = b""

    def answer_next(self) -> None:
        self.current = self.responses.pop(0) if self.responses else b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.current:
            raise anyio.EndOfStream
        data, self.current = self.current[: self.piece], self.current[self.piece :]
        return data

    def extra(self, attribute: Any) -> Any:
        return self  # (its socket, for the pool's idle check, not made here)

    def fileno(self) -> int:
        return -1


async def read(responses: list[bytes], piece: int, method: bytes) -> list[object]:
    """What the host side makes of the responses: each head as it crosses
    the bridge, each body, a failure, and whether the connection is reused."""
    upstream = Upstream(responses, piece)
    conn = UpstreamConnection(upstream)  # type: ignore[arg-type]
    seen: list[object] = []
    for _ in responses:
        asked = bp.RequestHead(1, method, b"/", [])
        request = plain_upstream_request(asked, ADDRESS) or upstream_request(asked, ADDRESS)
        assert not isinstance(request, Refusal)
        conn.request_head(request)
        conn.request_end()
        upstream.answer_next()
        try:
            head = await conn.response_head()
            while isinstance(head, h11.InformationalResponse):
                seen.append(host_side._head(1, head))
                head = await conn.response_head()
            seen.append(host_side._head(1, head))
            body = [part async for part in parts(conn)]
            seen.append(b"".join(body))
        except h11.RemoteProtocolError:
            return [*seen, "failed"]
        reused = conn.reusable()
        seen.append(reused)
        if not reused:
            break
    return seen


async def parts(conn: UpstreamConnection) -> Any:
    while (part := await conn.body_part()) is not None:
        yield part


@settings(max_examples=300, deadline=None)
@given(upstream_responses(), st.integers(1, 80), st.sampled_from([b"GET", b"POST", b"HEAD"]))
@example([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 2, 80, b"GET")
@example([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"], 80, b"GET")
def test_what_crosses_the_bridge_is_what_h11_alone_gives(
    responses: list[bytes], piece: int, method: bytes
) -> None:
    ours = anyio.run(read, responses, piece, method)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(host_side, "read_plain_response", lambda data, method: None)
        monkeypatch.setattr(host_side, "plain_upstream_request", lambda head, upstream: None)
        theirs = anyio.run(read, responses, piece, method)
    assert ours == theirs


def test_a_common_exchange_never_reaches_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> object:
        raise AssertionError("h11 wrote a common request or read a common response")

    async def main() -> list[object]:
        for name in ("send", "next_event", "receive_data"):
            monkeypatch.setattr(h11.Connection, name, refuse)
        return await read([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 2, 80, b"GET")

    seen = anyio.run(main)
    assert seen[1:] == [b"ok", True, seen[0], b"ok", True]


def test_bytes_past_a_responses_length_keep_its_connection_out_of_the_pool() -> None:
    """An upstream that sends more than its Content-Length: what follows is
    no answer to anything, and the next request must not read it as its own."""
    junk = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"]
    assert anyio.run(read, junk, 80, b"GET")[1:] == [b"ok", False]
    assert anyio.run(read, junk, 41, b"GET")[1:] == [b"ok", False]  # (in the next read)
    chunked = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX"]
    assert anyio.run(read, chunked, 80, b"GET")[1:] == [b"ok", False]  # (read by h11)


# ------------------------------------------------------------------ requests

NAMES = [b"content-length", b"Content-Length", b"transfer-encoding", b"host", b"upgrade",
         b"connection", b"expect", b"te", b"x-a", b"X-Forwarded-For", b"authorization"]  # fmt: skip
VALUES = [b"3", b"03", b"3, 3", b"x", b"", b"chunked", b"close", b"upgrade", b"websocket",
          b"a b", b" a", b"a\t", b"\x0ba", b"a\x0cb", b"\x01\x7f\x80", b"100-continue"]  # fmt: skip
ADDED = [(), ((b"authorization", b"Bearer k"),), ((b"Host", b"elsewhere"),),
         ((b"X-Key", b" padded"),), ((b"content-length", b"9"),)]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b"GET", b"POST", b"PUT", b"CONNECT", b"HEAD"]),
    st.sampled_from([b"/a", b"/a?b=c", b"/b", b"*", b"/a/../b"]),
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=5),
    st.sampled_from(ADDED),
    st.booleans(),
)
@example(b"POST", b"/a", [(b"content-length", b"3"), (b"x-a", b"a b")], (), False)
def test_a_request_written_here_is_what_h11_writes(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    added: tuple[tuple[bytes, bytes], ...],
    routing: bool,
) -> None:
    address = UpstreamAddress(
        "127.0.0.1", 1, HttpPolicy(allowed_prefixes=["/a"]), added, pass_routing_headers=routing
    )
    head = bp.RequestHead(1, method, target, headers)
    plain = plain_upstream_request(head, address)
    request = upstream_request(head, address)
    if plain is None:
        return  # (upstream_request's: the host side uses it as before)
    assert isinstance(request, h11.Request)
    assert plain.head == h11.Connection(h11.CLIENT).send(request)
    lengths = [v for n, v in request.headers if n == b"content-length"]
    assert plain.length == (int(lengths[0]) if lengths else 0)
    assert all(n != b"transfer-encoding" for n, _ in request.headers)


def test_most_requests_are_written_here() -> None:
    address = UpstreamAddress("127.0.0.1", 1, added_headers=((b"authorization", b"Bearer k"),))
    for head in (
        bp.RequestHead(1, b"GET", b"/v1/models", [(b"accept", b"*/*")]),
        bp.RequestHead(1, b"POST", b"/v1/chat", [(b"content-length", b"10")]),
    ):
        assert plain_upstream_request(head, address) is not None
    upgrade = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    chunked = [(b"transfer-encoding", b"chunked")]
    for head in (
        bp.RequestHead(1, b"GET", b"/ws", upgrade),
        bp.RequestHead(1, b"POST", b"/v1/chat", chunked),
        bp.RequestHead(1, b"GET", b"/", [(b"x-a", b" padded")]),  # h11 refuses it
    ):
        assert plain_upstream_request(head, address) is None


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"abc" + b"GET /json HTTP/1.1\r\nhost: a\r\n\r\n", b"ab"])
async def test_a_body_unlike_its_length_never_reaches_the_upstream(body: bytes) -> None:
    """A sandbox side that declares three bytes and sends another number
    (a request smuggled behind the body, or one cut short): the exchange is
    reset and the upstream sees no request at all."""
    a, b = memory_stream_pair()
    sandbox = Session(bp.Connection(bp.Role.SANDBOX, bytes(16)), a)
    async with running_upstream() as upstream, anyio.create_task_group() as tg:
        address = UpstreamAddress("127.0.0.1", upstream.port)
        tg.start_soon(sandbox.run)
        await tg.start(run_host_side, b, bytes(16), address)
        with anyio.fail_after(10):
            exchange = await sandbox.open_exchange(b"POST", b"/echo", [(b"content-length", b"3")])
            await exchange.send_data(body)
            exchange.end()
            while not isinstance(event := await exchange.events.receive(), bp.ExchangeReset):
                assert not isinstance(event, bp.ResponseHead), event
        assert "Content-Length" in event.reason
        exchange = await sandbox.open_exchange(b"GET", b"/json", [])  # the bridge goes on
        exchange.end()
        with anyio.fail_after(10):
            head = await exchange.events.receive()
        assert isinstance(head, bp.ResponseHead) and head.status == 200
        assert [r["target"] for r in upstream.requests] == ["/json"]
        tg.cancel_scope.cancel()


def test_a_connection_whose_request_was_not_all_written_is_never_pooled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upstream answered while the request's body was still going out,
    and its last write did not get through in the time the host gives it
    (it is cut short when the host stops waiting). The body's count is full
    on the plain path by then, but the connection is out of step with the
    upstream: it must be closed, never handed to the next request."""
    monkeypatch.setattr(host_side, "_REQUEST_TAIL_SECONDS", 0.05)
    upstream = Upstream([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], 80)
    pooled: list[bool] = []

    class Pool:
        async def acquire(self) -> UpstreamConnection:
            return UpstreamConnection(upstream)  # type: ignore[arg-type]

        def keep(self, conn: UpstreamConnection) -> bool:
            pooled.append(conn.reusable())
            return pooled[-1]

        async def discard(self, conn: UpstreamConnection) -> None:
            pooled.append(False)

    async def head_then_the_body_handed_to_its_write(
        exchange: object, conn: UpstreamConnection, request: PlainRequest
    ) -> bool:
        conn.request_head(request)
        conn.request_data(b"hello")  # (counted; its write is the upload's, below)
        upstream.answer_next()
        return False

    async def whose_write_never_ends(*_: object) -> None:
        await anyio.sleep_forever()

    async def the_answer_read_whole(exchange: object, conn: UpstreamConnection, _: object) -> bool:
        assert isinstance(await conn.response_head(), PlainResponse)
        assert await conn.body_part() is None
        return True

    host = host_side.HostSide(ADDRESS)
    monkeypatch.setattr(host, "_send_request", head_then_the_body_handed_to_its_write)
    monkeypatch.setattr(host, "_upload", whose_write_never_ends)
    monkeypatch.setattr(host, "_download_noting", the_answer_read_whole)
    request = plain_upstream_request(
        bp.RequestHead(1, b"POST", b"/", [(b"content-length", b"5")]), ADDRESS
    )
    assert request is not None
    anyio.run(host._forward, None, request, Pool())
    assert pooled == [False]


def test_an_added_connection_header_leaves_the_request_to_h11() -> None:
    closing = UpstreamAddress("127.0.0.1", 1, added_headers=((b"Connection", b"close"),))
    head = bp.RequestHead(1, b"GET", b"/", [])
    assert plain_upstream_request(head, closing) is None
    assert isinstance(upstream_request(head, closing), h11.Request)
