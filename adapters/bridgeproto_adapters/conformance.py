"""Conformance checks every ``SandboxClient`` must pass.

Adapter authors run them against their own client::

    from bridgeproto_adapters.conformance import check_sandbox_client
    await check_sandbox_client(MyClient(...))

Each check raises ``AssertionError`` naming what the client got wrong.
Pass ``live_process=False`` for clients without live processes: they must
then raise ``NotSupported`` from ``open_process``.
"""

from __future__ import annotations

import anyio

from .sandboxes import CommandTimeout, NotSupported, SandboxClient, SandboxError

_ALL_BYTES = bytes(range(256)) * 4


async def check_run(client: SandboxClient) -> None:
    result = await client.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result.exit_code == 3, f"exit code {result.exit_code}, expected 3"
    assert result.stdout == b"out\n", f"stdout {result.stdout!r}"
    assert result.stderr == b"err\n", f"stderr {result.stderr!r}"
    shell = await client.run("printf '%s' \"$GREETING\"", env={"GREETING": "hello there"})
    assert shell.stdout == b"hello there", f"env not passed: {shell.stdout!r}"
    where = await client.run(["pwd"], cwd="/")
    assert where.stdout.strip() == b"/", f"cwd not applied: {where.stdout!r}"
    # Binary in, text out: some clients can only return stdout as text.
    dumped = await client.run(["sh", "-c", "od -An -v -tx1 | tr -d ' \\n'"], stdin=_ALL_BYTES)
    assert dumped.stdout.strip() == _ALL_BYTES.hex().encode(), "stdin did not arrive intact"


async def check_timeout(client: SandboxClient) -> None:
    try:
        await client.run(["sleep", "10"], timeout=0.5)
    except CommandTimeout:
        return
    raise AssertionError("a command past its timeout did not raise CommandTimeout")


async def check_files(client: SandboxClient) -> None:
    path = "/tmp/bridgeproto-conformance/nested/file.bin"
    await client.write_file(path, _ALL_BYTES)
    assert await client.read_file(path) == _ALL_BYTES, "a file did not read back as written"
    await client.write_file(path, b"shorter")
    assert await client.read_file(path) == b"shorter", "a rewritten file kept old bytes"
    seen = await client.run(["cat", path])
    assert seen.stdout == b"shorter", "a written file is not visible to commands"
    try:
        await client.read_file("/tmp/bridgeproto-conformance/missing")
    except SandboxError:
        return
    raise AssertionError("reading a missing file did not raise SandboxError")


async def check_live_process(client: SandboxClient, live_process: bool = True) -> None:
    if not live_process:
        try:
            await client.open_process(["cat"])
        except NotSupported:
            return
        raise AssertionError("a client without live processes must raise NotSupported")
    process = await client.open_process(["cat"])
    try:
        with anyio.fail_after(10):
            await process.stream.send(b"ping\n")
            got = b""
            while len(got) < 5:
                got += await process.stream.receive()
        assert got == b"ping\n", f"the live process echoed {got!r}"
    finally:
        await process.stop()
    assert process.returncode is not None, "stop() left the process running"
    await process.stop()  # idempotent


async def check_sandbox_client(client: SandboxClient, *, live_process: bool = True) -> None:
    """Run every check against ``client``."""
    await check_run(client)
    await check_timeout(client)
    await check_files(client)
    await check_live_process(client, live_process)
