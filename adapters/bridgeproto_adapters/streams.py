"""Byte streams a session can run over, besides sockets.

- ``memory_stream_pair()``: two connected in-memory streams (tests, embedding
  both sides in one process).
- ``FdStream``: a pair of file descriptors, such as this process's stdin and
  stdout when the host side started it (the live-process transport).
- ``process_stream(process)``: the host's view of such a process.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.stapled import StapledByteStream

# The channel's pipes are grown to hold this much (Linux allows 1 MiB to
# anyone by default; where it allows less they stay as they are), and read
# as much at once: a bulk transfer then costs a sixteenth of the reads.
_PIPE_SIZE = 1 << 20
_READ_SIZE = _PIPE_SIZE
_F_SETPIPE_SZ = 1031  # fcntl's, on Linux


def grow_pipe(fd: int) -> None:
    """Let the pipe ``fd`` holds hold ``_PIPE_SIZE`` bytes, if it is a pipe
    and the system allows it."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive

    async def send(self, item: bytes) -> None:
        await self._send.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._receive.receive()

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_stream_pair(buffer: float = math.inf) -> tuple[MemoryByteStream, MemoryByteStream]:
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


async def read_some(fd: int, max_bytes: int = _READ_SIZE) -> bytes:
    """Up to ``max_bytes`` from the non-blocking ``fd``, once there are any;
    ``EndOfStream`` at its end."""
    while True:
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not data:
            raise anyio.EndOfStream
        return data


async def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to the non-blocking ``fd``; ``BrokenResourceError``
    when its reader is gone."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await anyio.wait_writable(fd)
            continue
        except BrokenPipeError:
            raise anyio.BrokenResourceError from None
        view = view[written:]
    await anyio.lowlevel.checkpoint()


class FdStream(anyio.abc.ByteStream):
    """A byte stream over two non-blocking file descriptors (pipes), or one
    (a connected socket).

    With ``owned``, closing the stream closes the descriptors too (and wakes
    a task waiting on them); this process's stdin and stdout are not owned.
    """

    def __init__(self, read_fd: int, write_fd: int, *, owned: bool = False) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.owned = owned
        for fd in {read_fd, write_fd}:
            os.set_blocking(fd, False)
            grow_pipe(fd)
        self._closed = False

    @classmethod
    def stdio(cls) -> FdStream:
        return cls(0, 1)

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        return await read_some(self.read_fd, max_bytes)

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await write_all(self.write_fd, item)

    async def send_eof(self) -> None:
        pass  # the protocol's goaway ends a session; EOF is never needed

    async def aclose(self) -> None:
        if self.owned and not self._closed:
            for fd in {self.read_fd, self.write_fd}:
                anyio.notify_closing(fd)
                os.close(fd)
        self._closed = True
        await anyio.lowlevel.checkpoint()


def process_stream(process: anyio.abc.Process) -> anyio.abc.ByteStream:
    """The host's byte stream to a process started with stdin and stdout piped."""
    assert process.stdin is not None and process.stdout is not None
    return StapledByteStream(process.stdin, process.stdout)
