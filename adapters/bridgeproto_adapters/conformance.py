"""Conformance checks every ``SandboxClient`` must pass.

Adapter authors run them against their own client::

    from bridgeproto_adapters.conformance import check_sandbox_client
    await check_sandbox_client(MyClient(...))

Each check raises ``AssertionError`` naming what the client got wrong.
Pass ``live_process=False`` for clients without live processes: they must
then raise ``NotSupported`` from ``open_process``.

``check_channels(client, transport)`` holds a transport to what a session
needs of its channels (cuts, damage, resume, a final failure), over a real
bridge into the client's sandbox (``channel_checks``)::

    await check_channels(MyClient(...), "mailbox")

``check_offline_isolation(client)`` holds a sandbox to the offline bar from
inside, as untrusted code would try it, and returns a report of what held::

    report = await check_offline_isolation(MyClient(...))
    assert report.held, report
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pkgutil
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import anyio
import attrs

from .channel_checks import check_channels as check_channels
from .sandboxes import (
    CommandResult,
    CommandTimeout,
    NotSupported,
    SandboxClient,
    SandboxError,
    check_result,
    stop_process,
)

_ALL_BYTES = bytes(range(256)) * 4


def _checked(result: object) -> CommandResult:
    """``result`` if ``run`` returned the right types, else an AssertionError saying which."""
    try:
        return check_result(result)
    except TypeError as exc:
        raise AssertionError(str(exc)) from None


async def check_run(client: SandboxClient) -> None:
    result = _checked(await client.run(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    said = f"stdout {result.stdout[-300:]!r}, stderr {result.stderr[-300:]!r}"
    assert result.exit_code == 3, f"exit code {result.exit_code}, expected 3 ({said})"
    assert result.stdout == b"out\n", f"stdout should be b'out\\n' ({said})"
    assert result.stderr == b"err\n", f"stderr should be b'err\\n' ({said})"
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
            await process.write(b"ping\n")
            got = b""
            while len(got) < 5:
                data = await process.read(1024)
                assert data, f"the live process's output ended after {got!r}"
                got += data
            assert got == b"ping\n", f"the live process echoed {got!r}"
            await process.close()
            assert await process.read(1024) == b"", "read() after close() must return b''"
    finally:
        await stop_process(process)
    await stop_process(process)  # idempotent, after the end too
    sleeper = await client.open_process(["sleep", "60"])
    try:
        reading = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def read_until_closed() -> None:
                reading.set()
                assert await sleeper.read(1024) == b"", "read() must return b'' once closed"

            tg.start_soon(read_until_closed)
            await reading.wait()
            with anyio.fail_after(10):
                await sleeper.close()  # wakes the read, though sleep holds its stdout
    finally:
        with anyio.fail_after(10):
            await sleeper.kill()
            await sleeper.wait()


async def check_sandbox_client(client: SandboxClient, *, live_process: bool = True) -> None:
    """Run every check against ``client``."""
    await check_run(client)
    await check_timeout(client)
    await check_files(client)
    await check_live_process(client, live_process)


# ------------------------------------------------------------------ isolation


@attrs.frozen
class Finding:
    """One property of an offline sandbox, as the probe inside found it."""

    name: str
    held: bool
    detail: str


@attrs.frozen
class IsolationReport:
    sandbox: str
    findings: list[Finding]

    @property
    def holes(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.held]

    @property
    def held(self) -> bool:
        return not self.holes

    def __str__(self) -> str:
        lines = [f"isolation of {self.sandbox}:"]
        for finding in self.findings:
            lines.append(
                f"  {'held' if finding.held else 'HOLE'}  {finding.name}: {finding.detail}"
            )
        return "\n".join(lines)


def _host_addresses() -> list[str]:
    """This host's own IPv4 addresses (from the kernel's local routes)."""
    found = {"127.0.0.1"}
    try:
        with open("/proc/net/fib_trie") as file:
            lines = file.read().splitlines()
    except OSError:
        return sorted(found)
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL":
            found.add(previous.split()[-1])
    return sorted(found)


def _unix_listener(directory: str, name: str) -> socket.socket | None:
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(directory, name)
        sock.bind(path)
        os.chmod(path, 0o777)  # only the sandbox may stand in the way, not permissions
        sock.listen(8)
        sock.setblocking(False)
        return sock
    except OSError:
        return None


def _accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.accept()[0].close()
        except OSError:
            return count
        count += 1


INHERITED_VARIABLE = "BRIDGEPROTO_CHECK_INHERITED"


async def check_offline_isolation(
    client: SandboxClient,
    *,
    python: str = "python3",
    forbidden: Sequence[str] = (),
    watch: float = 2.0,
) -> IsolationReport:
    """Attack ``client`` from inside as untrusted code would, and report each property.

    On the host it opens a TCP listener on every local address, a UDP socket,
    Unix sockets under ``/run``, ``/var/tmp`` and the temp directory, a file
    and a sleeping process with a marker secret in its argv and environment;
    it puts a second marker in its own environment and holds an inheritable
    descriptor, neither of which may reach the probe or anything beside it.
    Then a probe inside (``python``, standard library only) tries to reach or
    read each, to join another network namespace, to mount, to change the
    network configuration, and to write in system directories and in
    ``forbidden`` (for example the paths exposed read-only); for ``watch``
    seconds it then looks at every process it can see for the second marker
    and the descriptor, while the host starts one command after another.
    Nothing is asserted: the report says what held.
    """
    marker = f"bridgeproto-isolation-marker-{secrets.token_hex(8)}"
    name = f"bridgeproto-check-{secrets.token_hex(4)}.sock"
    workdir = tempfile.mkdtemp(prefix="bridgeproto-check-")
    os.chmod(workdir, 0o755)
    tcp = socket.create_server(("0.0.0.0", 0), backlog=64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    tcp.setblocking(False)
    udp.setblocking(False)
    unix = [
        (os.path.join(d, name), sock)
        for d in ("/run", "/var/tmp", workdir)
        if (sock := _unix_listener(d, name)) is not None
    ]
    secret_file = os.path.join(workdir, "secret")
    with open(secret_file, "w") as file:
        file.write(marker)
    os.chmod(secret_file, 0o644)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", marker],
        env={"BRIDGEPROTO_CHECK_SECRET": marker},
        stdin=subprocess.DEVNULL,
    )
    addresses = _host_addresses()
    # What a careless launcher would hand on: this process's environment and
    # a descriptor not marked close-on-exec.
    inherited = f"bridgeproto-inherited-marker-{secrets.token_hex(8)}"
    saved_variable = os.environ.get(INHERITED_VARIABLE)
    os.environ[INHERITED_VARIABLE] = inherited
    descriptor = os.open(secret_file, os.O_RDONLY)
    os.set_inheritable(descriptor, True)
    identity = os.fstat(descriptor)
    targets = {
        "marker": marker,
        "inherited": inherited,
        "descriptor": [identity.st_dev, identity.st_ino],
        "watch": watch,
        "tcp": [[address, tcp.getsockname()[1]] for address in addresses],
        "udp": [[address, udp.getsockname()[1]] for address in addresses],
        "unix": [path for path, _ in unix],
        "file": secret_file,
        "forbidden": list(forbidden),
    }
    try:
        # get_data: the probe's source even from inside a zipapp
        probe = pkgutil.get_data(__name__.rpartition(".")[0], "isolation_probe.py") or b""
        probed: list[CommandResult] = []

        async def run_probe() -> None:
            source = [python, "-c", probe.decode()]
            stdin = json.dumps(targets).encode()
            probed.append(await client.run(source, stdin=stdin, timeout=120 + watch))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_probe)
            while not probed:  # commands for the probe to watch being started
                await client.run(["true"], timeout=60)
        result = probed[0]
        try:
            found = json.loads(result.stdout)
        except ValueError:
            raise SandboxError(
                f"the isolation probe did not run in {client.name} (exit {result.exit_code}:"
                f" {result.stderr.decode(errors='replace').strip()[-500:]}); it needs {python}"
            ) from None
        datagrams = 0
        with contextlib.suppress(OSError):
            while udp.recv(1024) == marker.encode():
                datagrams += 1
        found["no UDP to the host"] = [
            datagrams == 0,
            f"{datagrams} datagrams arrived" if datagrams else "none arrived",
        ]
        accepted = _accepted(tcp)
        if accepted and found["no TCP to the host"][0]:
            found["no TCP to the host"] = [False, f"{accepted} connections arrived"]
        reached = [path for path, sock in unix if _accepted(sock)]
        if reached:
            found["no host Unix socket is reachable"] = [False, f"reached {', '.join(reached)}"]
    finally:
        os.close(descriptor)
        if saved_variable is None:
            del os.environ[INHERITED_VARIABLE]
        else:
            os.environ[INHERITED_VARIABLE] = saved_variable
        holder.kill()
        holder.wait()
        for closing in (tcp, udp, *(sock for _, sock in unix)):
            closing.close()
        for path, _ in unix:
            with contextlib.suppress(OSError):
                os.unlink(path)
        shutil.rmtree(workdir, ignore_errors=True)
    findings = [Finding(key, bool(value[0]), str(value[1])) for key, value in found.items()]
    return IsolationReport(client.name, findings)
