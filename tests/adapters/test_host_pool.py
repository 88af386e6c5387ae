"""The host side's keep-alive pool toward the upstream, as the docs promise
it (docs/adapters.md, ``HostOptions``: ``max_idle_connections``, default 32),
and what it does with an idle connection the upstream has written on or
closed."""

from __future__ import annotations

import anyio
import anyio.abc
import h11
import httpx
import pytest

from bridge import bridge
from bridgeproto_adapters.host_side import HostOptions, UpstreamPool

pytestmark = pytest.mark.anyio
AT_ONCE = 40  # more than the pool keeps


async def test_the_pool_keeps_32_idle_connections_by_default() -> None:
    assert HostOptions().max_idle_connections == 32
    async with (
        bridge() as b,
        httpx.AsyncClient(base_url=b.url, limits=httpx.Limits(max_connections=100)) as client,
    ):

        async def one() -> None:
            answer = await client.get("/sse?n=1&gated=1")  # held until its token comes
            assert answer.status_code == 200

        async def every_request_waits_at_the_upstream() -> None:
            # The requests cross real sockets and the sandbox side's process:
            # count them where they are held, not this loop's idle tasks.
            with anyio.fail_after(30):
                while b.upstream.sse_gate.statistics().tasks_waiting_receive < AT_ONCE:
                    await anyio.sleep(0.01)

        async def round_of_requests() -> int:
            """Opened connections, with AT_ONCE requests held at the upstream at once."""
            async with anyio.create_task_group() as tg:
                for _ in range(AT_ONCE):
                    tg.start_soon(one)
                await every_request_waits_at_the_upstream()
                opened = b.upstream.connections
                for _ in range(AT_ONCE):
                    b.upstream.sse_gate_send.send_nowait(None)
            return opened

        assert await round_of_requests() == AT_ONCE  # one connection each
        # 32 were kept; the next round needs only the rest.
        assert await round_of_requests() == AT_ONCE + (AT_ONCE - 32)


@pytest.mark.parametrize(
    "unasked",
    [b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n", b""],
    ids=["writes", "closes"],
)
async def test_an_idle_connection_the_upstream_wrote_on_or_closed_is_not_reused(
    unasked: bytes, anyio_backend: str
) -> None:
    """An upstream that sends something unasked on an idle keep-alive
    connection (a 408, say), or closes it: the next request opens a new
    connection, also when the bytes were already read off the socket
    while it sat in the pool."""
    go_on = anyio.Event()

    async def upstream(stream: anyio.abc.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            try:
                head += await stream.receive()
            except anyio.EndOfStream:
                return  # (the second connection, closed unused)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await go_on.wait()
        if unasked:
            await stream.send(unasked)
            await anyio.sleep_forever()
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, upstream)
        pool = UpstreamPool("127.0.0.1", port, HostOptions())
        conn = await pool.acquire()
        await conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        await conn.send(h11.EndOfMessage())
        assert isinstance(await conn.next_event(), h11.Response)
        while not isinstance(await conn.next_event(), h11.EndOfMessage):
            pass
        assert pool.keep(conn) and conn.still_open()
        go_on.set()
        with anyio.fail_after(10):  # until this side sees what the upstream did
            while conn.still_open():
                await anyio.sleep(0.01)
        fresh = await pool.acquire()
        assert fresh is not conn and pool.connections_opened == 2
        await fresh.stream.aclose()
        tg.cancel_scope.cancel()
