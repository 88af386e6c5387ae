"""The places the project uses a dependency's private attributes, each
pinned here so that a release of the dependency that moves them fails this
test loudly instead of turning a check off in silence."""

from __future__ import annotations

import anyio
import h11
import pytest

from bridgeproto.http import HttpPolicy, h11_connection
from bridgeproto_adapters.sandbox_side import _stop_eager_reading


def test_h11_still_exposes_the_size_of_the_chunk_it_reads() -> None:
    # _http.py reads it to refuse a chunk past the body limit before h11
    # waits for its bytes (h11 itself takes a size of up to 20 hex digits).
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1f\r\nab")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.Data)
    assert conn._reader._bytes_in_chunk == 0x1F - 2  # type: ignore[union-attr]


def test_an_h11_that_moved_the_chunk_size_stops_the_http_layer_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridgeproto import _http

    _http.check_h11()  # this h11 has it

    class ChunkedReaderWithoutSize:  # what a release that renamed the field looks like
        pass

    monkeypatch.setattr(_http, "_ChunkedReader", ChunkedReaderWithoutSize)
    with pytest.raises(ImportError, match=r"_bytes_in_chunk.*install h11 0\.14 to 0\.16"):
        _http.check_h11()


def test_h11_still_keeps_the_receive_buffer_the_http_layer_replaces() -> None:
    from bridgeproto._http import _BodyPassingBuffer

    conn = h11_connection(h11.SERVER)
    assert isinstance(conn._receive_buffer, _BodyPassingBuffer)
    plain = h11.Connection(h11.SERVER)._receive_buffer
    assert isinstance(plain._data, bytearray)
    assert isinstance(plain._next_line_search, int)
    assert isinstance(plain._multiple_lines_search, int)


def test_an_h11_that_moved_the_receive_buffer_stops_the_http_layer_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridgeproto import _http

    class BufferOfAnotherShape:  # what a release that rewrote the buffer looks like
        pass

    monkeypatch.setattr(_http, "_ReceiveBuffer", BufferOfAnotherShape)
    with pytest.raises(ImportError, match=r"_receive_buffer.*install h11 0\.14 to 0\.16"):
        _http.check_h11()


@pytest.mark.parametrize("split", [1, 7, 100, 4096])
def test_bodies_read_through_the_replaced_buffer_come_whole_and_in_order(split: int) -> None:
    """A body taken as the whole buffer or in part, then a pipelined request
    after it and one more body, fed in pieces of ``split`` bytes; the same
    events as h11's own buffer gives, byte for byte."""
    body = bytes(range(256)) * 40
    wire = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    )

    def events(conn: h11.Connection) -> list[tuple[str, bytes]]:
        seen: list[tuple[str, bytes]] = []
        for start in range(0, len(wire), split):
            conn.receive_data(wire[start : start + split])
            while (event := conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Request):
                    seen.append(("request", event.target))
                elif isinstance(event, h11.Data):
                    seen.append(("data", bytes(event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    seen.append(("end", b""))
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
                else:
                    raise AssertionError(event)
        return seen

    ours = events(h11_connection(h11.SERVER))
    assert ours == events(h11.Connection(h11.SERVER))
    assert b"".join(d for kind, d in ours if kind == "data") == body + b"hello"
    assert [kind for kind, _ in ours if kind != "data"] == ["request", "end", "request", "end"]


def test_a_body_read_whole_is_handed_over_as_the_bytes_read() -> None:
    """What the replaced buffer is for: bytes that arrive in an empty buffer
    and that a body takes whole reach the body event (h11's and the agent
    side's) as the very object read, not a copy; a part of them is copied."""
    from bridgeproto.http import AgentBody, AgentConnection, AgentRequest

    conn = h11_connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    chunk = bytes(200_000)
    conn.receive_data(chunk)
    event = conn.next_event()
    assert isinstance(event, h11.Data) and event.data is chunk
    conn.receive_data(bytes(100_000) + b"GET / HTTP/1.1\r\n")  # the body's end, then more
    event = conn.next_event()
    assert isinstance(event, h11.Data) and len(event.data) == 100_000
    assert isinstance(conn.next_event(), h11.EndOfMessage)

    agent = AgentConnection(HttpPolicy())
    agent.receive_data(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n")
    assert isinstance(agent.next_event(), AgentRequest)
    chunk = bytes(65536)
    agent.receive_data(chunk)
    body = agent.next_event()
    assert isinstance(body, AgentBody) and body.data is chunk


def test_the_early_chunk_refusals_still_fire() -> None:
    # What the private field serves: a chunk past the body limit, or larger
    # than any body, is refused from its size line alone.
    from bridgeproto.http import AgentConnection, AgentRefused, AgentRequest, HttpPolicy

    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    for policy, size_line, status in (
        (HttpPolicy(max_body_bytes=10), b"b\r\n", 413),
        (HttpPolicy(), b"8000000000000000\r\n", 400),
    ):
        agent = AgentConnection(policy)
        agent.receive_data(head)
        assert isinstance(agent.next_event(), AgentRequest)
        assert agent.next_event() is None
        agent.receive_data(size_line)
        refused = agent.next_event()
        assert isinstance(refused, AgentRefused) and refused.refusal.status == status


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_anyio_asyncio_sockets_still_have_a_transport_to_pause() -> None:
    # sandbox_side.py pauses an accepted connection's reading up front, or an
    # agent's upload would be buffered whole.
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with await anyio.connect_tcp("127.0.0.1", port), anyio.create_task_group() as tg:
            accepted: list[anyio.abc.SocketStream] = []

            async def take(stream: anyio.abc.SocketStream) -> None:
                accepted.append(stream)
                tg.cancel_scope.cancel()

            tg.start_soon(listener.serve, take)
        transport = accepted[0]._transport  # type: ignore[attr-defined]
        assert transport.is_reading()
        _stop_eager_reading(accepted[0])
        assert not transport.is_reading()
        await accepted[0].aclose()
