"""Where a session's channels come from.

A session runs over a **channel**: a byte stream between the host side and
the sandbox side. Channels break (a process exits, a call times out, bytes
are damaged) and the session outlives them: the core resumes on the next
channel, resending what was not acknowledged. A transport is one small
interface, ``Channels``, with one method:

- on the host side, ``next_channel()`` opens a new channel to the sandbox
  side (it may fail: the session retries until its resume deadline);
- on the sandbox side, it waits for the host's next channel.

Here: ``OneChannel`` (a fixed stream, no second channel), ``Acceptor`` (the
sandbox side's end of any transport that opens channels toward it) and
``memory_channels()`` (both sides in one process). ``live.py`` has the
live-stream transport: a process in the sandbox whose stdin and stdout the
host holds, and which hands them to the sandbox side over its private Unix
socket; ``mailbox.py`` the transport of calls and files. Each has its
sandbox side's half in a module of its own (``*_sandbox.py``).

A bridge chooses its transport once, by name, from ``registry.py``: a
``Transport`` (``transport.py``) names its host end and its sandbox end,
its default limits and its options. The two programs that run inside the
sandbox for every channel and every call (``sandbox_calls.py``) live
outside this package: they are standard library code alone, sent as source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc

from ..errors import BridgeError
from ..streams import memory_stream_pair


class NoChannel(BridgeError):
    """No channel now. ``final``: none will ever come, so stop trying."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class Channels(Protocol):
    """A source of channels for one side of one session."""

    async def next_channel(self) -> anyio.abc.ByteStream:
        """The next channel; raises ``NoChannel`` or ``OSError`` when it cannot."""
        ...


class OneChannel:
    """A single stream: when it breaks, the session ends."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream: anyio.abc.ByteStream | None = stream

    async def next_channel(self) -> anyio.abc.ByteStream:
        stream, self._stream = self._stream, None
        if stream is None:
            raise NoChannel("this transport cannot open another channel", final=True)
        return stream


class Acceptor:
    """The sandbox side's channels: always the newest the host opened.

    A newer channel replaces the one in use, and any offered one the session
    has not taken yet: the host only opens one when it has given up on the
    last, so the older ones are closed at once. (A session that took a
    superseded channel would wait there for a host that has moved on.)
    """

    def __init__(self) -> None:
        self._current: anyio.abc.ByteStream | None = None  # the session's
        self._offered: anyio.abc.ByteStream | None = None  # not taken yet
        self._changed = anyio.Event()
        self._closed = False

    async def offer(self, stream: anyio.abc.ByteStream) -> None:
        """A channel the host opened (called by whatever accepts them)."""
        replaced = (self._current, self._offered)
        self._current, self._offered = None, stream
        self._changed.set()
        for old in replaced:
            if old is not None:
                await old.aclose()

    def close(self) -> None:
        """No more channels will come."""
        self._closed = True
        self._changed.set()

    async def next_channel(self) -> anyio.abc.ByteStream:
        while self._offered is None:
            if self._closed:
                raise NoChannel("no channel will come any more", final=True)
            self._changed = anyio.Event()
            await self._changed.wait()
        self._current, self._offered = self._offered, None
        return self._current


Wrap = Callable[[anyio.abc.ByteStream], anyio.abc.ByteStream]


class MemoryConnector:
    """The host's end of ``memory_channels``: each channel a new in-memory pair.

    ``wrap`` (for tests) stands between the host and each new channel, to
    damage or cut it. ``opened`` counts the channels.
    """

    def __init__(self, acceptor: Acceptor, wrap: Wrap | None = None) -> None:
        self.acceptor = acceptor
        self.wrap = wrap
        self.opened = 0
        self.current: anyio.abc.ByteStream | None = None

    async def next_channel(self) -> anyio.abc.ByteStream:
        host_end, sandbox_end = memory_stream_pair()
        await self.acceptor.offer(sandbox_end)
        self.opened += 1
        self.current = self.wrap(host_end) if self.wrap else host_end
        return self.current


def memory_channels(wrap: Wrap | None = None) -> tuple[MemoryConnector, Acceptor]:
    """The host and sandbox ends of an in-memory transport that opens any
    number of channels."""
    acceptor = Acceptor()
    return MemoryConnector(acceptor, wrap), acceptor
