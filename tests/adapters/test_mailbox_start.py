"""Starts that fail (issue 23 points 4 and 5): what they leave behind and
what they say, through real bwrap sandboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import attrs
import pytest

from bridgeproto_adapters.conformance import check_run
from bridgeproto_adapters.launch import BridgeStartError, open_bridge
from bridgeproto_adapters.sandboxes import (
    BwrapSandbox,
    Faults,
    HarnessSandbox,
    LiveProcess,
    LocalSandbox,
    SimulatedProvider,
)
from sandbox_kinds import need_bwrap
from upstream import running_upstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@attrs.frozen
class TextResult:
    exit_code: int
    stdout: str
    stderr: str


class TextClient:
    """A client whose ``run`` answers text, as some providers' SDKs do: the
    command really runs in ``inner``."""

    live_processes = False

    def __init__(self, inner: BwrapSandbox) -> None:
        self.inner = inner

    async def run(self, command: Any, **kwargs: Any) -> TextResult:
        result = await self.inner.run(command, **kwargs)
        return TextResult(result.exit_code, result.stdout.decode(), result.stderr.decode())

    async def read_file(self, path: str) -> bytes:
        return await self.inner.read_file(path)

    async def write_file(self, path: str, data: bytes) -> None:
        await self.inner.write_file(path, data)

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        return await self.inner.open_process(command, env=env)

    async def aclose(self) -> None:
        pass


@asynccontextmanager
async def offline() -> AsyncIterator[BwrapSandbox]:
    need_bwrap()
    sandbox = await BwrapSandbox.create()
    try:
        yield sandbox
    finally:
        await sandbox.aclose()


async def bridge_dirs(sandbox: BwrapSandbox) -> list[bytes]:
    """The sandbox sides' private directories in this sandbox (each bridge has one)."""
    return (await sandbox.run("ls -d /tmp/bridgeproto-*/ 2>/dev/null")).stdout.split()


async def test_a_client_answering_text_is_told_so_and_its_failed_start_leaves_nothing() -> None:
    """The start call ran (the daemon started) before its answer showed the
    client's mistake: the daemon is reaped, and the next bridge on the same
    port starts (it used to fail with 'Address already in use')."""
    async with running_upstream() as upstream, offline() as sandbox:
        async with open_bridge(sandbox, upstream.url, transport="mailbox"):
            pass  # the archive is in the sandbox now: the next start call starts the daemon
        with pytest.raises(TypeError) as raised:
            async with open_bridge(TextClient(sandbox), upstream.url):
                pass
        assert str(raised.value) == (
            "the sandbox client's run() returned stdout as str 'ready\\n'; it must return"
            " a CommandResult with stdout as bytes"
        )
        assert await bridge_dirs(sandbox) == []
        async with open_bridge(sandbox, upstream.url, transport="mailbox") as bridge:
            assert bridge.session.conn.failure is None


async def test_a_port_held_by_an_earlier_bridge_says_so_and_what_to_do() -> None:
    async with (
        running_upstream() as upstream,
        offline() as sandbox,
        open_bridge(sandbox, upstream.url, transport="mailbox") as first,
    ):
        (held,) = await bridge_dirs(sandbox)
        with pytest.raises(BridgeStartError) as raised:
            async with open_bridge(sandbox, upstream.url, transport="mailbox"):
                pass
        message = str(raised.value)
        assert message.startswith("the sandbox side did not start (status 2: 127.0.0.1:13131")
        assert "is in use in the sandbox: an earlier bridge there still holds it" in message
        assert "give this bridge another address (open_bridge(listen=...), run --listen)" in message
        assert message.count("did not start") == 1, message
        assert await bridge_dirs(sandbox) == [held]  # the failed one left nothing
        assert first.session.conn.failure is None


async def test_a_start_that_fails_says_the_status_and_stderr_of_the_call() -> None:
    async with running_upstream() as upstream, offline() as sandbox:
        with pytest.raises(BridgeStartError) as raised:
            async with open_bridge(sandbox, upstream.url, python="/nowhere/python3"):
                pass
    message = str(raised.value)
    assert message.startswith("the sandbox has no working /nowhere/python3 on its PATH")
    assert "(/nowhere/python3 -c: status 127: " in message  # the probe's own status
    assert "(the start call: status 127: " in message and "not found" in message, message


async def test_a_control_plane_that_keeps_failing_fails_the_start_clearly() -> None:
    """Every try of the start call fails: the caller gets a BridgeStartError
    that says how often and what the provider said, not the provider's
    error bare."""
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults(fail_before=1.0))
        with pytest.raises(BridgeStartError) as raised:
            async with open_bridge(HarnessSandbox(provider, "down"), upstream.url):
                pass
    message = str(raised.value)
    assert "control plane failed 4 times in a row" in message, message
    assert "simulated: upload_bytes failed before it ran" in message  # the first step
    assert await bridge_dirs(real) == []


async def test_the_conformance_check_names_the_method_and_type_and_shows_stderr() -> None:
    need_bwrap()
    sandbox = await BwrapSandbox.create()
    try:
        with pytest.raises(AssertionError, match=r"run\(\) returned stdout as str 'out\\n'"):
            await check_run(TextClient(sandbox))  # type: ignore[arg-type]
    finally:
        await sandbox.aclose()

    class NoShell(LocalSandbox):  # an image without sh on its PATH
        def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
            return ["env", "PATH=/nowhere", *argv]

    with pytest.raises(AssertionError) as raised:
        async with aclosing(NoShell()) as sandbox:
            await check_run(sandbox)
    assert "exit code 127, expected 3" in str(raised.value)
    assert "env: 'sh': No such file or directory" in str(raised.value)  # the why, from stderr


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_the_sandbox_side_ignores_the_sandboxs_python_settings(transport: str) -> None:
    """The sandbox side runs the archive isolated and without site: a
    PYTHONPATH in its start's environment holding a sitecustomize, and a
    usercustomize in the user site of its HOME (code inside could leave
    either), are never imported, and the bridge works."""
    async with running_upstream() as upstream, offline() as sandbox:
        env = {"PYTHONPATH": "/tmp/planted", "HOME": "/tmp/home", "PATH": "/usr/bin:/bin"}
        user_site = await sandbox.run(
            ["python3", "-c", "import site; print(site.getusersitepackages())"], env=env
        )
        planted = {
            "/tmp/planted/sitecustomize.py": "/tmp/planted/imported",
            user_site.stdout.decode().strip() + "/usercustomize.py": "/tmp/home/imported",
        }
        for path, marker in planted.items():
            await sandbox.write_file(path, f"open({marker!r}, 'w').close()\n".encode())
        async with open_bridge(sandbox, upstream.url, transport=transport, env=env) as bridge:
            assert bridge.session.conn.failure is None
        markers = " ".join(planted.values())
        found = await sandbox.run(f"for m in {markers}; do test -e $m && echo $m; done; true")
    assert found.stdout == b"", found


async def test_a_stop_the_control_plane_cannot_finish_warns_and_does_not_raise() -> None:
    """The provider fails every call once the bridge is up: the stop cannot
    reap the sandbox side, which ends by itself with its session. Leaving the
    bridge raises nothing (a harness's teardown goes on) and says why."""
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults())
        with pytest.warns(RuntimeWarning, match="the sandbox side could not be reaped"):
            async with open_bridge(HarnessSandbox(provider, "gone"), upstream.url):
                provider.faults = Faults(fail_before=1.0)
