"""Liveness: every timer of one side, when it is due, and what it means.

A timer is a deadline and a verdict. The side's own timers:

=============== ===================================== =========================
timer           due at                                verdict
=============== ===================================== =========================
HANDSHAKE       start + ``handshake_timeout``,        fail the session
                until the peer's hello
PEER            last frame heard + ``peer_timeout``   fail the session
GRACE           goaway sent + the grace               reset what is left, close
STALL           last frame heard + ``ping_interval``, the link is broken
                while part of a frame waits
PING            last frame heard or ping sent         send a ping
                + ``ping_interval``
=============== ===================================== =========================

and each exchange's two, kept in a lazy heap (``_timers``) so that the next
deadline never needs a walk over the exchanges in flight:

=============== ===================================== =========================
TOTAL           opened + ``exchange_timeout``         reset the exchange
IDLE            its last frame + ``idle_timeout``     reset the exchange
=============== ===================================== =========================

PEER and PING run only past the handshake's wait (``PEER_WATCHED``). When
several are due at once they fire in the order of ``Timer``: a verdict that
ends the session or breaks the link ends the round. Time is always an
argument; nothing here reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from ._config import Config
from ._errors import ErrorCode
from ._exchange import Exchange
from ._timers import Key, LazyDeadlines


class Timer(enum.IntEnum):
    """Every timer, in the order they fire when due together."""

    HANDSHAKE = 0
    PEER = 1
    GRACE = 2
    TOTAL = 3  # an exchange's
    IDLE = 4  # an exchange's
    STALL = 5
    PING = 6


class Verdict(enum.Enum):
    FAIL_SESSION = "fail the session"
    END_GRACE = "reset what is left and close"
    RESET_EXCHANGE = "reset the exchange"
    BREAK_LINK = "break the link"
    PING = "ping"


# What each timer means when it fires: the verdict, and the code and reason
# it gives (formatted with the side's ``config``).
_MEANING: dict[Timer, tuple[Verdict, ErrorCode, str]] = {
    Timer.HANDSHAKE: (
        Verdict.FAIL_SESSION,
        ErrorCode.PEER_UNRESPONSIVE,
        "no hello from the peer within {config.handshake_timeout:g} s;"
        " is the other side running and connected?",
    ),
    Timer.PEER: (
        Verdict.FAIL_SESSION,
        ErrorCode.PEER_UNRESPONSIVE,
        "nothing heard from the peer for {config.peer_timeout:g} s; it is gone or the link is down",
    ),
    Timer.GRACE: (
        Verdict.END_GRACE,
        ErrorCode.SHUTTING_DOWN,
        "the session's shutdown grace period ran out",
    ),
    Timer.TOTAL: (
        Verdict.RESET_EXCHANGE,
        ErrorCode.DEADLINE_EXCEEDED,
        "exchange took longer than {config.exchange_timeout:g} s",
    ),
    Timer.IDLE: (
        Verdict.RESET_EXCHANGE,
        ErrorCode.IDLE_TIMEOUT,
        "no activity on the exchange for {config.idle_timeout:g} s",
    ),
    Timer.STALL: (
        Verdict.BREAK_LINK,
        ErrorCode.NO_ERROR,
        "part of a frame has waited {config.ping_interval:g} s for the rest:"
        " bytes were lost or damaged on the link",
    ),
    Timer.PING: (Verdict.PING, ErrorCode.NO_ERROR, "ping"),
}


@attrs.frozen
class Fired:
    """A timer that fired: what to do, and why (``exchange_id`` 0: the session's)."""

    verdict: Verdict
    code: ErrorCode
    reason: str
    exchange_id: int = 0


class Liveness:
    """The timers of one side. ``Connection`` reports what moves them
    (frames heard, the hello, a goaway, pings, exchanges opened and active)
    and says, when asking, whether the peer is watched yet and whether part
    of a frame waits; this object alone knows when each timer is due."""

    def __init__(self, config: Config, exchange: Callable[[int], Exchange | None]) -> None:
        self._config = config
        self._exchange = exchange
        self._exchange_timers = LazyDeadlines(self._exchange_deadline)
        self.handshake_deadline: float | None = None
        self.close_deadline: float | None = None
        self.last_received = 0.0
        self._last_ping_sent: float | None = None
        self._pings = 0

    # ------------------------------------------------------------ what moves them

    def started(self, now: float) -> None:
        self.last_received = now
        self.handshake_deadline = now + self._config.handshake_timeout

    def heard(self, now: float) -> None:
        """A frame arrived: the peer is alive."""
        self.last_received = now

    def hello_received(self) -> None:
        self.handshake_deadline = None

    def closing(self, deadline: float) -> None:
        """A goaway went out (or ``close`` was called again): a later call
        can only bring the end of the grace closer."""
        if self.close_deadline is None or deadline < self.close_deadline:
            self.close_deadline = deadline

    def ping_sent(self, now: float) -> bytes:
        """Note a ping sent now; returns its payload."""
        self._pings += 1
        self._last_ping_sent = now
        return self._pings.to_bytes(8, "big")

    def watch(self, ex: Exchange) -> None:
        """Arm a new exchange's timers."""
        if ex.deadline is not None:
            self._exchange_timers.arm((ex.exchange_id, Timer.TOTAL), ex.deadline)
        if self._config.idle_timeout is not None:
            self._arm_idle(ex, ex.last_activity)

    def touch(self, ex: Exchange, now: float) -> None:
        """A frame went or came on the exchange: its idle timer restarts."""
        if now < ex.last_activity and self._config.idle_timeout is not None:
            self._arm_idle(ex, now)  # time went back: the deadline moved earlier
        ex.last_activity = now

    # ------------------------------------------------------------ when they are due

    def armed(self, peer_watched: bool, frame_waiting: bool) -> list[tuple[float, Timer]]:
        """The session's own timers that are armed, each with its deadline,
        in firing order. ``peer_watched``: the state is in ``PEER_WATCHED``;
        ``frame_waiting``: the link is up and holds part of a frame."""
        cfg = self._config
        armed = []
        if self.handshake_deadline is not None:
            armed.append((self.handshake_deadline, Timer.HANDSHAKE))
        if peer_watched and cfg.peer_timeout is not None:
            armed.append((self.last_received + cfg.peer_timeout, Timer.PEER))
        if self.close_deadline is not None:
            armed.append((self.close_deadline, Timer.GRACE))
        if cfg.ping_interval is not None:
            if frame_waiting:
                # A live peer answers our pings within ping_interval: the rest
                # of a frame that waited longer is not coming.
                armed.append((self.last_received + cfg.ping_interval, Timer.STALL))
            if peer_watched:
                last = self.last_received
                if self._last_ping_sent is not None and self._last_ping_sent > last:
                    last = self._last_ping_sent
                armed.append((last + cfg.ping_interval, Timer.PING))
        return armed

    def next_deadline(self, peer_watched: bool, frame_waiting: bool) -> float | None:
        """The earliest deadline of all timers, the exchanges' included."""
        earliest = self._exchange_timers.earliest()
        for when, _ in self.armed(peer_watched, frame_waiting):
            if earliest is None or when < earliest:
                earliest = when
        return earliest

    def due(self, now: float, peer_watched: bool, frame_waiting: bool) -> list[Fired]:
        """Every timer due at ``now``, in firing order. The exchanges' timers
        are taken off: the caller resets those exchanges."""
        session = [timer for when, timer in self.armed(peer_watched, frame_waiting) if now >= when]
        due_exchanges = self._exchange_timers.pop_due(now)
        if not session and not due_exchanges:
            return []  # (the common case: woken early, or by a deadline that moved)
        fired = [self._fired(timer) for timer in session if timer < Timer.TOTAL]
        exchanges = []
        for exchange_id, kind in due_exchanges:
            ex = self._exchange(exchange_id)
            assert ex is not None  # (a timer whose exchange ended is never due)
            exchanges.append((ex.serial, kind, exchange_id))
        # As the exchanges opened, each one's total deadline before its idle one.
        for _, kind, exchange_id in sorted(exchanges):
            fired.append(self._fired(Timer(kind), exchange_id))
        fired += [self._fired(timer) for timer in session if timer > Timer.IDLE]
        return fired

    # ------------------------------------------------------------ helpers

    def _fired(self, timer: Timer, exchange_id: int = 0) -> Fired:
        verdict, code, reason = _MEANING[timer]
        return Fired(verdict, code, reason.format(config=self._config), exchange_id)

    def _arm_idle(self, ex: Exchange, since: float) -> None:
        assert self._config.idle_timeout is not None
        self._exchange_timers.arm((ex.exchange_id, Timer.IDLE), since + self._config.idle_timeout)

    def _exchange_deadline(self, key: Key) -> float | None:
        exchange_id, kind = key
        ex = self._exchange(exchange_id)
        if ex is None:
            return None  # it ended
        if kind == Timer.TOTAL:
            return ex.deadline
        assert self._config.idle_timeout is not None
        return ex.last_activity + self._config.idle_timeout
