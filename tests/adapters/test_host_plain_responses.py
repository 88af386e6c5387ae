"""Responses the host side reads without h11 (``UpstreamConnection``;
``bridgeproto.http.read_plain_response`` says which): whatever the upstream
sends, in whatever pieces, the heads, bodies, failures and reuse of the
connection come out as they do when h11 reads every response, a common
response never reaches h11, and bytes past a response's length keep its
connection out of the pool."""

from __future__ import annotations

from typing import Any

import anyio
import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridgeproto_adapters import host_side
from bridgeproto_adapters.host_side import UpstreamConnection

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
        conn.h11.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        conn.h11.send(h11.EndOfMessage())
        upstream.answer_next()
        try:
            head = await conn.response_head(method)
            while isinstance(head, h11.InformationalResponse):
                seen.append(host_side._head(1, head))
                head = await conn.response_head(method)
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
        theirs = anyio.run(read, responses, piece, method)
    assert ours == theirs


def test_a_common_response_never_reaches_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> object:
        raise AssertionError("h11 read a common response")

    async def main() -> list[object]:
        monkeypatch.setattr(h11.Connection, "next_event", refuse)
        monkeypatch.setattr(h11.Connection, "receive_data", refuse)
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
