"""The benchmark's reference rows: what the channel itself can do, measured
in the same run as the bridge, with socat and no Python in the data path.

* **limit**: a raw byte pipe over the process-start path the bridge uses.
  socat listens in the sandbox with its stdio as the other end; that stdio
  is a live process of the sandbox, which socat on the host wires to the
  upstream. One connection, no framing: the floor for latency and the
  ceiling for bulk over this transport.
* **shared kernel**: a Unix socket bind-mounted into the sandbox, socat on
  both ends, as designs do where the sandbox shares the host's kernel. It
  serves many connections; the peer to beat, not possible over a remote
  control plane.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator

import anyio
import anyio.abc

from ..providers import open_host_sandbox
from ..sandboxes import HostCommandSandbox
from ..sandboxes.offline import SANDBOX_UID
from ..streams import grow_pipe
from .processes import find_process

LIMIT_PORT = 13133
SHARED_PORT = 13134
# Reads and writes of up to 1 MiB (socat's default is 8 KiB), as the bridge
# may make; TCP sockets get ``nodelay`` where they are made, as the bridge's are.
_FAST = ("-b", str(1 << 20))
MISSING = (
    "socat is not installed (apt-get install socat): the limit and shared-kernel"
    " reference rows are left out"
)


def have_socat() -> bool:
    return shutil.which("socat") is not None


async def _until_listening(process: anyio.abc.Process) -> None:
    """Read socat's notices (``-d -d``) until its listener is up."""
    assert process.stderr is not None
    said = b""
    with anyio.fail_after(10):
        while b"listening on" not in said:
            try:
                said += await process.stderr.receive()
            except anyio.EndOfStream:
                raise RuntimeError(f"socat did not start: {said.decode()[-300:]}") from None


async def _drain(stream: anyio.abc.ByteReceiveStream) -> None:
    async for _ in stream:
        pass


async def _stop(process: anyio.abc.Process) -> None:
    with anyio.move_on_after(5):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    await process.aclose()


class References:
    """A sandbox of its own for the two reference systems, with the shared
    kernel's socket directory exposed to it."""

    def __init__(self, sandbox: HostCommandSandbox, directory: str, upstream_port: int) -> None:
        self.sandbox = sandbox
        self.directory = directory
        self.upstream_port = upstream_port
        self.pids: dict[str, tuple[int, int]] = {}  # system: (host pid, sandbox pid)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, kind: str, upstream_port: int) -> AsyncIterator[References]:
        directory = tempfile.mkdtemp(prefix="bridgeproto-bench-")
        os.chmod(directory, 0o755)
        if os.geteuid() == 0:  # commands in the sandbox run as its user
            os.chown(directory, SANDBOX_UID, SANDBOX_UID)
        sandbox, _ = await open_host_sandbox(kind, rw=[directory])
        references = cls(sandbox, directory, upstream_port)
        try:
            async with references._shared_kernel():
                yield references
        finally:
            await sandbox.aclose()
            shutil.rmtree(directory, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def _shared_kernel(self) -> AsyncIterator[None]:
        path = os.path.join(self.directory, "shared.sock")
        host = await anyio.open_process(
            ["socat", *_FAST, "-d", "-d", f"UNIX-LISTEN:{path},fork,mode=666",
             f"TCP:127.0.0.1:{self.upstream_port},nodelay"],
            stdout=None,
        )  # fmt: skip
        sandbox_side = self.sandbox.start(
            ["socat", *_FAST, "-d", "-d",
             f"TCP-LISTEN:{SHARED_PORT},bind=127.0.0.1,fork,reuseaddr,nodelay",
             f"UNIX-CONNECT:{path}"], stdout=None,
        )  # fmt: skip
        try:
            async with anyio.create_task_group() as tg:
                for process in (host, sandbox_side):
                    await _until_listening(process)
                    # socat notes every connection: read on, or it stops when the pipe is full
                    assert process.stderr is not None
                    tg.start_soon(_drain, process.stderr)
                self.pids["shared"] = (host.pid, _socat_in_sandbox(f"TCP-LISTEN:{SHARED_PORT}"))
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            for process in (sandbox_side, host):
                process.terminate()
                await _stop(process)

    @contextlib.asynccontextmanager
    async def limit_pipe(self) -> AsyncIterator[None]:
        """One raw pipe, for one agent connection: socat in the sandbox
        listens, with its stdio (a live process of the sandbox, as the
        bridge's channel is) piped to socat on the host, connected to the
        upstream."""
        to_sandbox, to_host = os.pipe(), os.pipe()  # (read end, write end) each
        for _, write_end in (to_sandbox, to_host):
            grow_pipe(write_end)  # as the bridge's channel does
        try:
            host = await anyio.open_process(
                ["socat", *_FAST, "STDIO", f"TCP:127.0.0.1:{self.upstream_port},nodelay"],
                stdin=to_host[0], stdout=to_sandbox[1], stderr=None,
            )  # fmt: skip
            sandbox_side = self.sandbox.start(
                ["socat", *_FAST, "-d", "-d",
                 f"TCP-LISTEN:{LIMIT_PORT},bind=127.0.0.1,reuseaddr,nodelay", "STDIO"],
                stdin=to_sandbox[0], stdout=to_host[1],
            )  # fmt: skip
        finally:
            for fd in (*to_sandbox, *to_host):
                os.close(fd)
        try:
            await _until_listening(sandbox_side)
            self.pids["limit"] = (host.pid, _socat_in_sandbox(f"TCP-LISTEN:{LIMIT_PORT}"))
            yield
        finally:
            await _stop(sandbox_side)  # ends when the agent's connection does
            await _stop(host)

    def url(self, system: str) -> str:
        port = LIMIT_PORT if system == "limit" else SHARED_PORT
        return f"http://127.0.0.1:{port}/bench"


def _socat_in_sandbox(marker: str) -> int:
    """The pid, as seen from here, of the socat in the sandbox listening as ``marker``."""
    pid = find_process(b"socat", lambda argv: any(a.startswith(marker.encode()) for a in argv))
    if pid is None:
        raise RuntimeError(f"no socat with {marker} runs in the sandbox")
    return pid
