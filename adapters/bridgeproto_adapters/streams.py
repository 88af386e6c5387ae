"""Byte streams a session can run over, besides sockets.

- ``memory_stream_pair()``: two connected in-memory streams (tests, embedding
  both sides in one process).
- ``FdStream``: a pair of file descriptors, such as this process's stdin and
  stdout when the host side started it (the live-process transport).
- ``process_stream(process)``: the host's view of such a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import math
import os
import socket
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.stapled import StapledByteStream

from .wakeups import on_asyncio, resolve

# The channel's pipes are grown to hold this much (Linux allows 1 MiB to
# anyone by default; where it allows less they stay as they are), and read
# as much at once: a bulk transfer then costs a sixteenth of the reads.
_PIPE_SIZE = 1 << 20
_READ_SIZE = _PIPE_SIZE
# A read asks for this much first, and four times what the last read filled
# after one that filled it (up to the caller's size): Python allocates what
# a read asks for, and a megabyte is mapped, shrunk and unmapped again for
# what is mostly a few hundred bytes (about 9 us a read on this machine
# against 0.6 for 64 KiB, which the allocator serves from its heap).
_FIRST_READ = 1 << 16
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


class Descriptor:
    """A non-blocking descriptor that is closed only once no task waits on it.

    The loop keeps a descriptor's waiter under its number; closing it under
    a waiter frees the number for the next pipe or socket while that
    waiter's bookkeeping still holds it, and the next user of the number
    then finds it busy, or loses its wake-up. So ``close`` wakes the waiters
    (``ClosedResourceError``) and the last one to leave closes it.

    On asyncio a wait is one future and the loop's reader or writer
    callback (anyio's ``wait_readable`` adds a checkpoint, a turn of the
    loop, and an event to each). ``read`` goes further, as asyncio's own
    transports do: the loop's reader callback stays registered from one
    read to the next (registering costs two system calls a wait) and reads
    what arrives itself, so the descriptor is not reported readable again
    before its reader has run. It holds one chunk at most: while a chunk
    waits to be taken, the callback stops watching (the sender is held
    back) until the next ``read``.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False
        self._release = True  # close the descriptor once closed and no task waits
        self._waiters = 0
        self._futures: list[asyncio.Future[None]] = []
        # ``read``'s side on asyncio: the loop its callback is registered
        # with, the size it reads, and what it read (bytes, b"" at the end,
        # or the error) until ``read`` takes it.
        self._watching: asyncio.AbstractEventLoop | None = None
        self._read_size = _READ_SIZE
        self._guess = _FIRST_READ  # what a read asks for (``_read_now``)
        self._chunk: bytes | OSError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._on_held: Callable[[bytes | OSError], None] | None = None
        self._consumer: Callable[[bytes | Exception], None] | None = None  # ``feed``'s

    async def wait(self, *, readable: bool) -> None:
        """Until the descriptor is readable (or writable); ``ClosedResourceError`` if closed."""
        self._waiters += 1
        try:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # trio, through anyio
                await (anyio.wait_readable if readable else anyio.wait_writable)(self.fd)
            else:
                await self._wait_on(loop, readable)
        finally:
            self._left()

    async def _wait_on(self, loop: asyncio.AbstractEventLoop, readable: bool) -> None:
        future = loop.create_future()
        if readable:
            loop.add_reader(self.fd, resolve, future)
        else:
            loop.add_writer(self.fd, resolve, future)
        self._futures.append(future)
        try:
            await future
        finally:
            self._futures.remove(future)
            if readable:
                loop.remove_reader(self.fd)
            else:
                loop.remove_writer(self.fd)

    def _left(self) -> None:
        self._waiters -= 1
        if self.closed and self._release and not self._waiters:
            os.close(self.fd)

    async def read(self, max_bytes: int = _READ_SIZE, deadline: float | None = None) -> bytes:
        """Up to ``max_bytes`` once there are any; ``EndOfStream`` at the end,
        ``TimeoutError`` if none came by ``deadline`` (on ``clock()``'s time)."""
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            chunk, self._chunk = self._chunk, None
            if chunk is None:
                try:
                    chunk = self._read_now(max_bytes)
                except BlockingIOError:
                    await self._readable(max_bytes, deadline)
                    continue
            elif isinstance(chunk, OSError):
                raise chunk
            elif len(chunk) > max_bytes:
                chunk, self._chunk = chunk[:max_bytes], chunk[max_bytes:]
            if not chunk:
                raise anyio.EndOfStream
            return chunk

    async def _readable(self, max_bytes: int, deadline: float | None) -> None:
        """Until the loop's callback has read a chunk (on trio: until readable)."""
        if self._read_waiter is not None:
            raise anyio.BusyResourceError("reading from")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with anyio.fail_after(None if deadline is None else deadline - anyio.current_time()):
                await self.wait(readable=True)
            return
        self._read_size = max_bytes
        self._watch(loop)
        self._waiters += 1
        self._read_waiter = future = loop.create_future()
        self._futures.append(future)
        timer = None if deadline is None else loop.call_at(deadline, _time_out, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            self._read_waiter = None
            self._futures.remove(future)
            self._left()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watching is None:
            self._watching = loop
            loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        if self._chunk is not None:  # the last chunk was not taken yet: stop watching
            self._unwatch()
            return
        try:
            chunk: bytes | OSError = self._read_now(self._read_size)
        except BlockingIOError:
            return
        except OSError as exc:  # (a reset connection, say) the reader raises it
            chunk = exc
        if self._consumer is not None:
            if isinstance(chunk, OSError) or not chunk:
                self._unwatch()  # the end: nothing more will come
            self._consumer(chunk)
            return
        self._chunk = chunk
        if self._read_waiter is not None:
            if not self._read_waiter.done():
                self._read_waiter.set_result(None)
        elif self._on_held is not None:
            self._on_held(chunk)

    def _read_now(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` that are there now, asked for in a size that
        grows while reads fill it (see ``_FIRST_READ``)."""
        size = min(max_bytes, self._guess)
        chunk = os.read(self.fd, size)
        if len(chunk) == self._guess:
            self._guess *= 4
        elif len(chunk) < _FIRST_READ:
            self._guess = _FIRST_READ
        return chunk

    def _unwatch(self) -> None:
        loop, self._watching = self._watching, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.fd)

    @property
    def holds_unread(self) -> bool:
        """Whether the loop's callback read bytes (or the end) nobody has
        taken yet."""
        return self._chunk is not None

    def feed(
        self, consumer: Callable[[bytes | Exception], None] | None, max_bytes: int = _READ_SIZE
    ) -> None:
        """Hand every chunk (up to ``max_bytes``) to ``consumer`` in the
        loop's own callback, as it arrives, instead of to a task's ``read``
        (asyncio only): b"" at the end, the error if reading failed,
        ``ClosedResourceError`` if the descriptor is closed meanwhile. The
        consumer takes a chunk at once, before the next is read. None stops it."""
        self._consumer = consumer
        if consumer is None:
            self._unwatch()
            return
        self._read_size = max_bytes  # (the last ``read`` may have asked for a few bytes)
        chunk, self._chunk = self._chunk, None
        if chunk is not None:
            consumer(chunk)
        if self.closed:
            consumer(anyio.ClosedResourceError())
        elif self._consumer is not None:
            self._watch(asyncio.get_running_loop())

    def watch_while_unread(self, on_held: Callable[[bytes | OSError], None] | None) -> None:
        """Between reads, have ``on_held`` told of each chunk that arrives
        (b"" at the end, or the error), as soon as it does; None stops
        that. A chunk already held is told at once. (On asyncio only.)"""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._on_held = on_held
        if on_held is not None and not self.closed:
            if self._chunk is not None:
                on_held(self._chunk)
            else:
                self._watch(loop)

    async def write(self, data: bytes) -> None:
        """All of ``data``; ``BrokenResourceError`` when the reader is gone.

        A write the descriptor takes at once returns without a turn of the
        loop: the channel's writer, which makes nearly all of them, waits
        for its next wake right after."""
        view = memoryview(data)
        while view:
            if self.closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await self.wait(readable=False)
                continue
            except BrokenPipeError:
                raise anyio.BrokenResourceError from None
            view = view[written:]

    def write_now(self, data: bytes) -> int:
        """As much of ``data`` as the descriptor takes without waiting: how
        many bytes (fewer when it is full, closed or broken; ``write`` then
        waits, or says why)."""
        view = memoryview(data)
        written = 0
        while written < len(view) and not self.closed:
            try:
                written += os.write(self.fd, view[written:])
            except OSError:  # full, or the reader is gone
                break
        return written

    def close(self, *, release: bool = True) -> None:
        """Refuse further use and wake the waiters; with ``release`` (the
        descriptor is ours), close it once the last waiter has left."""
        if self.closed:
            return
        self.closed = True
        self._release = release
        self._unwatch()
        for future in self._futures:
            if not future.done():
                future.set_exception(anyio.ClosedResourceError())
        if self._waiters and not self._futures:  # (waiting through anyio)
            anyio.notify_closing(self.fd)
        if self._consumer is not None:
            self._consumer(anyio.ClosedResourceError())
        if release and not self._waiters:
            os.close(self.fd)


def read_descriptor(stream: object) -> Descriptor | None:
    """The descriptor of ours a stream reads from, where it says so (its
    ``read_descriptor``: ``FdStream``, a child's stdout pipe, a channel
    process over one), so a session can be fed from it (``Descriptor.feed``);
    None for any other stream."""
    found = getattr(stream, "read_descriptor", None)
    return found if isinstance(found, Descriptor) else None


def write_descriptor(stream: object) -> Descriptor | None:
    """The descriptor of ours a stream writes to, where it says so (its
    ``write_descriptor``), so a writer can write there without awaiting
    (``Descriptor.write_now``); None for any other stream."""
    found = getattr(stream, "write_descriptor", None)
    return found if isinstance(found, Descriptor) else None


def _time_out(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


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
        self._reader = Descriptor(read_fd)
        self._writer = self._reader if write_fd == read_fd else Descriptor(write_fd)
        for fd in {read_fd, write_fd}:
            grow_pipe(fd)

    @classmethod
    def stdio(cls) -> FdStream:
        return cls(0, 1)

    async def receive(self, max_bytes: int = _READ_SIZE, deadline: float | None = None) -> bytes:
        """``TimeoutError`` if nothing came by ``deadline`` (on
        ``wakeups.clock()``'s time)."""
        return await self._reader.read(max_bytes, deadline)

    async def send(self, item: bytes) -> None:
        await self._writer.write(item)

    async def send_eof(self) -> None:
        pass  # the protocol's goaway ends a session; EOF is never needed

    @property
    def read_descriptor(self) -> Descriptor:
        """The reading side (``read_descriptor``)."""
        return self._reader

    @property
    def write_descriptor(self) -> Descriptor:
        """The writing side (``write_descriptor``)."""
        return self._writer

    def watch_while_unread(self, on_held: Callable[[bytes | OSError], None] | None) -> None:
        """``Descriptor.watch_while_unread`` for the reading side."""
        self._reader.watch_while_unread(on_held)

    @property
    def holds_unread(self) -> bool:
        """``Descriptor.holds_unread`` for the reading side."""
        return self._reader.holds_unread

    def close(self) -> None:
        """``aclose`` at once (a task waiting on the stream wakes with
        ``ClosedResourceError``)."""
        # (descriptors not ours are not closed: they only refuse further use)
        self._reader.close(release=self.owned)
        self._writer.close(release=self.owned)

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()


class SocketFdStream(FdStream):
    """A connected socket read and written directly, as a descriptor (owned:
    closing the stream closes the socket): no transport or protocol
    between the loop and the task, where anyio's asyncio stream costs a
    turn of the loop and an event a send or receive."""

    def __init__(self, sock: socket.socket) -> None:
        fd = sock.detach()
        super().__init__(fd, fd, owned=True)

    async def send_eof(self) -> None:
        """Close the sending half (the peer reads its end; it may go on sending)."""
        if self._writer.closed:
            raise anyio.ClosedResourceError
        sock = socket.socket(fileno=self.write_fd)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone already: its next read or write says so
        finally:
            sock.detach()


async def accept(listener: socket.socket) -> SocketFdStream:
    """The next connection on ``listener`` (one gone before it was taken is
    skipped), TCP's without Nagle's delay. The listener stays its owner's
    to close."""
    ready = Descriptor(listener.fileno())
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            await ready.wait(readable=True)
            continue
        except (ConnectionAbortedError, InterruptedError):
            continue
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketFdStream(conn)


async def connect_tcp(host: str, port: int) -> anyio.abc.ByteStream:
    """A TCP connection to ``host``:``port``; on asyncio a ``SocketFdStream``
    (the host's addresses tried in turn), elsewhere anyio's own."""
    if not on_asyncio():
        return await anyio.connect_tcp(host, port)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:  # a name: look it up (a worker thread; an address needs none)
        found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [(family, address[:2]) for family, _, _, _, address in found]
    else:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        addresses = [(family, (host, port))]
    failure: OSError = OSError(f"{host} has no address")
    for family, address in addresses:
        try:
            return SocketFdStream(await _connect(family, address))
        except OSError as exc:
            failure = exc
    raise failure


async def _connect(family: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex(address)
        if error == errno.EINPROGRESS:
            await Descriptor(sock.fileno()).wait(readable=False)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:  # refused, or cancelled (the caller's timeout)
        sock.close()
        raise
    return sock


def process_stream(process: anyio.abc.Process) -> anyio.abc.ByteStream:
    """The host's byte stream to a process started with stdin and stdout piped."""
    assert process.stdin is not None and process.stdout is not None
    return StapledByteStream(process.stdin, process.stdout)
