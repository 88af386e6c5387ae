"""The live-stream transport: channels are relay processes in the sandbox.

Inside the sandbox, the sandbox side runs as a **daemon** that owns the
agent listener and the session, and accepts channels on a Unix socket in a
directory only the sandbox's user can enter, fixed by the session id
(``/tmp/bridgeproto-<session id>/channel.sock``). A **channel** is a relay
process, started by the host through the sandbox provider (``exec -i``,
bwrap, ...), that connects to that socket and copies bytes between it and
its own stdin/stdout, which the host holds. When a relay dies or its stream
breaks, the host starts another and the session resumes on it; the daemon,
and every agent connection it holds, never notice more than a pause.

The relay first writes ``READY`` (one line) once it is connected, so the
host can tell "no daemon there" (a final failure: the relay exits with
status 3 and says why) from a channel that merely broke.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc

from ..relay import EXIT_NO_DAEMON, READY
from ..sandboxes import LiveProcess, SandboxClient, SandboxError
from . import Acceptor, NoChannel

# ---------------------------------------------------------------- in the sandbox


async def accept_channels(
    acceptor: Acceptor,
    path: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` and hand every connection to ``acceptor``."""
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)
    async with listener:
        task_status.started()
        while True:
            stream = await listener.accept()
            await acceptor.offer(stream)


# ---------------------------------------------------------------- on the host


class ProcessChannel(anyio.abc.ByteStream):
    """A relay process's stdin and stdout as a byte stream; closing it stops the process."""

    def __init__(self, process: LiveProcess) -> None:
        self.process = process

    async def receive(self, max_bytes: int = 65536) -> bytes:
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

    async def next_channel(self) -> anyio.abc.ByteStream:
        try:
            process = await self.sandbox.open_process(self.command, env=self.env)
        except SandboxError as exc:
            raise NoChannel(f"cannot start a channel process: {exc}") from None
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
        if self.current is not None:
            await self.current.aclose()
