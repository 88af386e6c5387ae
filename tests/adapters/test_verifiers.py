"""The verifiers runtimes one by one, with the real verifiers package:
``RuntimeSandbox`` over verifiers' own ``SubprocessRuntime`` (the sandbox
client conformance checks, and a bridge on both transports through it),
``OfflineRuntime`` as verifiers drives a runtime, and ``BridgedRuntime``'s
answers to ``host_url``. Rollouts are in test_verifiers_rollouts.py.

In a venv without verifiers these skip (the main one: verifiers 0.4 pins
mcp 2, the dev extra mcp<2); .ci/run runs them in a second venv with
BRIDGEPROTO_REQUIRE_VERIFIERS=1, where they must run.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bridge import free_port
from bridgeproto_adapters import conformance, launch
from bridgeproto_adapters.launch import open_bridge
from sandbox_kinds import need_bwrap
from upstream import running_upstream
from vf_kit import need_verifiers

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # verifiers runs on asyncio only


@asynccontextmanager
async def subprocess_runtime() -> AsyncIterator[Any]:
    need_verifiers()
    from verifiers.v1.runtimes import SubprocessConfig, SubprocessRuntime

    runtime = SubprocessRuntime(SubprocessConfig())
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@asynccontextmanager
async def offline_runtime(**options: Any) -> AsyncIterator[Any]:
    need_verifiers()
    need_bwrap()
    from bridgeproto_adapters.verifiers import OfflineRuntime

    runtime = OfflineRuntime(**options)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def test_runtime_sandbox_passes_the_sandbox_client_checks() -> None:
    from bridgeproto_adapters.verifiers import RuntimeSandbox

    async with subprocess_runtime() as runtime:
        await conformance.check_sandbox_client(RuntimeSandbox(runtime))


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_a_bridge_runs_into_a_verifiers_runtime(transport: str) -> None:
    """Through verifiers' SubprocessRuntime's own run/write/open_process: an
    agent's streamed request crosses and its answer comes back whole."""
    from bridgeproto_adapters.verifiers import RuntimeSandbox

    async with subprocess_runtime() as runtime, running_upstream() as upstream:
        sandbox = RuntimeSandbox(runtime)
        port = free_port()  # the runtime is this host: its listener too
        async with open_bridge(
            sandbox, f"{upstream.url}/rollout/a", listen=("127.0.0.1", port), transport=transport
        ) as bridge:
            assert (
                type(bridge.channels)
                .__name__.lower()
                .startswith("process" if transport == "stream" else "mailbox")
            )
            url = f"http://127.0.0.1:{port}/rollout/a/sse?n=3"
            agent = (
                "import sys, urllib.request;"
                f"sys.stdout.write(urllib.request.urlopen({url!r}).read().decode())"
            )
            result = await sandbox.run([sys.executable, "-c", agent], timeout=30)
            assert result.exit_code == 0, result.stderr
            assert result.stdout.count(b"data: ") == 3


@pytest.mark.parametrize("live_processes", [True, False])
async def test_a_bridge_into_a_runtime_ends_its_sandbox_side_without_the_reaper(
    live_processes: bool,
) -> None:
    """Stopping the bridge lets the sandbox side finish its session and exit
    by itself: the reaper, which kills it only after 5 s, finds it gone.
    (Bridge.stop closed the channel while the session's last frames were
    still to be written, and a runtime process ends its input at once: the
    sandbox side waited for an acknowledgement that never came.)"""
    from bridgeproto_adapters.verifiers import RuntimeSandbox

    async with offline_runtime(live_processes=live_processes) as runtime:
        sandbox = RuntimeSandbox(runtime)
        reaped: list[float] = []
        original = launch._reap_daemon

        async def timed_reap(*args: Any) -> None:
            started = time.monotonic()
            await original(*args)
            reaped.append(time.monotonic() - started)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(launch, "_reap_daemon", timed_reap)
            async with open_bridge(sandbox, "http://127.0.0.1:9/unused"):
                pass
        assert len(reaped) == 1 and reaped[0] < 4.0  # the reaper's patience is 5 s


