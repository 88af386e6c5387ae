"""The writer of a session: what the core queues, onto the channel in use.

A task of its own, so that reading never waits on writing: two sides that
both have a lot to send still drain each other. Woken when the core may
have something to send, it runs in the loop's next turn, after every task
that was ready with the one that woke it (a request's head, body and end,
and the other agents' requests of that turn, then leave in one write), and
sends everything in pieces of at most ``WRITE_SIZE``.

An acknowledgement alone is held a little (``ack_delay``) for other frames
to carry it: a request's rides with its answer, an answer's with the next
request. Sent at once, each would wake the peer for nothing but to note it.

On asyncio, over a descriptor of ours (a pipe or a socket), the task only
stands by: a wake schedules a callback for the same point of the loop's
turn, which writes what the descriptor takes at once, and a held
acknowledgement waits on a timer of the loop. A small request then costs
no task switch here; the task takes over only when the descriptor is full,
and to send the last frames of a finished session.

It also times the bridge's round trips (a frame written to its
acknowledgement) for the summary line.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import anyio
import anyio.abc

import bridgeproto as bp

from .errors import STREAM_ERRORS
from .session_stats import SessionStats
from .streams import Descriptor, write_descriptor
from .wakeups import Flag, clock, on_asyncio

WRITE_SIZE = 256 << 10
Tracer = Callable[[str, bytes], None]  # (direction ">" or "<", bytes)


class ChannelWriter:
    """Sends what ``conn`` queues; ``wake`` whenever the core may have some.

    ``finished`` is the session's end: the writer then sends the last
    frames and stops (``done``). ``broke(reason)`` hears of a failed write.
    """

    # Seconds an acknowledgement may wait for other frames to ride with.
    ack_delay = 0.01

    def __init__(
        self,
        conn: bp.Connection,
        stats: SessionStats,
        finished: anyio.Event,
        broke: Callable[[str], None],
        tracer: Tracer | None = None,
        woken: Callable[[], None] = lambda: None,
    ) -> None:
        self.conn = conn
        self.stats = stats
        self.finished = finished
        self.broke = broke
        self.tracer = tracer
        self.woken = woken  # told each time a wake is taken in (the session re-reads its timer)
        self.running = False
        self._holding = False  # holding an acknowledgement for other frames to carry
        self.done = anyio.Event()  # the last frames went out (or never will)
        self.now = clock()
        self._wake = Flag()
        # Set after the next flush; made only when a sender waits for one.
        self._flushed: Flag | None = None
        # When bytes that may need acknowledging first arrived since the last write.
        self._received_at: float | None = None
        self._unacked: deque[tuple[float, int]] = deque()  # (written at, highest seq)
        # Writing from loop callbacks (asyncio, a descriptor of ours; see above):
        self._direct: Descriptor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._standing_by = False  # the task waits, leaving the writes to callbacks
        self._scheduled = False  # a callback will write in this turn of the loop
        self._hold: asyncio.TimerHandle | None = None  # ends a held acknowledgement
        self._leftover: bytes | memoryview = b""  # what the descriptor did not take, for the task
        self._failure: BaseException | None = None  # what a callback raised, for the task

    def wake(self) -> None:
        # While it holds an acknowledgement, only frames to send wake it: the
        # hold ends within ack_delay, and it calls ``woken`` then.
        if self._holding and self._only_ack_due():
            return
        if not self._standing_by:
            self._wake.set()
        elif not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._write_soon)

    def received(self) -> None:
        """Bytes came from the peer: an acknowledgement may be due. Also
        times the round trips their acknowledgements close."""
        now = self.now()
        if self._received_at is None:
            self._received_at = now
        acked = self.conn.acked_seq
        while self._unacked and self._unacked[0][1] <= acked:
            written, _ = self._unacked.popleft()
            if len(self.stats.round_trips) < 100_000:
                self.stats.round_trips.append(now - written)

    async def caught_up(self) -> None:
        """Wait until what is queued now has been handed to the stream.

        Senders call this after each chunk, so a slow stream slows them down
        instead of letting bytes pile up in memory. Below one write's worth
        it returns at once: small bodies go out with whatever follows them.
        """
        if self.conn.unsent_bytes > WRITE_SIZE and not self.done.is_set():
            if self._flushed is None:
                self._flushed = Flag()
            flushed = self._flushed
            self.wake()
            await flushed.wait()

    def release(self) -> None:
        """The session is over: nobody waits on this writer any more."""
        self.done.set()
        if self._flushed is not None:
            self._flushed.set()
        if self._hold is not None:
            self._hold.cancel()

    async def run(self, stream: anyio.abc.ByteStream) -> None:
        """Write to ``stream`` until the session has finished or the stream fails."""
        self.running = True
        try:
            await self._run(stream)
        finally:
            self.running = False

    async def _run(self, stream: anyio.abc.ByteStream) -> None:
        # A frame's tail left by the last channel is not this one's to send:
        # the session resumes here by sending every unacknowledged frame again.
        self._leftover = b""
        self._direct = write_descriptor(stream) if on_asyncio() else None
        if self._direct is not None:
            self._loop = asyncio.get_running_loop()
        while True:
            if self._direct is not None:
                if not await self._stand_by(stream):
                    return
            else:
                await self._held_ack()
            if not await self._flush(stream):
                return
            self._flushed_now()
            if self.finished.is_set():
                self.done.set()
                return

    async def _held_ack(self) -> None:
        """Until the next wake, and an acknowledgement alone until it is due."""
        while True:
            await self._woken()
            if self._only_ack_due():
                if self._received_at is None:
                    continue  # nothing to send, not even an acknowledgement
                due = self._received_at + self.ack_delay
                self._holding = True
                try:
                    while self._only_ack_due() and (left := due - self.now()) > 0:
                        await self._woken(left)
                finally:
                    self._holding = False
            return

    async def _stand_by(self, stream: anyio.abc.ByteStream) -> bool:
        """Leave the writes to callbacks until one hands over (the
        descriptor was full, or the session has finished); then send what
        the callback could not. False when the channel failed."""
        if not self._leftover and not self.finished.is_set():
            self._standing_by = True
            try:
                self.wake()  # whatever is queued already goes now
                await self._wake.wait()
            finally:
                self._standing_by = False
        self._wake.clear()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        leftover, self._leftover = self._leftover, b""
        if leftover:
            try:
                await stream.send(leftover)  # type: ignore[arg-type]  # (a descriptor takes any buffer)
            except STREAM_ERRORS as exc:
                self.broke(f"writing failed: {exc!r}")
                return False
        return True

    def _write_soon(self) -> None:
        """A wake taken in a callback: write what the descriptor takes now,
        or hold an acknowledgement alone on the loop's timer. What it raises
        is raised by the task (not the loop's to log and go on)."""
        self._scheduled = False
        if not self._standing_by:  # the task has taken over: the wake is its
            self._wake.set()
            return
        try:
            self._write_now()
        except BaseException as exc:
            self._failure = exc
            self._hand_over()

    def _write_now(self) -> None:
        self.woken()
        if self._only_ack_due():
            if self._received_at is None:
                return  # nothing to send, not even an acknowledgement
            due = self._received_at + self.ack_delay
            if due > self.now():
                if self._hold is None:
                    assert self._loop is not None
                    self._holding = True
                    self._hold = self._loop.call_at(due, self._hold_over)
                return
        if self.finished.is_set():  # the task sends the last frames, then says done
            self._hand_over()
            return
        self._received_at = None  # what is due is acknowledged with this
        assert self._direct is not None
        while data := self._next_piece():
            written = self._direct.write_now(data)
            if written < len(data):  # full (or failed: the task meets the error again)
                self._leftover = memoryview(data)[written:]
                self._hand_over()
                return
        self._flushed_now()

    def _hold_over(self) -> None:
        """A held acknowledgement is due (or the frames went meanwhile): look again."""
        self._hold = None
        self._holding = False
        self._write_soon()

    def _hand_over(self) -> None:
        self._standing_by = False
        self._wake.set()

    def _flushed_now(self) -> None:
        flushed, self._flushed = self._flushed, None
        if flushed is not None:
            flushed.set()

    async def _woken(self, timeout: float | None = None) -> None:
        await self._wake.wait(timeout)
        self._take_wake()

    def _take_wake(self) -> None:
        self._wake.clear()
        self.woken()

    def _only_ack_due(self) -> bool:
        """Whether the core has at most an acknowledgement to send, in an
        open session (a closing one drains only once all is acknowledged)."""
        return self.conn.unsent_bytes == 0 and self.conn.state is bp.SessionState.OPEN

    async def _flush(self, stream: anyio.abc.ByteStream) -> bool:
        """Send what the core has queued; False when the channel failed."""
        self._received_at = None  # what is due is acknowledged with this
        # In pieces, so a large backlog is never copied into one buffer.
        while data := self._next_piece():
            try:
                await stream.send(data)
            except STREAM_ERRORS as exc:
                self.broke(f"writing failed: {exc!r}")
                return False
        return True

    def _next_piece(self) -> bytes:
        """The core's next bytes to send (at most ``WRITE_SIZE``), noted for
        the trace and the round-trip times; b"" when there are none."""
        data = self.conn.data_to_send(WRITE_SIZE)
        if data:
            if self.tracer is not None:
                self.tracer(">", data)
            seq = self.conn.sent_seq
            if seq and (not self._unacked or self._unacked[-1][1] < seq):
                self._unacked.append((self.now(), seq))
        return data
