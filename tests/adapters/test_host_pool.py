"""The host side's keep-alive pool toward the upstream, as the docs promise
it (docs/adapters.md, ``HostOptions``: ``max_idle_connections``, default 32)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from bridge import bridge
from bridgeproto_adapters.host_side import HostOptions

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
