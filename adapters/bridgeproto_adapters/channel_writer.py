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

It also times the bridge's round trips (a frame written to its
acknowledgement) for the summary line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio
import anyio.abc

import bridgeproto as bp

from .errors import STREAM_ERRORS
from .session_stats import SessionStats
from .wakeups import Flag, clock

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

    def wake(self) -> None:
        # While it holds an acknowledgement, only frames to send wake it: the
        # hold ends within ack_delay, and it calls ``woken`` then.
        if not (self._holding and self._only_ack_due()):
            self._wake.set()

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

    async def run(self, stream: anyio.abc.ByteStream) -> None:
        """Write to ``stream`` until the session has finished or the stream fails."""
        self.running = True
        try:
            await self._run(stream)
        finally:
            self.running = False

    async def _run(self, stream: anyio.abc.ByteStream) -> None:
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
            if not await self._flush(stream):
                return
            flushed, self._flushed = self._flushed, None
            if flushed is not None:
                flushed.set()
            if self.finished.is_set():
                self.done.set()
                return

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
        while data := self.conn.data_to_send(WRITE_SIZE):
            if self.tracer is not None:
                self.tracer(">", data)
            seq = self.conn.sent_seq
            if seq and (not self._unacked or self._unacked[-1][1] < seq):
                self._unacked.append((self.now(), seq))
            try:
                await stream.send(data)
            except STREAM_ERRORS as exc:
                self.broke(f"writing failed: {exc!r}")
                return False
        return True
