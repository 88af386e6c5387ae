"""Agent connections on the sandbox side: one's bytes and HTTP state
(``Agent``), and the listeners agents connect to (what one may cost before
it is refused, ``AgentLimits``, is a setting: ``settings.py``).

On asyncio an agent's socket is read by the task that needs its next bytes
and watched between reads for a hang-up; any other stream is read by one
task for the whole connection (``Agent.pump``), and the task answering its
requests takes the chunks from it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from bridgeproto.http import AgentConnection, AgentEvent

from .errors import STREAM_ERRORS
from .settings import Listen
from .streams import FdStream, accept
from .wakeups import Flag, on_asyncio

AgentHandler = Callable[[anyio.abc.ByteStream], Coroutine[Any, Any, None]]
_LINGER_SECONDS = 2.0
# An upload's frames are a read each: a quarter of a megabyte, which goes
# through the frame's copy and CRC while still in the CPU's cache (a whole
# megabyte, read at once, was also cut into a frame and a 4-byte one, since
# a frame's payload holds its exchange's id too; see docs/benchmarks.md).
_AGENT_READ = 256 << 10


class Agent:
    """One agent connection: its HTTP state and its bytes.

    A socket read as a descriptor (``SocketFdStream``, on asyncio) is read
    directly: such a read can be cancelled, and the descriptor tells of a
    hang-up between reads. Any other stream gets a pump (``pumped``): a
    single task reads it for the whole connection and hands chunks over
    one at a time, so reading still stops when the bridge has no credit,
    and no read on the socket is ever cancelled (anyio's asyncio Unix
    sockets cannot take that).
    """

    def __init__(self, http: AgentConnection, stream: anyio.abc.ByteStream) -> None:
        self.http = http
        self.stream = stream
        self._socket = stream if isinstance(stream, FdStream) and on_asyncio() else None
        self.chunks = Handoff() if self._socket is None else None
        self._on_hangup: Callable[[], None] | None = None

    @property
    def pumped(self) -> bool:
        return self.chunks is not None

    @property
    def on_hangup(self) -> Callable[[], None] | None:
        """Told at once when the agent hangs up while nobody reads it (a
        request wholly read, its answer under way); the connection is then
        closed, and a task writing to it or reading it stops."""
        return self._on_hangup

    @on_hangup.setter
    def on_hangup(self, callback: Callable[[], None] | None) -> None:
        self._on_hangup = callback
        if self._socket is not None:
            self._socket.watch_while_unread(None if callback is None else self._held)

    def _held(self, chunk: bytes | OSError) -> None:
        if (isinstance(chunk, OSError) or not chunk) and self._on_hangup is not None:
            self._on_hangup()
            assert self._socket is not None
            self._socket.close()

    async def pump(self) -> None:
        assert self.chunks is not None
        try:
            while True:
                try:
                    data = await self.stream.receive(_AGENT_READ)
                except STREAM_ERRORS:
                    data = b""
                if not data and self._on_hangup is not None:
                    self._on_hangup()
                    with anyio.CancelScope(shield=True):
                        await self.stream.aclose()
                if not await self.chunks.send(data) or not data:
                    return
        finally:
            self.chunks.end()

    async def receive(self, deadline: float | None = None) -> bytes:
        """The agent's next bytes; b"" once it has closed its side or gone,
        ``TimeoutError`` if none came by ``deadline`` (``wakeups.clock()``'s time)."""
        try:
            if self._socket is not None:
                return await self._socket.receive(_AGENT_READ, deadline)
            assert self.chunks is not None
            if deadline is None:
                return await self.chunks.receive()
            with anyio.fail_after(deadline - anyio.current_time()):
                return await self.chunks.receive()
        except TimeoutError:
            raise  # (an OSError, but not the agent's)
        except STREAM_ERRORS:
            return b""

    async def next_event(self, deadline: float | None = None) -> AgentEvent:
        """The agent's next request, body chunk or end; ``TimeoutError`` if
        the bytes it needs did not come by ``deadline``."""
        while True:
            event = self.http.next_event()
            if event is not None:
                return event
            self.http.receive_data(await self.receive(deadline))

    async def receive_body(self, deadline: float) -> None:
        """Read the rest of the request's body (``http.missing_body_bytes``),
        so that the request can cross whole; ``TimeoutError`` if it did not
        come by ``deadline``."""
        while self.http.missing_body_bytes:
            data = await self.receive(deadline)
            self.http.receive_data(data)
            if not data:
                return  # (the request's events say what is missing)

    async def refuse(self, reply: bytes) -> None:
        """Answer and close, letting the agent read the answer.

        An agent may still be sending the request we refused; closing a
        socket with unread input resets it, and the agent would see the
        reset instead of our answer. So: answer, stop writing, and drain
        what it still sends, for a bounded time.
        """
        await self.stream.send(reply)
        with contextlib.suppress(*STREAM_ERRORS):
            await self.stream.send_eof()
            with anyio.move_on_after(_LINGER_SECONDS):
                while await self.receive():
                    pass

    async def close(self) -> None:
        if self.chunks is not None:
            self.chunks.close()  # a pump waiting to hand over a chunk stops
        await self.stream.aclose()  # a task waiting on the socket wakes and stops


class Handoff:
    """Chunks from the pump to the task reading them, one at a time: the
    pump waits until its chunk is taken. (Two flags, where anyio's memory
    object stream costs two extra turns of the loop a chunk.)"""

    def __init__(self) -> None:
        self._chunk: bytes | None = None
        self._given = Flag()  # a chunk waits, or the pump has ended
        self._taken = Flag()  # the chunk was taken, or the reader has closed
        self._ended = False
        self._closed = False

    async def send(self, chunk: bytes) -> bool:
        """Hand ``chunk`` over and wait until it is taken; False if the reader closed."""
        if self._closed:
            return False
        self._chunk = chunk
        self._taken.clear()
        self._given.set()
        await self._taken.wait()
        return not self._closed

    def end(self) -> None:
        """No more chunks: the reader gets ``EndOfStream`` after the last."""
        self._ended = True
        self._given.set()

    async def receive(self) -> bytes:
        """The next chunk; ``EndOfStream`` once the pump has ended."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            chunk, self._chunk = self._chunk, None
            if chunk is not None:
                self._given.clear()
                self._taken.set()
                return chunk
            if self._ended:
                raise anyio.EndOfStream
            await self._given.wait()

    def close(self) -> None:
        """The reader is done: a pump waiting to hand a chunk over stops."""
        self._closed = True
        self._taken.set()


def _stop_eager_reading(stream: anyio.abc.ByteStream) -> None:
    """Make an accepted asyncio socket read only when asked to.

    anyio's asyncio backend starts accepted connections with reading on, and
    turns it off only after a receive that had to wait. An agent that uploads
    faster than the bridge's credit allows would then be buffered whole in
    memory. Pausing up front restores the backpressure (trio needs nothing).
    The transport is anyio's private attribute: tests/adapters/test_dependencies.py
    pins it.
    """
    transport = getattr(stream, "_transport", None)
    pause = getattr(transport, "pause_reading", None)
    if pause is not None and transport is not None and not transport.is_closing():
        pause()


async def serve(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    handler: AgentHandler,
) -> None:
    """Call ``handler`` in a task of its own for each connection ``listener`` takes.

    On asyncio the listener's sockets are accepted here and each connection
    is handed over as a ``SocketFdStream`` (read and written without a
    transport: on a small request, a fifth fewer turns of the sandbox
    side's loop); on trio, ``listener.serve`` as it is.
    """
    if not on_asyncio():
        await listener.serve(handler)
        return
    listeners = getattr(listener, "listeners", [listener])
    sockets = [one.extra(anyio.abc.SocketAttribute.raw_socket) for one in listeners]
    async with anyio.create_task_group() as tg:
        for sock in sockets:
            tg.start_soon(_serve_socket, sock, handler, tg)


async def _serve_socket(
    sock: socket.socket, handler: AgentHandler, tg: anyio.abc.TaskGroup
) -> None:
    while True:
        tg.start_soon(handler, await accept(sock))


async def open_listener(listen: Listen) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    if isinstance(listen, str):
        return await anyio.create_unix_listener(listen)
    host, port = listen
    return await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)


def listener_address(listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> Listen:
    address = listener.extra(anyio.abc.SocketAttribute.local_address)
    if isinstance(address, str):
        return address
    return (str(address[0]), int(address[1]))
