"""A bridge session over channels that may break and be replaced.

``Session`` owns one core ``Connection``, a timer task that fires at the
core's next deadline, and for the channel in use a reader (feeding its bytes
to the core) and a writer (sending what the core queued). It makes no
protocol decisions; it moves bytes, arms the timer and hands each exchange's
events to whoever handles the exchange.

When the channel breaks (its stream ends or fails, or the core reports the
link damaged), the session takes the next one from its ``Channels`` and the
core resumes there: what the peer did not acknowledge is sent again, and the
exchanges go on. If no channel comes within ``resume_timeout``, the session
fails, and so does every exchange in flight.

The writer is its own task so that reading never waits on writing: two sides
that both have a lot to send still drain each other.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

import bridgeproto as bp

from .errors import STREAM_ERRORS, ExchangeAborted, SessionEnded
from .settings import RESUME_TIMEOUT
from .transports import Channels, NoChannel, OneChannel

ExchangeEvent = bp.ResponseHead | bp.RequestHead | bp.Data | bp.EndOfBody | bp.ExchangeReset
RequestHandler = Callable[["Exchange", bp.RequestHead], Awaitable[None]]

logger = logging.getLogger("bridgeproto")
_FINAL_FLUSH_SECONDS = 2.0
_RETRY_SECONDS = (0.05, 0.1, 0.2, 0.5, 1.0)  # waits between failed attempts to open a channel
_WRITE_SIZE = 256 << 10


class Exchange:
    """One exchange, as the code that carries it sees it.

    Receive the peer's records from ``events``; send with ``send_data`` (which
    waits for credit) and ``end``; report what you passed on with
    ``consume``; always ``close`` when done (it resets an exchange still in
    flight).
    """

    def __init__(self, session: Session, exchange_id: int) -> None:
        self.id = exchange_id
        self._session = session
        self._send: MemoryObjectSendStream[ExchangeEvent]
        # Unbounded is safe: the core's credit bounds how much can arrive.
        self._send, self.events = anyio.create_memory_object_stream[ExchangeEvent](math.inf)
        self._credit = anyio.Event()
        self.ended_by: bp.ExchangeReset | None = None  # the reset that ended it, if one did
        self.head_sent = False  # a final response head (not 1xx, or a 101) went out

    @property
    def conn(self) -> bp.Connection:
        return self._session.conn

    async def send_data(self, data: bytes) -> None:
        """Send body bytes, waiting for credit as often as needed."""
        view = memoryview(data)
        while view:
            credit = self._credit_now()
            if credit == 0:
                self._credit = anyio.Event()
                if self._credit_now() == 0:
                    await self._credit.wait()
                continue
            chunk, view = bytes(view[:credit]), view[credit:]
            self.conn.send_data(self.id, chunk, self._session.now())
            self._session.stats.body_bytes_sent += len(chunk)
            self._session.core_changed()
            await self._session.writer_caught_up()

    def _credit_now(self) -> int:
        self._check_alive()
        return self.conn.send_credit(self.id)

    def _check_alive(self) -> None:
        if not self.conn.is_open(self.id):
            reset = self.ended_by
            if reset is not None:
                raise ExchangeAborted(reset.code, reset.reason)
            raise ExchangeAborted(bp.ErrorCode.CANCELLED, "the exchange has ended")
        self._session.check_usable()

    def send_response(self, head: bp.ResponseHead) -> None:
        self._check_alive()
        self.conn.send_response(
            self.id, head.status, head.reason, head.headers, self._session.now()
        )
        self.head_sent = self.head_sent or head.status >= 200 or head.status == 101
        self._session.core_changed()

    def end(self) -> None:
        self._check_alive()
        self.conn.send_end(self.id, self._session.now())
        self._session.close_events_if_over(self)

    def consume(self, nbytes: int) -> None:
        if self._session.usable:
            self.conn.consume(self.id, nbytes)
            self._session.core_changed()

    def reset(self, code: bp.ErrorCode, reason: str = "") -> None:
        if self._session.usable and self.conn.is_open(self.id):
            self.conn.reset(self.id, code, reason)
            self._session.core_changed()
        self._session.close_events_if_over(self)

    def close(self) -> None:
        """Done with the exchange: reset it if it is still in flight."""
        self.reset(bp.ErrorCode.CANCELLED, "the exchange was abandoned")
        self._session.forget(self)

    def _deliver(self, event: ExchangeEvent) -> None:
        if isinstance(event, bp.ExchangeReset):
            self.ended_by = event
        try:
            self._send.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            if isinstance(event, bp.Data):  # nobody will read it: release the credit
                self.consume(len(event.data))
        self._credit.set()
        # The core has already processed the whole batch, so "not open" may
        # be true before this event's successors are delivered: close only
        # on the event that ends the exchange.
        ended = isinstance(event, bp.ExchangeReset) or (
            isinstance(event, bp.EndOfBody) and not self.conn.is_open(self.id)
        )
        if ended:
            self._send.close()


@attrs.define
class SessionStats:
    """What crossed the session, for the summary line."""

    exchanges: int = 0
    reconnects: int = 0  # channels after the first
    body_bytes_sent: int = 0
    body_bytes_received: int = 0
    # Seconds from a frame being written to its acknowledgement arriving:
    # the time the bridge adds to an exchange, once each way.
    round_trips: list[float] = attrs.field(factory=list)

    def summary(self, role: bp.Role = bp.Role.HOST) -> str:
        """One line: exchanges, body bytes each way, added latency."""
        trips = sorted(self.round_trips)
        if trips:
            median = trips[len(trips) // 2] * 1000
            p99 = trips[min(len(trips) - 1, int(len(trips) * 0.99))] * 1000
            latency = f"added latency median {median:.2f} ms, p99 {p99:.2f} ms"
        else:
            latency = "added latency not measured yet"
        up, down = self.body_bytes_received, self.body_bytes_sent
        if role is bp.Role.SANDBOX:
            up, down = down, up
        reconnects = f", {_count(self.reconnects, 'reconnect')}" if self.reconnects else ""
        return (
            f"bridgeproto: {_count(self.exchanges, 'exchange')}, {up} bytes up, {down} bytes"
            f" down{reconnects}, {latency}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


Tracer = Callable[[str, bytes], None]  # (direction ">" or "<", bytes)


class Session:
    """Runs a core ``Connection`` over the channels ``channels`` gives (or
    over one byte stream, which then ends the session when it breaks).

    ``on_request`` is called in a task of its own for every request head the
    peer sends (outward exchanges on the host side, inward ones on the
    sandbox side). ``run`` returns when the session has closed or
    failed; ``ready`` is set once the handshake completes. ``on_channel``, if
    given, hears of every channel change (for ``-v``).
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
        self._unacked: deque[tuple[float, int]] = deque()  # (written at, highest seq)
        if isinstance(channels, anyio.abc.ByteStream):
            channels = OneChannel(channels)
        self.channels = channels
        self.resume_timeout = resume_timeout
        self.on_channel = on_channel
        self.stream: anyio.abc.ByteStream | None = None  # the channel in use
        self._channel_broke = anyio.Event()
        self._broke_because = ""
        self.on_request = on_request
        self.ready = anyio.Event()
        self.finished = anyio.Event()
        self.failure: bp.SessionFailed | None = None
        self._exchanges: dict[int, Exchange] = {}
        self._wake_writer = anyio.Event()
        self._wake_timer = anyio.Event()
        self._armed_deadline: float | None = None
        # Set after the next flush; made only when a sender waits for one.
        self._flushed: anyio.Event | None = None
        self._writer_done = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        # Senders waiting for the core to take a new exchange, first come first served.
        self._slot_waiters: deque[anyio.Event] = deque()

    # ---------------------------------------------------------------- API

    @staticmethod
    def now() -> float:
        return anyio.current_time()

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
        return bool(self._slot_waiters) or (self.usable and self.conn.exchanges_full)

    async def wait_for_exchange_slot(self) -> None:
        """Wait, in arrival order, until the core takes a new exchange (or the
        session ends: ``open_exchange`` then says so)."""
        turn = anyio.Event()
        self._slot_waiters.append(turn)
        try:
            while True:
                await turn.wait()
                if not self.usable or not self.conn.exchanges_full:
                    return  # the caller opens its exchange before anything else runs
                turn = anyio.Event()  # woken too early: wait again, first in line
                self._slot_waiters.appendleft(turn)
        except BaseException:  # cancelled, or timed out
            if turn.is_set():
                self._wake_slot_waiter()  # the slot we leave goes to the next in line
            else:
                self._slot_waiters.remove(turn)
            raise

    def _wake_slot_waiter(self) -> None:
        if self._slot_waiters and (not self.usable or not self.conn.exchanges_full):
            self._slot_waiters.popleft().set()

    def core_changed(self) -> None:
        """Tell the writer and the timer: the core may have something to send
        or a new deadline."""
        self._wake_writer.set()
        # Deadlines mostly move later (activity pushes them back), and the
        # timer re-reads them when it fires; wake it early only when needed.
        deadline = self.conn.next_deadline()
        armed = self._armed_deadline
        if deadline is not None and (armed is None or deadline < armed):
            self._wake_timer.set()

    async def writer_caught_up(self) -> None:
        """Wait until the writer has handed what is queued now to the stream.

        Senders call this after each chunk, so a slow stream slows them down
        instead of letting bytes pile up in memory. Below one write's worth
        it returns at once: small bodies go out with whatever follows them.
        """
        if self.conn.unsent_bytes > _WRITE_SIZE and not self._writer_done.is_set():
            if self._flushed is None:
                self._flushed = anyio.Event()
            flushed = self._flushed
            self.core_changed()
            await flushed.wait()

    def close_events_if_over(self, exchange: Exchange) -> None:
        """Close the exchange's event stream once the core says it is over."""
        self.core_changed()
        if not self.conn.is_open(exchange.id):
            exchange._send.close()

    def forget(self, exchange: Exchange) -> None:
        self._exchanges.pop(exchange.id, None)
        exchange._send.close()
        self._wake_slot_waiter()
        # Bytes delivered but never read still hold credit: give it back.
        while True:
            try:
                event = exchange.events.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if isinstance(event, bp.Data):
                exchange.consume(len(event.data))

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
                await self._writer_done.wait()

    async def run(self) -> None:
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
                    await self._writer_done.wait()
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
                tg.start_soon(self._writer, stream)
                await first_of(self._channel_broke, self.finished)
                if self.finished.is_set():
                    # The writer sends the last frames; the reader has nothing to do.
                    with anyio.move_on_after(_FINAL_FLUSH_SECONDS):
                        await self._writer_done.wait()
                tg.cancel_scope.cancel()
            if not self.finished.is_set():
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                self.stream = None

    async def _open_channel(self, first: bool) -> anyio.abc.ByteStream | None:
        """The next channel, trying until the resume deadline; None if none came
        (the session has then failed)."""
        reason = f"no channel came within {self.resume_timeout:g} s"
        with anyio.move_on_after(self.resume_timeout):
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
        while True:
            try:
                data = await stream.receive()
            except STREAM_ERRORS as exc:
                self._break_channel(f"reading failed: {exc!r}")
                return
            if self.tracer is not None:
                self.tracer("<", data)
            if self.conn.failure is not None:
                return
            self._dispatch(self.conn.receive_data(data, self.now()))
            self._sample_round_trips()

    async def _writer(self, stream: anyio.abc.ByteStream) -> None:
        while True:
            await self._wake_writer.wait()
            # Let the tasks that are ready queue their frames too, so that a
            # request's head, body and end leave in one write.
            await anyio.lowlevel.checkpoint()
            self._wake_writer = anyio.Event()
            if not await self._flush(stream):
                return
            flushed, self._flushed = self._flushed, None
            if flushed is not None:
                flushed.set()
            if self.finished.is_set():
                self._writer_done.set()
                return

    async def _flush(self, stream: anyio.abc.ByteStream) -> bool:
        """Send what the core has queued; False when the channel failed."""
        # In pieces, so a large backlog is never copied into one buffer.
        while data := self.conn.data_to_send(_WRITE_SIZE):
            if self.tracer is not None:
                self.tracer(">", data)
            seq = self.conn.sent_seq
            if seq and (not self._unacked or self._unacked[-1][1] < seq):
                self._unacked.append((self.now(), seq))
            try:
                await stream.send(data)
            except STREAM_ERRORS as exc:
                self._break_channel(f"writing failed: {exc!r}")
                return False
        return True

    def _sample_round_trips(self) -> None:
        acked, now = self.conn.acked_seq, self.now()
        while self._unacked and self._unacked[0][1] <= acked:
            written, _ = self._unacked.popleft()
            if len(self.stats.round_trips) < 100_000:
                self.stats.round_trips.append(now - written)

    async def _timer(self) -> None:
        while True:
            self._wake_timer = anyio.Event()
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
                    exchange._credit.set()
            elif isinstance(event, bp.HandshakeComplete):
                self.ready.set()
            elif isinstance(event, bp.LinkBroken):
                self._break_channel(event.reason)
            elif isinstance(event, bp.SessionFailed):
                self.failure = event
                self.finished.set()
            elif isinstance(event, bp.SessionClosed):
                self.finished.set()
        self._wake_slot_waiter()  # acknowledgements may have made room
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
            self._task_group.start_soon(self._handle_request, exchange, event)
            return
        maybe = self._exchanges.get(event.exchange_id)
        if maybe is None:
            if isinstance(event, bp.Data):  # its handler is gone: release the credit
                self.conn.consume(event.exchange_id, len(event.data))
            return
        maybe._deliver(event)

    async def _handle_request(self, exchange: Exchange, head: bp.RequestHead) -> None:
        assert self.on_request is not None
        try:
            await self.on_request(exchange, head)
        except Exception as exc:  # a bug in a handler must not end the session
            logger.exception("handling exchange %d failed", exchange.id)
            exchange.reset(bp.ErrorCode.INTERNAL_ERROR, f"the host side failed: {exc!r}")
        finally:
            exchange.close()

    def _end_all(self, reason: str) -> None:
        self._dispatch(self.conn.abort(reason))  # does nothing if the session already ended
        for exchange in list(self._exchanges.values()):
            exchange._send.close()
            exchange._credit.set()
        self.finished.set()
        self._writer_done.set()
        if self._flushed is not None:
            self._flushed.set()
        while self._slot_waiters:
            self._slot_waiters.popleft().set()


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
