"""One exchange, as the code that carries it sees it, and the buffer its
records wait in.

The session's reader hands each record for an exchange to ``deliver``; the
task carrying the exchange reads them from ``events`` and answers through
the exchange's methods, which queue frames in the core and tell the session
(``ExchangeSession``: what an exchange needs of its session, and all it
sees of it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

import bridgeproto as bp

from .errors import ExchangeAborted
from .session_stats import SessionStats
from .wakeups import Flag

ExchangeEvent = bp.ResponseHead | bp.RequestHead | bp.Data | bp.EndOfBody | bp.ExchangeReset


class ExchangeSession(Protocol):
    """What an exchange needs of the session it belongs to."""

    @property
    def conn(self) -> bp.Connection: ...

    @property
    def stats(self) -> SessionStats: ...

    @property
    def usable(self) -> bool: ...

    def now(self) -> float: ...

    def check_usable(self) -> None: ...

    def core_changed(self) -> None: ...

    async def writer_caught_up(self) -> None: ...

    def forget(self, exchange: Exchange) -> None: ...


class EventBuffer:
    """The records of one exchange, from the session's reader to the task
    that carries the exchange: a plain queue and one waiter (never more
    than one task reads an exchange's records at a time)."""

    def __init__(self) -> None:
        self._items: deque[ExchangeEvent] = deque()
        self._closed = False
        self._arrived = Flag()

    def put(self, event: ExchangeEvent) -> bool:
        """Add a record; False once the buffer is closed (nobody will read it)."""
        if self._closed:
            return False
        self._items.append(event)
        self._wake()
        return True

    def close(self) -> None:
        """No more records: a reader gets those buffered, then ``EndOfStream``."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._arrived.set()

    def peek(self) -> ExchangeEvent | None:
        """The next record if one is buffered, left in place."""
        return self._items[0] if self._items else None

    def take(self) -> ExchangeEvent | None:
        """The next record if one is buffered, else None (no exception: the
        answer's loop asks once a batch, and it is empty every time)."""
        return self._items.popleft() if self._items else None

    async def receive(self) -> ExchangeEvent:
        """The next record, once there is one; ``EndOfStream`` if none will come."""
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            self._arrived.clear()
            await self._arrived.wait()
        return self._items.popleft()

    def __aiter__(self) -> EventBuffer:
        return self

    async def __anext__(self) -> ExchangeEvent:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class Exchange:
    """One exchange, as the code that carries it sees it.

    Receive the peer's records from ``events``; send with ``send_data`` (which
    waits for credit) and ``end``; report what you passed on with
    ``consume``; always ``close`` when done (it resets an exchange still in
    flight).
    """

    def __init__(self, session: ExchangeSession, exchange_id: int) -> None:
        self.id = exchange_id
        self._session = session
        # Unbounded is safe: the core's credit bounds how much can arrive.
        self.events = EventBuffer()
        self._credit = Flag()
        self.ended_by: bp.ExchangeReset | None = None  # the reset that ended it, if one did
        # Called when a reset arrives, by a task that reads no records while
        # it waits on something else (the host side's, once the request is in).
        self.on_reset: Callable[[], None] | None = None
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
                self._credit.clear()
                if self._credit_now() == 0:
                    await self._credit.wait()
                continue
            if len(view) == len(data) <= credit:
                chunk, view = data, view[:0]  # the whole of it at once: no copy
            else:
                chunk, view = bytes(view[:credit]), view[credit:]
            self.conn.send_data(self.id, chunk, self._session.now())
            self._session.stats.body_bytes_sent += len(chunk)
            self._session.core_changed()
            await self._session.writer_caught_up()

    @property
    def send_credit(self) -> int:
        """Body bytes ``send_data`` can send now without waiting."""
        return self.conn.send_credit(self.id) if self.conn.is_open(self.id) else 0

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
        self._close_events_if_over()

    def consume(self, nbytes: int) -> None:
        if self._session.usable:
            self.conn.consume(self.id, nbytes)
            self._session.core_changed()

    def reset(self, code: bp.ErrorCode, reason: str = "") -> None:
        if self._session.usable and self.conn.is_open(self.id):
            self.conn.reset(self.id, code, reason)
            self._session.core_changed()
        self._close_events_if_over()

    def close(self) -> None:
        """Done with the exchange: reset it if it is still in flight."""
        self.reset(bp.ErrorCode.CANCELLED, "the exchange was abandoned")
        self._session.forget(self)

    def _close_events_if_over(self) -> None:
        """Close the records' buffer once the core says the exchange is over."""
        self._session.core_changed()
        if not self.conn.is_open(self.id):
            self.events.close()

    # ------------------------------------------------ called by the session

    def deliver(self, event: ExchangeEvent) -> None:
        """A record of the peer's for this exchange."""
        if isinstance(event, bp.ExchangeReset):
            self.ended_by = event
            if self.on_reset is not None:
                self.on_reset()
        if not self.events.put(event) and isinstance(event, bp.Data):
            self.consume(len(event.data))  # nobody will read it: release the credit
        self._credit.set()
        # The core has already processed the whole batch, so "not open" may
        # be true before this event's successors are delivered: close only
        # on the event that ends the exchange.
        ended = isinstance(event, bp.ExchangeReset) or (
            isinstance(event, bp.EndOfBody) and not self.conn.is_open(self.id)
        )
        if ended:
            self.events.close()

    def credit_arrived(self) -> None:
        """The peer gave credit: a sender waiting for it tries again."""
        self._credit.set()

    def release_unread(self) -> None:
        """Nobody will read on: close the buffer, and give back the credit
        of body bytes delivered but never read."""
        self.events.close()
        while (event := self.events.take()) is not None:
            if isinstance(event, bp.Data):
                self.consume(len(event.data))

    def session_ended(self) -> None:
        """The session is over: a reader gets what is buffered, then the end;
        a sender waiting for credit wakes to hear why."""
        self.events.close()
        self._credit.set()
