"""What both ends of a mailbox epoch share (see ``mailbox.py``, which says
how the transport works): the byte streams each end's session runs on, the
order and reassembly of numbered batches, and the spool's place and format.
"""

from __future__ import annotations

import os
import struct

import anyio
import anyio.abc

from bridgeproto.wire import FrameType, frame_types

from ..sandbox_calls import channel_dir

_OFFSET = struct.Struct(">Q")  # where an answer's bytes start in the epoch's output
_QUIET = frozenset({FrameType.ACK, FrameType.PING, FrameType.PONG})
_UPLOAD = struct.Struct(">QQQI")


def spool_dir(session_id: bytes) -> str:
    """Where the host uploads input batches for the sandbox side."""
    return os.path.join(channel_dir(session_id), "spool")


def _urgent(data: bytes) -> bool:
    """Whether whole frames ``data`` hold anything worth ending a wait for:
    anything but acknowledgements, pings and pongs (or bytes that do not
    parse as frames, to be safe)."""
    types = frame_types(data)
    return types is None or any(kind not in _QUIET for kind in types)


class _Outbox:
    """Bytes waiting for the next call, and whether any of them is urgent."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.urgent = False

    def __len__(self) -> int:
        return len(self._data)

    def add(self, data: bytes) -> None:
        self._data += data
        self.urgent = self.urgent or _urgent(data)

    def take(self, limit: int) -> bytes:
        taken = bytes(self._data[:limit])
        del self._data[:limit]
        if not self._data:
            self.urgent = False
        return taken


class _Reorder:
    """Numbered batches in, bytes out in order; numbers seen before are dropped."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._next = 1
        self._early: dict[int, bytes] = {}

    def add(self, number: int, data: bytes) -> None:
        if number < self._next:
            return
        self._early[number] = data
        while self._next in self._early:
            self.data += self._early.pop(self._next)
            self._next += 1

    def take(self, limit: int) -> bytes:
        taken = bytes(self.data[:limit])
        del self.data[:limit]
        return taken


class _Reassembly:
    """Output of the sandbox side by offset in, bytes out in order: what
    came twice is dropped, what came early waits for the gap before it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.got = 0  # offset up to which every byte arrived
        self._early: dict[int, bytes] = {}

    @property
    def gap(self) -> bool:
        return bool(self._early)

    def add(self, start: int, data: bytes) -> None:
        if start > self.got:
            if len(data) > len(self._early.get(start, b"")):
                self._early[start] = data
            return
        self._extend(start, data)
        while self._early:
            first = min(self._early)
            if first > self.got:
                break
            self._extend(first, self._early.pop(first))

    def _extend(self, start: int, data: bytes) -> None:
        end = start + len(data)
        if end > self.got:
            self.data += data[self.got - start :]
            self.got = end

    def take(self, limit: int) -> bytes:
        taken = bytes(self.data[:limit])
        del self.data[:limit]
        return taken


_GATHER = 0.001  # seconds without new bytes before gathered ones go


class _EpochStream(anyio.abc.ByteStream):
    """What both ends share: an inbox, a way out and one wake-up for changes."""

    inbox: _Reorder | _Reassembly

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.ended: str | None = None  # why no more bytes will cross
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_change(self) -> None:
        await self._changed.wait()

    async def gathered(self) -> None:
        """Let bytes that belong together gather before they go: a response's
        head and body (the host's uploads), a request's head and the body the
        agent wrote a moment later (the sandbox side's answers). Waits until
        none came for a millisecond, five at most."""
        for _ in range(5):
            with anyio.move_on_after(_GATHER) as quiet:
                await self.wait_for_change()
            if quiet.cancelled_caught:
                return

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self.inbox.data:
            if self.ended is not None:
                raise anyio.BrokenResourceError(self.ended)
            await self.wait_for_change()
        return self.inbox.take(max_bytes)

    async def send(self, item: bytes) -> None:
        if self.ended is not None:
            raise anyio.BrokenResourceError(self.ended)
        self.queue(item)
        self.changed()

    def queue(self, item: bytes) -> None:
        raise NotImplementedError

    async def send_eof(self) -> None:
        pass

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            self.changed()

    async def aclose(self) -> None:
        self.end("the epoch is over")
