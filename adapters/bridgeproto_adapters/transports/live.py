"""The live-stream transport: channels are processes the host holds in the sandbox.

Inside the sandbox, the sandbox side runs as a **daemon** that owns the
agent listener and the session, and accepts channels on a Unix socket in a
directory only the sandbox's user can enter, fixed by the session id
(``/tmp/bridgeproto-<session id>/channel.sock``). A **channel** starts as a
process the host runs through the sandbox provider (``exec -i``, bwrap,
...), whose stdin and stdout the host holds: it connects to that socket,
says ``READY`` and hands its stdin and stdout to the daemon (``SCM_RIGHTS``,
see ``sandbox_calls.py``), so the bytes then flow between the host and the
daemon with no process in between. When the stream breaks (the provider drops it,
either end closes it), the host starts another and the session resumes on
it; the daemon, and every agent connection it holds, see no more than a
pause.

A channel process that finds no daemon exits with status 3 and says why:
the host takes that as final (the sandbox side is gone), not as a channel
that merely broke.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc

from ..sandbox_calls import EXIT_NO_DAEMON, READY, command_line
from ..sandboxes import LiveProcess, SandboxClient, SandboxError, stop_process
from ..streams import Descriptor, read_descriptor, write_descriptor
from . import NoChannel
from .transport import ChannelPlace, HostEnd


class ProcessChannel(anyio.abc.ByteStream):
    """A relay process's stdin and stdout as a byte stream; closing it stops the process.

    Whatever a provider's process raises becomes ``BrokenResourceError`` here,
    the one error a broken channel is to the session."""

    def __init__(self, process: LiveProcess) -> None:
        self.process = process
        self._closed = False

    async def receive(self, max_bytes: int = 1 << 20) -> bytes:
        try:
            data = await self.process.read(max_bytes)
        except Exception as exc:
            raise anyio.BrokenResourceError(f"reading the channel process: {exc!r}") from exc
        if not data:
            raise anyio.ClosedResourceError if self._closed else anyio.EndOfStream
        return data

    @property
    def read_descriptor(self) -> Descriptor | None:
        """The process's stdout descriptor, where it is a pipe of ours
        (``streams.read_descriptor``)."""
        return None if self._closed else read_descriptor(self.process)

    @property
    def write_descriptor(self) -> Descriptor | None:
        """The process's stdin descriptor, where it is a pipe of ours
        (``streams.write_descriptor``)."""
        return None if self._closed else write_descriptor(self.process)

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            await self.process.write(item)
        except Exception as exc:
            raise anyio.BrokenResourceError(f"writing the channel process: {exc!r}") from exc

    async def send_eof(self) -> None:
        """Nothing: a session ends by goaway, never by the end of a stream."""

    async def aclose(self) -> None:
        self._closed = True
        await stop_process(self.process)


def host_channels(place: ChannelPlace, options: None) -> ProcessChannels:
    """The live-stream transport's host end (see ``registry.STREAM``): each
    channel runs ``sandbox_calls.py``'s ``channel``, not the archive, to
    start in a third of the time (and to need no archive yet)."""
    command = [*command_line(place.python, "channel"), "--session", place.session_id.hex()]
    return ProcessChannels(place.sandbox, command, place.env, start_wait=place.start_wait)


class ProcessChannels(HostEnd):
    """The host's channels: a new relay process in the sandbox each time.

    ``run`` starts the first one early (``start_early``) when given a
    ``start_wait``."""

    def __init__(
        self,
        sandbox: SandboxClient,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        start_wait: float = 0.0,
    ) -> None:
        self.sandbox = sandbox
        self.start_wait = start_wait
        self.command = list(command)
        self.env = env
        self.current: ProcessChannel | None = None
        self.opened = 0
        self._early: LiveProcess | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self.start_wait:
            await self.start_early(wait=self.start_wait)
        await super().run(task_status=task_status)

    async def start_early(self, wait: float) -> None:
        """Start the first channel process now, to look for the sandbox side
        for up to ``wait`` seconds: it starts while the sandbox side does,
        instead of after it (a bridge's start is two Python starts in a row
        otherwise). If it cannot start, the first channel starts as any other."""
        command = [*self.command, "--wait", f"{wait:g}"]
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
                    ready += await channel.receive(len(READY) - len(ready))
        except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError):
            code = await stop_process(process)
            final = code == EXIT_NO_DAEMON  # nobody listens: the sandbox side is gone
            why = "the sandbox side is not running" if final else f"it ended ({code})"
            raise NoChannel(f"the channel process did not connect: {why}", final=final) from None
        if ready != READY:
            await stop_process(process)
            raise NoChannel(f"the channel process said {ready!r}, not {READY!r}")
        self.current = channel
        self.opened += 1
        return channel

    async def aclose(self) -> None:
        await super().aclose()
        if self._early is not None:  # the bridge never started
            await stop_process(self._early)
            self._early = None
        if self.current is not None:
            await self.current.aclose()
