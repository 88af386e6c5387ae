"""A harness host runs hundreds of bridges in one process: nothing in the
host side may be limited to the first 1,024 descriptors (``select()`` is),
and a bridge may cost no thread of its own."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

from bridge import bridge
from bridgeproto_adapters import launch
from bridgeproto_adapters.launch import BridgeStartError, open_bridge
from bridgeproto_adapters.sandboxes import BwrapSandbox, SandboxError
from sandbox_kinds import need_bwrap
from upstream import running_upstream

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def descriptors_past(number: int) -> Iterator[None]:
    """Hold enough descriptors that every new one numbers above ``number``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = number + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail(f"the hard descriptor limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < number:
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_pooled_upstream_connections_past_descriptor_1023() -> None:
    with descriptors_past(1100):
        async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
            for _ in range(3):  # the second and third take the pooled connection
                response = await client.post("/echo", content=b"x")
                assert response.status_code == 200
            assert b.upstream.connections == 1


# The event loops' worker pools (getaddrinfo, large file writes) are shared by
# every bridge and grow with concurrent calls, not with bridges.
POOLS = ("AnyIO worker thread", "asyncio_", "Trio thread ")


def threads() -> int:
    """The process's threads (kernel tasks, so not only Python's), pools aside."""
    pooled = sum(t.name.startswith(POOLS) for t in threading.enumerate())
    return len(os.listdir("/proc/self/task")) - pooled


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_a_bridge_costs_the_host_no_thread(transport: str) -> None:
    # (asyncio's child watcher kept a thread for each live child: the
    # holder and the channel process, two or more a bridge.)
    need_bwrap()
    async with running_upstream() as upstream, contextlib.AsyncExitStack() as stack:
        counts = []
        for _ in range(4):
            sandbox = await BwrapSandbox.create()
            stack.push_async_callback(sandbox.aclose)
            url = upstream.url + "/rollout/k"
            await stack.enter_async_context(open_bridge(sandbox, url, transport=transport))
            counts.append(threads())
        assert counts[-1] == counts[0], counts


class ChannelsRefused(BwrapSandbox):
    """Starts the sandbox side, then refuses every channel: live processes,
    and the mailbox's calls (as a provider too busy to take them in time)."""

    async def run(self, command, **kwargs):  # type: ignore[no-untyped-def, override]
        if list(command[1:4]) == ["-I", "-S", "-c"]:  # a mailbox call
            raise SandboxError("the provider refused the call")
        return await super().run(command, **kwargs)

    async def open_process(self, command, **kwargs):  # type: ignore[no-untyped-def, override]
        raise SandboxError("the provider refused the process")


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_a_start_that_cannot_finish_is_one_bridge_start_error(transport: str) -> None:
    need_bwrap()
    async with running_upstream() as upstream:
        sandbox = await ChannelsRefused.create()
        try:
            with pytest.raises(BridgeStartError) as caught:
                async with open_bridge(
                    sandbox, upstream.url + "/k", transport=transport, resume_timeout=1.0
                ):
                    pass
        finally:
            await sandbox.aclose()
    assert "did not answer" in str(caught.value), caught.value
    assert "the provider refused the" in str(caught.value), caught.value


async def test_bridges_opened_together_start_in_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    # A start is a Python start in the sandbox (CPU-bound) that must finish
    # within the handshake timeout: hundreds at once on a small host all
    # took too long. In one event loop, at most STARTING_AT_ONCE start at a
    # time; the others wait their turn, and then every one serves.
    need_bwrap()
    monkeypatch.setattr(launch, "STARTING_AT_ONCE", 2)
    starting = 0
    most = 0

    class Counted(BwrapSandbox):
        async def run(self, command, **kwargs):  # type: ignore[no-untyped-def, override]
            nonlocal starting, most
            daemon = "--daemon" in " ".join(command)
            starting += daemon
            most = max(most, starting)
            try:
                return await super().run(command, **kwargs)
            finally:
                starting -= daemon

    async with running_upstream() as upstream, contextlib.AsyncExitStack() as stack:
        sandboxes = [await Counted.create() for _ in range(5)]
        for sandbox in sandboxes:
            stack.push_async_callback(sandbox.aclose)
        bridges: list[object] = []
        all_up, done = anyio.Event(), anyio.Event()

        async def hold(sandbox: BwrapSandbox) -> None:
            async with open_bridge(sandbox, upstream.url + "/k") as bridge:
                bridges.append(bridge)
                if len(bridges) == len(sandboxes):
                    all_up.set()
                await done.wait()

        async with anyio.create_task_group() as tg:
            for sandbox in sandboxes:
                tg.start_soon(hold, sandbox)
            await all_up.wait()
            done.set()
    assert most == 2, most
