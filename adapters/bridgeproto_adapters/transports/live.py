"""The live-stream transport: channels are processes the host holds in the sandbox.

Inside the sandbox, the sandbox side runs as a **daemon** that owns the
agent listener and the session, and accepts channels on a Unix socket in a
directory only the sandbox's user can enter, fixed by the session id
(``/tmp/bridgeproto-<session id>/channel.sock``). A **channel** starts as a
process the host runs through the sandbox provider (``exec -i``, bwrap,
...), whose stdin and stdout the host holds: it connects to that socket,
says ``READY`` and hands its stdin and stdout to the daemon (``SCM_RIGHTS``,
see ``relay.py``), so the bytes then flow between the host and the daemon
with no process in between. When the stream breaks (the provider drops it,
either end closes it), the host starts another and the session resumes on
it; the daemon, and every agent connection it holds, see no more than a
pause.

A channel process that finds no daemon exits with status 3 and says why:
the host takes that as final (the sandbox side is gone), not as a channel
that merely broke.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc

from ..errors import STREAM_ERRORS
from ..mailbox_call import EXIT_NO_DAEMON
from ..relay import READY
from ..sandboxes import LiveProcess, SandboxClient, SandboxError
from ..streams import FdStream
from . import Acceptor, NoChannel

# ---------------------------------------------------------------- in the sandbox


class PassedChannel(FdStream):
    """The stdin and stdout a channel process handed over; closing it closes
    them, and lets the channel process exit."""

    def __init__(self, read_fd: int, write_fd: int, handle: anyio.abc.UNIXSocketStream) -> None:
        super().__init__(read_fd, write_fd, owned=True)
        self.handle = handle

    async def aclose(self) -> None:
        await super().aclose()
        await self.handle.aclose()


async def accept_channels(
    acceptor: Acceptor,
    path: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path``; each channel process's stdin and stdout become the
    session's next channel."""
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)
    async with listener:
        task_status.started()
        while True:
            handle = await listener.accept()
            assert isinstance(handle, anyio.abc.UNIXSocketStream)
            try:
                _, fds = await handle.receive_fds(16, 2)
            except (*STREAM_ERRORS, ValueError):
                fds = []
            if len(fds) != 2 or not _is_channel(*fds):  # whoever it is, goodbye
                for fd in fds:
                    os.close(fd)
                await handle.aclose()
                continue
            await acceptor.offer(PassedChannel(fds[0], fds[1], handle))


def _is_channel(read_fd: int, write_fd: int) -> bool:
    """Whether two handed-over descriptors can be a channel: pipes or sockets
    open for reading and for writing. Code inside can connect to the socket
    too; a file or device there (``/dev/zero`` reads forever) would take the
    place of the host's channel and spin on it."""
    for fd, mode in ((read_fd, os.O_RDONLY), (write_fd, os.O_WRONLY)):
        try:
            kind = os.fstat(fd).st_mode
            access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            return False
        if not (stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind)) or access not in (mode, os.O_RDWR):
            return False
    return True


# ---------------------------------------------------------------- on the host


class ProcessChannel(anyio.abc.ByteStream):
    """A relay process's stdin and stdout as a byte stream; closing it stops the process."""

    def __init__(self, process: LiveProcess) -> None:
        self.process = process

    async def receive(self, max_bytes: int = 1 << 20) -> bytes:
        return await self.process.stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.process.stream.send(item)

    async def send_eof(self) -> None:
        await self.process.stream.send_eof()

    async def aclose(self) -> None:
        await self.process.stop(grace=0.5)


class ProcessChannels:
    """The host's channels: a new relay process in the sandbox each time."""

    def __init__(
        self,
        sandbox: SandboxClient,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.command = list(command)
        self.env = env
        self.current: ProcessChannel | None = None
        self.opened = 0
        self._early: LiveProcess | None = None

    async def start_early(self, wait: float) -> None:
        """Start the first channel process now, to look for the sandbox side
        for up to ``wait`` seconds: it starts while the sandbox side does,
        instead of after it (a bridge's start is two Python starts in a row
        otherwise). If it cannot start, the first channel starts as any other."""
        # (The first bridge in a sandbox uploads the archive the process
        # runs from: it waits for that too. Uploads land whole, by a rename.)
        archive = self.command[1]
        command = [
            "sh", "-c", 'until [ -e "$0" ]; do sleep 0.01; done; exec "$@"', archive,
            *self.command, "--wait", f"{wait:g}",
        ]  # fmt: skip
        with contextlib.suppress(SandboxError):
            self._early = await self.sandbox.open_process(command, env=self.env)

    async def next_channel(self) -> anyio.abc.ByteStream:
        early, self._early = self._early, None
        if early is not None:
            with contextlib.suppress(NoChannel):  # it gave up waiting: start another
                return await self._connected(early)
        try:
            process = await self.sandbox.open_process(self.command, env=self.env)
        except SandboxError as exc:
            raise NoChannel(f"cannot start a channel process: {exc}") from None
        return await self._connected(process)

    async def _connected(self, process: LiveProcess) -> anyio.abc.ByteStream:
        """``process`` once it says it handed its stdin and stdout over."""
        channel = ProcessChannel(process)
        ready = b""
        try:
            with anyio.fail_after(30):
                while len(ready) < len(READY):
                    ready += await process.stream.receive(len(READY) - len(ready))
        except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError):
            code = await process.stop(grace=0.5)
            final = code == EXIT_NO_DAEMON  # nobody listens: the sandbox side is gone
            why = "the sandbox side is not running" if final else f"it ended ({code})"
            raise NoChannel(f"the channel process did not connect: {why}", final=final) from None
        if ready != READY:
            await process.stop(grace=0.5)
            raise NoChannel(f"the channel process said {ready!r}, not {READY!r}")
        self.current = channel
        self.opened += 1
        return channel

    async def aclose(self) -> None:
        if self._early is not None:  # the bridge never started
            await self._early.stop(grace=0.5)
            self._early = None
        if self.current is not None:
            await self.current.aclose()
