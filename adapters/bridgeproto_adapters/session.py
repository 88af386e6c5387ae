"""A bridge session over channels that may break and be replaced.

``Session`` owns one core ``Connection``, a timer task that fires at the
core's next deadline, and for the channel in use a reader (feeding its bytes
to the core) and a writer (sending what the core queued); on asyncio, over a
descriptor of its own, the loop's callbacks read and write the channel and
those two tasks only stand by (``_fed_by``, ``channel_writer``). It makes no
protocol decisions; it moves bytes, arms the timer and hands each exchange's
events to whoever handles the exchange.

When the channel breaks (its stream ends or fails, or the core reports the
link damaged), the session takes the next one from its ``Channels`` and the
core resumes there: what the peer did not acknowledge is sent again, and the
exchanges go on. If no channel comes within ``resume_timeout``, the session
fails, and so does every exchange in flight.

Its parts, each a module of its own below it: the writer
(``channel_writer``), one exchange and the buffer of its records
(``exchange``), the line of exchanges waiting for room in the core
(``admission``), and what crossed, for the summary line (``session_stats``).
This module runs the channels one after another, reads them, fires the
timer and fans the core's events out to the exchanges.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable

import anyio
import anyio.abc
import anyio.lowlevel

import bridgeproto as bp

from .admission import Admission
from .channel_writer import ChannelWriter, Tracer
from .errors import STREAM_ERRORS, SessionEnded
from .exchange import Exchange, ExchangeEvent
from .session_stats import SessionStats
from .settings import RESUME_TIMEOUT
from .streams import Descriptor, read_descriptor
from .transports import Channels, NoChannel, OneChannel
from .wakeups import Flag, clock, on_asyncio

__all__ = ["RESUME_TIMEOUT", "Exchange", "Session", "SessionStats", "Tracer", "first_of"]

RequestHandler = Callable[["Exchange", bp.RequestHead], Awaitable[None]]

logger = logging.getLogger("bridgeproto")
_FINAL_FLUSH_SECONDS = 2.0
_RETRY_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)  # waits between failed attempts to open a channel


class Session:
    """Runs a core ``Connection`` over the channels ``channels`` gives (or
    over one byte stream, which then ends the session when it breaks).

    ``on_request`` is called in a task of its own for every request head the
    peer sends (outward exchanges on the host side, inward ones on the
    sandbox side; a task that handled one waits for the next). ``run``
    returns when the session has closed or failed; ``ready`` is set once the
    handshake completes. ``on_channel``, if given, hears of every channel
    change (for ``-v``).
    """

    def __init__(
        self,
        conn: bp.Connection,
        channels: Channels | anyio.abc.ByteStream,
        on_request: RequestHandler | None = None,
        tracer: Tracer | None = None,
        *,
        resume_timeout: float = RESUME_TIMEOUT,
        on_channel: Callable[[str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.tracer = tracer
        self.stats = SessionStats()
        if isinstance(channels, anyio.abc.ByteStream):
            channels = OneChannel(channels)
        self.channels = channels
        self.resume_timeout = resume_timeout
        self.on_channel = on_channel
        self.stream: anyio.abc.ByteStream | None = None  # the channel in use
        self._channel_broke = anyio.Event()
        self._broke_because = ""
        # Since when no channel has carried the peer's word: a channel that
        # connects and breaks before saying anything does not reset the
        # resume deadline, or one that keeps doing so would hold it off forever.
        self._unheard_since: float | None = None
        self.on_request = on_request
        self.ready = anyio.Event()
        self.finished = anyio.Event()
        self.failure: bp.SessionFailed | None = None
        self._exchanges: dict[int, Exchange] = {}
        self._writer = ChannelWriter(
            conn, self.stats, self.finished, self._break_channel, tracer, self._rearm_timer
        )
        self.now = clock()
        self._wake_timer = Flag()
        self._armed_deadline: float | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # Tasks that have handled a request and wait for the next (starting a
        # task costs more than waking one); never more than ever ran at once.
        self._idle_handlers: list[_Handler] = []
        self._admission = Admission(lambda: self.usable and self.conn.exchanges_full)

    # ---------------------------------------------------------------- API

    @property
    def usable(self) -> bool:
        return self.conn.failure is None

    def check_usable(self) -> None:
        if self.conn.failure is not None:
            raise SessionEnded(self.conn.failure.reason)

    async def open_exchange(
        self,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        *,
        route: int = 0,
    ) -> Exchange:
        """Start an exchange on ``route`` (either side); raises
        ``LocalProtocolError`` when the core refuses (its ``code`` says why)
        or ``SessionEnded``."""
        self.check_usable()
        exchange_id = self.conn.start_exchange(method, target, headers, self.now(), route=route)
        self.stats.exchanges += 1
        exchange = Exchange(self, exchange_id)
        self._exchanges[exchange_id] = exchange
        self.core_changed()
        return exchange

    def must_queue(self) -> bool:
        """Whether a new exchange must wait its turn (the core is full, or
        others already wait)."""
        return self._admission.must_queue()

    async def wait_for_exchange_slot(self) -> None:
        """Wait, in arrival order, until the core takes a new exchange (or the
        session ends: ``open_exchange`` then says so)."""
        await self._admission.wait_for_slot()

    def core_changed(self) -> None:
        """Tell the writer and the timer: the core may have something to send
        or a new deadline."""
        self._writer.wake()
        if not self._writer.running:  # (else the writer calls it once it wakes)
            self._rearm_timer()

    def _rearm_timer(self) -> None:
        """Wake the timer if the core's next deadline is now earlier than
        the one it waits for. Deadlines mostly move later (activity pushes
        them back) and the timer re-reads them when it fires, so it is
        woken early only when needed."""
        deadline = self.conn.next_deadline()
        armed = self._armed_deadline
        if deadline is not None and (armed is None or deadline < armed):
            self._wake_timer.set()

    async def writer_caught_up(self) -> None:
        """Wait until the writer has handed what is queued now to the stream
        (at once below one write's worth)."""
        await self._writer.caught_up()

    def forget(self, exchange: Exchange) -> None:
        self._exchanges.pop(exchange.id, None)
        exchange.release_unread()
        self._admission.wake_next()

    async def close(
        self, code: bp.ErrorCode = bp.ErrorCode.NO_ERROR, reason: str = "",
        grace: float | None = None,
    ) -> None:  # fmt: skip
        """Graceful shutdown: goaway, drain within the grace period (default
        the core's ``shutdown_grace``; exchanges still open then are reset), close."""
        grace = self.conn.config.shutdown_grace if grace is None else grace
        if self.usable:
            self.conn.close(self.now(), code, reason, grace=grace)
            self.core_changed()
        with anyio.move_on_after(grace + 1.0):
            await self.finished.wait()
        if not self.finished.is_set():  # the core's own grace timer did not end it
            self._dispatch(self.conn.abort("the session did not drain in time"))

    # ---------------------------------------------------------------- running

    async def wait_final_flush(self) -> None:
        """Once the session has finished, until its writer has sent the last
        frames (at most the final flush time): a channel closed before them
        leaves the peer waiting for an acknowledgement that never comes."""
        if self.finished.is_set() and self.stream is not None and not self._channel_broke.is_set():
            with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
                await self._writer.done.wait()

    async def run(self) -> None:
        self.now = self._writer.now = clock()  # (made outside the loop, it had anyio's)
        self.conn.start(self.now())
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._timer)
                tg.start_soon(self._channels)
                self.core_changed()
                await self.finished.wait()
                # Let the writer send the final acknowledgements and resets,
                # but never wait long on a peer that stopped reading.
                with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
                    await self._writer.done.wait()
                tg.cancel_scope.cancel()
        finally:
            self._end_all("the session ended")
            with anyio.CancelScope(shield=True):
                if self.stream is not None:
                    await self.stream.aclose()

    async def _channels(self) -> None:
        """Run on one channel after another until the session ends."""
        first = True
        while not self.finished.is_set():
            stream = await self._open_channel(first)
            if stream is None:
                return
            if not first:
                self.stats.reconnects += 1
                self.conn.resume(self.now())
                self.core_changed()  # the hello and the resent frames go out at once
                self._say(f"channel {self.stats.reconnects + 1} is up; the session resumes")
            first = False
            self.stream = stream
            self._channel_broke = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader, stream)
                tg.start_soon(self._writer.run, stream)
                await first_of(self._channel_broke, self.finished)
                if self.finished.is_set():
                    # The writer sends the last frames; the reader has nothing to do.
                    with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
                        await self._writer.done.wait()
                tg.cancel_scope.cancel()
            if not self.finished.is_set():
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                self.stream = None

    async def _open_channel(self, first: bool) -> anyio.abc.ByteStream | None:
        """The next channel, trying until the resume deadline; None if none came
        (the session has then failed)."""
        reason = f"no channel came within {self.resume_timeout:g} s"
        if self._unheard_since is None:
            self._unheard_since = self.now()
        with anyio.move_on_after(self._unheard_since + self.resume_timeout - self.now()):
            for attempt in itertools.count():
                try:
                    return await self.channels.next_channel()
                except NoChannel as exc:
                    if exc.final:
                        reason = str(exc)
                        break
                    failed = str(exc)
                except STREAM_ERRORS as exc:
                    failed = f"{exc!r}"
                reason = f"no channel came within {self.resume_timeout:g} s (last: {failed})"
                self._say(f"opening a channel failed ({failed}); trying again")
                await anyio.sleep(_RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)])
        if not first:
            reason = f"the channel broke ({self._broke_because}), and {reason}"
        self._dispatch(self.conn.abort(reason))
        return None

    def _say(self, message: str) -> None:
        if self.on_channel is not None:
            self.on_channel(message)

    def _break_channel(self, reason: str) -> None:
        if not self._channel_broke.is_set():
            self._broke_because = reason
            if not self.finished.is_set():  # a channel closed by a stop did not break
                self._say(f"the channel broke: {reason}")
            self._channel_broke.set()

    async def _reader(self, stream: anyio.abc.ByteStream) -> None:
        source = read_descriptor(stream) if on_asyncio() else None
        if source is not None:
            await self._fed_by(source)
            return
        while True:
            try:
                data = await stream.receive()
            except STREAM_ERRORS as exc:
                self._break_channel(f"reading failed: {exc!r}")
                return
            if not self._received(data):
                return

    async def _fed_by(self, source: Descriptor) -> None:
        """Take the channel's bytes in the loop's callback as they arrive
        (asyncio, a descriptor of ours): no task switch a chunk. What the
        callback raises is raised here, as the reading task's own error."""
        stopped = Flag()
        failed: list[BaseException] = []

        def take(chunk: bytes | Exception) -> None:
            try:
                if isinstance(chunk, bytes) and chunk:
                    if self._received(chunk):
                        return
                else:
                    said = anyio.EndOfStream() if isinstance(chunk, bytes) else chunk
                    self._break_channel(f"reading failed: {said!r}")
            except BaseException as exc:  # a bug: not the loop's to log and go on
                failed.append(exc)
            source.feed(None)
            stopped.set()

        source.feed(take)
        try:
            await stopped.wait()
        finally:
            source.feed(None)
        if failed:
            raise failed[0]

    def _received(self, data: bytes) -> bool:
        """Bytes from the channel, into the core; False once the session has failed."""
        self._unheard_since = None
        if self.tracer is not None:
            self.tracer("<", data)
        if self.conn.failure is not None:
            return False
        self._dispatch(self.conn.receive_data(data, self.now()))
        self._writer.received()
        return True

    async def _timer(self) -> None:
        while True:
            self._wake_timer.clear()
            deadline = self._armed_deadline = self.conn.next_deadline()
            if deadline is None:
                await self._wake_timer.wait()
                continue
            delay = deadline - self.now()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake_timer.wait()
                continue
            self._dispatch(self.conn.handle_timer(self.now()))

    def _dispatch(self, events: list[bp.Event]) -> None:
        for event in events:
            if isinstance(
                event, (bp.RequestHead, bp.ResponseHead, bp.Data, bp.EndOfBody, bp.ExchangeReset)
            ):
                self._to_exchange(event)
            elif isinstance(event, bp.CreditAvailable):
                if event.exchange_id == 0:  # session-wide: every sender may go on
                    waiting = list(self._exchanges.values())
                else:
                    one = self._exchanges.get(event.exchange_id)
                    waiting = [one] if one is not None else []
                for exchange in waiting:
                    exchange.credit_arrived()
            elif isinstance(event, bp.HandshakeComplete):
                self.ready.set()
            elif isinstance(event, bp.LinkBroken):
                self._break_channel(event.reason)
            elif isinstance(event, bp.SessionFailed):
                self.failure = event
                self.finished.set()
            elif isinstance(event, bp.SessionClosed):
                self.finished.set()
        self._admission.wake_next()  # acknowledgements may have made room
        self.core_changed()

    def _to_exchange(self, event: ExchangeEvent) -> None:
        if isinstance(event, bp.Data):
            self.stats.body_bytes_received += len(event.data)
        if isinstance(event, bp.RequestHead):
            self.stats.exchanges += 1
            exchange = Exchange(self, event.exchange_id)
            self._exchanges[event.exchange_id] = exchange
            if self.on_request is None or self._task_group is None:
                exchange.reset(bp.ErrorCode.REFUSED, "this side does not take requests")
                self.forget(exchange)
                return
            if self._idle_handlers:
                self._idle_handlers.pop().give(exchange, event)
            else:
                self._task_group.start_soon(self._handler, exchange, event)
            return
        maybe = self._exchanges.get(event.exchange_id)
        if maybe is None:
            if isinstance(event, bp.Data):  # its handler is gone: release the credit
                self.conn.consume(event.exchange_id, len(event.data))
            return
        maybe.deliver(event)

    async def _handler(self, exchange: Exchange, head: bp.RequestHead) -> None:
        """Handle requests, this one first, then each given to it while idle."""
        assert self.on_request is not None
        handler = _Handler()
        while True:
            try:
                await self.on_request(exchange, head)
            except Exception as exc:  # a bug in a handler must not end the session
                logger.exception("handling exchange %d failed", exchange.id)
                exchange.reset(bp.ErrorCode.INTERNAL_ERROR, f"the host side failed: {exc!r}")
            finally:
                exchange.close()
            self._idle_handlers.append(handler)
            exchange, head = await handler.next()

    def _end_all(self, reason: str) -> None:
        self._dispatch(self.conn.abort(reason))  # does nothing if the session already ended
        for exchange in list(self._exchanges.values()):
            exchange.session_ended()
        self.finished.set()
        self._writer.release()
        self._admission.release_all()


class _Handler:
    """An idle request handler's mailbox: the next exchange, and its wake-up."""

    def __init__(self) -> None:
        self._given = Flag()
        self._work: tuple[Exchange, bp.RequestHead] | None = None

    def give(self, exchange: Exchange, head: bp.RequestHead) -> None:
        self._work = (exchange, head)
        self._given.set()

    async def next(self) -> tuple[Exchange, bp.RequestHead]:
        await self._given.wait()
        self._given.clear()
        work, self._work = self._work, None
        assert work is not None
        return work


async def first_of(*events: anyio.Event) -> int:
    """Wait until one of ``events`` is set; returns its index."""
    winner: list[int] = []
    async with anyio.create_task_group() as tg:

        async def wait(index: int) -> None:
            await events[index].wait()
            winner.append(index)
            tg.cancel_scope.cancel()

        for index in range(len(events)):
            tg.start_soon(wait, index)
    return winner[0]