def test_runtime_classes_need_verifiers_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without verifiers, RuntimeSandbox still imports; the runtime classes
    raise an ImportError naming the extra to install."""
    import bridgeproto_adapters.verifiers as integration

    monkeypatch.setitem(sys.modules, "verifiers", None)
    monkeypatch.setitem(sys.modules, "verifiers.v1", None)
    monkeypatch.setitem(sys.modules, "verifiers.v1.runtimes", None)
    integration._classes.cache_clear()
    try:
        fresh = importlib.reload(integration)
        assert fresh.RuntimeSandbox is not None
        with pytest.raises(ImportError, match=r"pip install 'bridgeproto\[verifiers\]'"):
            fresh.BridgedRuntime  # noqa: B018
    finally:
        integration._classes.cache_clear()


async def test_offline_runtime_runs_as_verifiers_asks() -> None:
    """run, files (relative to the work directory, capped reads), a live
    process, a background program with its log, and no network inside."""
    async with offline_runtime() as runtime:
        from verifiers.v1.errors import SandboxError

        view = runtime.with_env({"TASK_VAR": "task"})
        result = await view.run(["sh", "-c", 'echo "$TASK_VAR $MINE"; pwd'], {"MINE": "mine"})
        assert (result.exit_code, result.stdout) == (0, "task mine\n/tmp/work\n")
        await runtime.write("notes/a.txt", b"\x00\xffbytes")
        assert await runtime.read("notes/a.txt") == b"\x00\xffbytes"
        assert await runtime.read("/tmp/work/notes/a.txt", max_bytes=7) == b"\x00\xffbytes"
        with pytest.raises(SandboxError, match="over the 3 byte limit"):
            await runtime.read("notes/a.txt", max_bytes=3)
        with pytest.raises(SandboxError):
            await runtime.read("missing")
        assert runtime.supports_live_processes
        process = await runtime.open_process(["cat"], {})
        await process.write(b"ping\n")
        assert await anext(process.stdout) == b"ping\n"
        await process.kill()
        await process.wait()
        # terminate reaches the program itself, not only what entered the sandbox
        sleeper = await runtime.open_process(["sh", "-c", "exec sleep 987"], {})
        await runtime.run(["sh", "-c", "until pgrep -f 'slee[p] 987'; do sleep 0.01; done"], {})
        await sleeper.terminate()
        assert await sleeper.wait() != 0
        gone = "for i in $(seq 100); do pgrep -f 'slee[p] 987' || exit 0; sleep 0.05; done"
        left = await runtime.run(["sh", "-c", gone], {})  # 5 s for it to go
        assert left.stdout == "", "the program outlived terminate()"
        await runtime.run_background(["sh", "-c", "echo served; sleep 30"], {}, "server.log")
        wait_for_log = "until test -s server.log; do sleep 0.01; done; cat server.log"
        seen = await runtime.run(["sh", "-c", wait_for_log], {})
        assert seen.stdout == "served\n"
        online = await runtime.run(
            ["python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), 3)"], {}
        )
        assert online.exit_code != 0 and "unreachable" in online.stderr.lower()


async def test_offline_runtime_can_hide_its_live_processes() -> None:
    async with offline_runtime(live_processes=False) as runtime:
        assert not runtime.supports_live_processes
        with pytest.raises(NotImplementedError, match="live processes are hidden"):
            await runtime.open_process(["cat"], {})
        from bridgeproto_adapters.verifiers import RuntimeSandbox

        await conformance.check_sandbox_client(RuntimeSandbox(runtime), live_process=False)


async def test_offline_runtime_alone_names_the_fix_for_host_urls() -> None:
    need_verifiers()
    from verifiers.v1.errors import SandboxError

    from bridgeproto_adapters.verifiers import OfflineRuntime

    runtime = OfflineRuntime()
    with pytest.raises(SandboxError, match=r"BridgedRuntime\(OfflineRuntime"):
        runtime.host_url("http://127.0.0.1:8000/v1")
    assert runtime.host_url("https://api.example.com/v1") == "https://api.example.com/v1"
    with pytest.raises(ValueError, match="choose auto, bwrap or unshare"):
        OfflineRuntime(sandbox="local")


async def test_bridged_runtime_answers_host_urls_from_every_view() -> None:
    """Each loopback URL gets an outward route of its own, the path kept and
    the query too; the same URL the same route; other URLs come back
    unchanged; a with_env view shares the bridge; the runtime says it is
    local and carries inner's config and live processes."""
    need_verifiers()
    need_bwrap()
    from bridgeproto_adapters.verifiers import BridgedRuntime, OfflineRuntime

    inner = OfflineRuntime(live_processes=False)
    runtime = BridgedRuntime(inner)
    await runtime.start()
    try:
        view = runtime.with_env({"A": "1"})
        assert view.host_url("http://127.0.0.1:4000/v1") == "http://127.0.0.1:13131/_routes/1/v1"
        assert runtime.host_url("http://127.0.0.1:4000/v1") == "http://127.0.0.1:13131/_routes/1/v1"
        assert runtime.host_url("http://127.0.0.1:4000/state?x=1") == (
            "http://127.0.0.1:13131/_routes/2/state?x=1"
        )
        assert view.host_url("ws://localhost:9222/devtools/browser/abc") == (
            "ws://127.0.0.1:13131/_routes/3/devtools/browser/abc"
        )
        assert view.host_url("https://example.com/v1") == "https://example.com/v1"
        assert view.bridge is runtime.bridge
        assert type(runtime.bridge.channels).__name__ == "MailboxChannels"
        assert runtime.is_local and runtime.config is inner.config and runtime.type == "subprocess"
        assert not runtime.supports_live_processes
    finally:
        await runtime.stop()
    assert inner.sandbox is None  # inner stopped too


async def test_bridged_runtime_before_start_says_so() -> None:
    need_verifiers()
    from verifiers.v1.errors import SandboxError

    from bridgeproto_adapters.verifiers import BridgedRuntime, OfflineRuntime

    runtime = BridgedRuntime(OfflineRuntime())
    with pytest.raises(SandboxError, match=r"start\(\) the runtime"):
        runtime.host_url("http://127.0.0.1:4000/v1")
    assert runtime.host_url("https://example.com/v1") == "https://example.com/v1"
    with pytest.raises(ValueError, match="choose auto, stream or mailbox"):
        BridgedRuntime(OfflineRuntime(), transport="tcp")
