"""The bridge connection: all protocol state for one side, and nothing else.

One ``Connection`` per side. Either side starts exchanges, each on a route:
the sandbox side (odd ids) on outward routes to host services, the host side
(even ids) on inward routes it has declared with ``declare_route``; the other
side answers them. The object does no I/O and never reads a clock: bytes
come in through ``receive_data``, go out through ``data_to_send``, and time is
the ``now`` argument of every call that can start or stop a timer. The caller
arms a timer for ``next_deadline()`` and calls ``handle_timer(now)`` when it
fires.

``Connection`` decides what each input means and what it sends and
reports; what it composes has a module each:

* ``_state``: the session, the link and each exchange's halves as tables of
  allowed moves, and the rules that move them by state;
* ``_link``: frames in and out, hellos, acks, pings, breaks and resumes,
  over ``_delivery``: sequence numbers, so each record takes effect once;
* ``_exchanges``: the registry (ids, admission, the ended ids remembered in
  a bounded map), and ``_exchange``: one exchange's halves, body and credit;
* ``_credit``: the windows; ``_routes``: the inward routes;
* ``_liveness``: every timer, each a deadline and a verdict.

An input a half's table does not allow is a protocol error for that exchange
only: it is reset and the session goes on. Events gather in one buffer that
``receive_data``, ``handle_timer`` and ``abort`` hand back.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._config import Config
from ._credit import Credit, SessionCredit
from ._errors import ErrorCode, LocalProtocolError, PeerFault
from ._events import (
    CreditAvailable,
    Event,
    ExchangeReset,
    HandshakeComplete,
    LinkBroken,
    SessionClosed,
    SessionFailed,
)
from ._exchange import Exchange
from ._exchanges import Admission, ExchangeRecord, Exchanges
from ._link import Link
from ._liveness import Liveness, Verdict
from ._records import (
    SESSION_ID_BYTES,
    Data,
    EndOfBody,
    GoAway,
    Hello,
    Limits,
    Ping,
    Record,
    RequestHead,
    Reset,
    ResponseHead,
    Role,
    Route,
    Window,
    clip_reason,
)
from ._routes import Routes
from ._state import (
    ENDED,
    PEER_WATCHED,
    LinkState,
    SessionInput,
    SessionState,
    drained,
    session_after,
)

__all__ = ["Config", "Connection"]


class Connection:
    """The protocol state of one side of a bridge session.

    Call ``start(now)`` first; it queues the hello. Then, in a loop: feed what
    the transport read to ``receive_data`` and act on the events it returns,
    write ``data_to_send()`` to the transport, and call ``handle_timer`` when
    ``next_deadline()`` passes.
    """

    def __init__(self, role: Role, session_id: bytes, config: Config | None = None) -> None:
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_BYTES:
            raise LocalProtocolError(f"session_id must be {SESSION_ID_BYTES} bytes")
        self.role = Role(role)
        self.session_id = session_id
        self.config = config or Config()
        self.state = SessionState.NEW
        self.peer_limits: Limits | None = None
        self.failure: SessionFailed | None = None

        self._link = Link(self.role, session_id, self.config.limits)
        self._delivery = self._link.delivery
        self._credit = SessionCredit(0, self.config.limits.session_window)
        self._events: list[Event] = []

        self._exchanges = Exchanges(self.role, self.config.closed_exchange_memory)
        self._liveness = Liveness(self.config, self._exchanges.get)
        # Inward routes: route number -> port inside the sandbox. The host side
        # fills it with ``declare_route``, the sandbox side from ROUTE records.
        self.routes = Routes()
        self._peer_goaway: GoAway | None = None

    # ------------------------------------------------------------ properties

    @property
    def link(self) -> LinkState:
        return self._link.state

    @property
    def retained_bytes(self) -> int:
        """Bytes of sent frames kept until the peer acknowledges them."""
        return self._delivery.retained_bytes

    @property
    def open_exchanges(self) -> list[int]:
        return self._exchanges.ids()

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued that ``data_to_send`` has not handed out yet."""
        return self._delivery.unsent_bytes

    @property
    def sent_seq(self) -> int:
        """The highest sequence number queued so far (0 before any)."""
        return self._delivery.sent_seq

    @property
    def acked_seq(self) -> int:
        """The highest sequence number the peer has acknowledged."""
        return self._delivery.acked_seq

    @property
    def exchanges_full(self) -> bool:
        """Whether ``start_exchange`` would refuse for now only: the peer's
        exchange limit is reached, or too many sent bytes await acknowledgement."""
        return self.peer_limits is not None and self._start_refusal() is not None

    def is_open(self, exchange_id: int) -> bool:
        """Whether the exchange is still in flight."""
        return self._exchanges.get(exchange_id) is not None

    def send_credit(self, exchange_id: int) -> int:
        """How many body bytes ``send_data`` accepts now for this exchange."""
        return min(self._exchanges.find(exchange_id).credit.can_send, self._credit.can_send)

    # ------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        """Queue the hello and arm the handshake timer."""
        if self.state is not SessionState.NEW:
            raise LocalProtocolError("start() was already called")
        self._move(SessionInput.START)
        self._liveness.started(now)
        self._link.start()

    def resume(self, now: float) -> None:
        """Begin a new link for the same session after the old one broke.

        Queues hello and ack, then every record the peer has not
        acknowledged. Safe to call more than once.
        """
        self._check_usable()
        if self.state is SessionState.NEW:
            raise LocalProtocolError("resume() before start(); call start() first")
        self._link.resume()

    def close(
        self,
        now: float,
        code: ErrorCode = ErrorCode.NO_ERROR,
        reason: str = "",
        *,
        grace: float | None = None,
    ) -> None:
        """Start a graceful shutdown: no new exchanges, drain, then close.

        Exchanges still open when ``grace`` seconds (default
        ``config.shutdown_grace``) have passed are reset. Calling it again
        can only bring that moment closer; after the session ended it does
        nothing.
        """
        if self.state in ENDED:
            return
        if self.state is SessionState.NEW:
            raise LocalProtocolError("close() before start()")
        deadline = now + (self.config.shutdown_grace if grace is None else grace)
        if self.state is SessionState.CLOSING:
            self._liveness.closing(deadline)
            return
        self._send_goaway(now, code, reason, deadline)

    def abort(self, reason: str, code: ErrorCode = ErrorCode.PEER_UNRESPONSIVE) -> list[Event]:
        """End the session now because the link is gone for good.

        Every open exchange gets an ``ExchangeReset``, then ``SessionFailed``.
        Aborting a session that already ended does nothing.
        """
        if self.state not in ENDED:
            self._fail_session(code, reason, by_peer=False)
        return self._take_events()

    # ------------------------------------------------------------ sending

    def declare_route(self, route: int, port: int) -> None:
        """Declare an inward route (host side): exchanges started with
        ``route=route`` reach ``127.0.0.1:port`` inside the sandbox.

        Declaring the same route again with the same port does nothing; a
        route number never changes its port within a session.
        """
        self._check_usable()
        if self.role is not Role.HOST:
            raise LocalProtocolError("only the host side declares inward routes")
        if self.state is SessionState.NEW:
            raise LocalProtocolError("declare_route() before start(); call start() first")
        record = Route(route, port)  # (checks both numbers first)
        if self.routes.declare(route, port):
            self._delivery.send(record)

    def start_exchange(
        self,
        method: bytes,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        now: float,
        *,
        route: int = 0,
    ) -> int:
        """Send a request head on a new exchange and return its id.

        The sandbox side names an outward route (0: the default upstream);
        the host side one it declared with ``declare_route``.
        """
        self._check_usable()
        if self.role is Role.HOST and route not in self.routes:
            raise LocalProtocolError(
                f"route {route} was never declared; call declare_route() first",
                code=ErrorCode.FORBIDDEN,
            )
        peer = self._require_open("start an exchange")
        refusal = self._start_refusal()
        if refusal is not None:
            raise refusal
        exchange_id = self._exchanges.next_local_id()
        head = RequestHead(exchange_id, method, target, tuple(headers), route=route)
        self._check_head_size(head.head_size, peer)
        self._send_on(self._open_exchange(exchange_id, now), head, now)
        return head.exchange_id

    def send_response(
        self,
        exchange_id: int,
        status: int,
        reason: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        now: float,
    ) -> None:
        """Send a response head (or a 1xx informational head) for an exchange
        the peer started."""
        self._check_usable()
        ex = self._exchanges.find(exchange_id)
        if self._exchanges.is_ours(exchange_id):
            raise LocalProtocolError(
                f"exchange {exchange_id} was started by this side; only the peer answers it"
            )
        head = ResponseHead(exchange_id, status, reason, tuple(headers))
        assert self.peer_limits is not None  # an exchange exists, so the hello came
        self._check_head_size(head.head_size, self.peer_limits)
        self._send_on(ex, head, now)

    def send_data(self, exchange_id: int, data: bytes, now: float) -> None:
        """Send body bytes; at most ``send_credit(exchange_id)`` of them."""
        self._check_usable()
        ex = self._exchanges.find(exchange_id)
        if not data:
            return
        ex.take_body_to_send(len(data), self._credit, self.config.max_body_bytes)
        assert self.peer_limits is not None
        step = self.peer_limits.max_frame_size - 4
        for start in range(0, len(data), step):
            self._send_on(ex, Data(exchange_id, data[start : start + step]), now)

    def send_end(self, exchange_id: int, now: float) -> None:
        """End this side's body for the exchange."""
        self._check_usable()
        self._send_on(self._exchanges.find(exchange_id), EndOfBody(exchange_id), now)

    def reset(self, exchange_id: int, code: ErrorCode, reason: str = "") -> None:
        """Abandon one exchange. Resetting an exchange that already ended does nothing."""
        self._check_usable()
        if self._exchanges.recently_ended(exchange_id):
            return
        ex = self._exchanges.find(exchange_id)
        self._delivery.send(Reset(exchange_id, code, reason))
        self._close_exchange(ex, was_reset=True)

    def consume(self, exchange_id: int, nbytes: int) -> None:
        """Report body bytes the application has passed on, returning credit.

        Every byte delivered in a ``Data`` event should be reported once the
        application no longer holds it, including after the exchange
        completes. After an exchange is reset its bytes are released
        automatically and reports for it are ignored.
        """
        self._check_usable()
        if nbytes < 0:
            raise LocalProtocolError(f"cannot consume a negative byte count ({nbytes})")
        ex = self._exchanges.get(exchange_id)
        if ex is None:
            self._release_session_credit(self._exchanges.consume_ended(exchange_id, nbytes))
            return
        increment = ex.consumed(nbytes)
        if increment:
            self._delivery.send(Window(exchange_id, increment))
        self._release_session_credit(nbytes)

    def ping(self, now: float) -> None:
        """Send a ping now; any frame back proves the peer alive."""
        self._check_usable()
        self._delivery.send_control(Ping(self._liveness.ping_sent(now)))

    # ------------------------------------------------------------ output

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """Bytes to write to the transport now (possibly empty).

        With ``max_bytes``, stop adding whole frames once that many are
        taken (at least one frame is), so a writer can send a large backlog
        in pieces instead of copying it all into one buffer; call again for
        the rest.
        """
        return self._delivery.data_to_send(max_bytes)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next be called, or None."""
        if self.state is SessionState.NEW or self.state in ENDED:
            return None
        return self._liveness.next_deadline(self.state in PEER_WATCHED, self._link.frame_waiting)

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``; returns what happened."""
        if self.state is SessionState.NEW or self.state in ENDED:
            return []
        for fired in self._liveness.due(now, self.state in PEER_WATCHED, self._link.frame_waiting):
            verdict = fired.verdict
            if verdict is Verdict.RESET_EXCHANGE:
                ex = self._exchanges.get(fired.exchange_id)
                if ex is not None:  # (its other timer may have reset it already)
                    self._local_reset(ex, fired.code, fired.reason)
            elif verdict is Verdict.PING:
                self.ping(now)
            elif verdict is Verdict.FAIL_SESSION:
                self._fail_session(fired.code, fired.reason, by_peer=False)
                return self._take_events()
            elif verdict is Verdict.END_GRACE:
                for ex in self._exchanges.in_flight():
                    self._local_reset(ex, fired.code, fired.reason)
                self._move(SessionInput.GRACE_OVER)
                self._emit(SessionClosed(forced=True))
                return self._take_events()
            else:
                assert verdict is Verdict.BREAK_LINK, verdict
                self._break_link(fired.reason)
                return self._take_events()
        self._check_retention()
        self._check_drained()
        return self._take_events()

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Process bytes read from the transport; returns the events they caused.

        ``b""`` means the transport reached end of input. Remote faults do not
        raise: they come back as ``ExchangeReset``, ``LinkBroken`` or
        ``SessionFailed`` events, after every event that preceded them.
        """
        self._check_usable()
        if self.state is SessionState.NEW:
            raise LocalProtocolError("receive_data() before start()")
        if self.link is LinkState.BROKEN:
            return []
        self._link.feed(data)
        while self.link is LinkState.UP and self.state is not SessionState.FAILED:
            try:
                frame = self._link.next_frame()
                if frame is None:
                    break  # more bytes needed
                if isinstance(frame, LinkBroken):
                    self._emit(frame)
                    break
                self._liveness.heard(now)
                self._receive(self._link.take(frame), now)
            except PeerFault as exc:
                self._fail_session(exc.code, exc.reason, by_peer=False)
        self._check_retention()
        self._check_drained()
        return self._take_events()

    def _receive(self, taken: Hello | Record | LinkBroken | None, now: float) -> None:
        if isinstance(taken, Hello):  # the peer's first
            self.peer_limits = taken.limits
            self._credit.can_send = taken.limits.session_window
            self._liveness.hello_received()
            self._move(SessionInput.PEER_HELLO)
            self._emit(HandshakeComplete(taken))
        elif isinstance(taken, LinkBroken):
            self._emit(taken)
        elif taken is not None:
            self._receive_sequenced(taken, now)

    def _receive_sequenced(self, record: Record, now: float) -> None:
        if isinstance(record, Window):
            self._receive_window(record, now)
            return
        if isinstance(record, GoAway):
            self._receive_goaway(record, now)
            return
        if isinstance(record, Route):
            if self.role is not Role.SANDBOX:
                raise PeerFault(ErrorCode.PROTOCOL_ERROR, "ROUTE is only sent to the sandbox side")
            self.routes.learn(record.route, record.port)
            return
        assert isinstance(record, (RequestHead, ResponseHead, Data, EndOfBody, Reset))
        if isinstance(record, Data):
            self._credit.take_from_peer(len(record.data))
        ex = self._exchanges.get(record.exchange_id) or self._admit(record, now)
        if ex is None:
            if isinstance(record, Data):  # nobody will consume these bytes
                self._release_session_credit(len(record.data))
            return
        try:
            self._receive_on(ex, record, now)
        except PeerFault as exc:  # a fault in one exchange's record resets only it
            self._local_reset(ex, exc.code, exc.reason)

    def _admit(self, record: ExchangeRecord, now: float) -> Exchange | None:
        """The exchange a record for an id not in flight opens, if any.
        Refusals are answered here; late frames are dropped."""
        admission = self._exchanges.admission(
            record,
            accepting=self.state is SessionState.OPEN,
            routes=self.routes,
            limits=self.config.limits,
        )
        if admission is Admission.OPEN:
            return self._open_exchange(record.exchange_id, now)
        if admission is not Admission.DROP:
            self._send_reset(record.exchange_id, admission.code, admission.reason)
            if admission.remember:
                self._release_session_credit(self._exchanges.remember_ended(record.exchange_id, 0))
        return None

    def _receive_on(self, ex: Exchange, record: Record, now: float) -> None:
        self._liveness.touch(ex, now)
        if isinstance(record, Reset):
            self._end_exchange(ex, record.code, record.reason, by_peer=True)
            return
        limits = self.config.limits
        ex.receiving(record, limits.max_header_bytes, self.config.max_body_bytes)
        self._emit(record)  # type: ignore[arg-type]
        if ex.done:
            self._close_exchange(ex, was_reset=False)

    def _receive_window(self, window: Window, now: float) -> None:
        if window.exchange_id == 0:
            self._credit.granted_by_peer(window.increment)
            self._emit(CreditAvailable(0))
            return
        ex = self._exchanges.get(window.exchange_id) or self._admit(window, now)
        if ex is None:
            return
        if not ex.credit.grant(window.increment):
            reason = "the peer granted more than 2**32-1 bytes of credit"
            self._local_reset(ex, ErrorCode.FLOW_CONTROL_ERROR, reason)
            return
        self._emit(CreditAvailable(ex.exchange_id))

    def _receive_goaway(self, goaway: GoAway, now: float) -> None:
        if goaway.code is not ErrorCode.NO_ERROR:
            self._fail_session(
                goaway.code, f"the peer ended the session: {goaway.reason}", by_peer=True
            )
            return
        self._peer_goaway = goaway
        refused = "the peer is shutting down and did not process this exchange; retry it"
        for ex in self._exchanges.in_flight():
            if ex.ours and ex.exchange_id > goaway.last_exchange_id:
                self._end_exchange(ex, ErrorCode.REFUSED, refused, by_peer=True)
        self._emit(goaway)
        if session_after(self.state, SessionInput.GOAWAY_SENT) is not None:
            # Answer it: both sides drain.
            self._send_goaway(now, ErrorCode.NO_ERROR, "", now + self.config.shutdown_grace)

    # ------------------------------------------------------------ helpers

    # Every caller checks the state first and says what is wrong in the
    # caller's terms; a move the tables refuse here is a bug in this module.

    def _move(self, what: SessionInput) -> None:
        new = session_after(self.state, what)
        if new is None:
            raise AssertionError(f"{what.value} while the session is {self.state.value}")
        self.state = new

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _check_usable(self) -> None:
        if self.failure is not None:
            raise LocalProtocolError(
                f"the session failed earlier ({self.failure.code.name}: {self.failure.reason});"
                " start a new one"
            )

    def _require_open(self, action: str) -> Limits:
        if self.state is SessionState.HANDSHAKING or self.peer_limits is None:
            raise LocalProtocolError(f"cannot {action} before the handshake completes")
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(
                f"cannot {action}: the session is {self.state.value}",
                code=ErrorCode.SHUTTING_DOWN,
            )
        return self.peer_limits

    def _start_refusal(self) -> LocalProtocolError | None:
        assert self.peer_limits is not None
        return self._exchanges.start_refusal(
            self.peer_limits.max_exchanges,
            self._delivery.retained_bytes,
            self.config.max_retained_bytes,
        )

    def _check_head_size(self, size: int, peer: Limits) -> None:
        if size > peer.max_header_bytes:
            raise LocalProtocolError(
                f"the head is {size} bytes; the peer accepts at most {peer.max_header_bytes}",
                code=ErrorCode.HEADERS_TOO_LARGE,
            )

    def _open_exchange(self, exchange_id: int, now: float) -> Exchange:
        assert self.peer_limits is not None  # exchanges open only after the hello
        timeout = self.config.exchange_timeout
        ex = self._exchanges.open(
            exchange_id,
            now,
            Credit(self.peer_limits.initial_window, self.config.limits.initial_window),
            None if timeout is None else now + timeout,
        )
        self._liveness.watch(ex)
        return ex

    def _send_on(self, ex: Exchange, record: Record, now: float) -> None:
        """Send a head, data or end on an exchange, moving its send half."""
        ex.sending(record)
        self._liveness.touch(ex, now)
        self._delivery.send(record)
        if ex.done:
            self._close_exchange(ex, was_reset=False)

    def _local_reset(self, ex: Exchange, code: ErrorCode, reason: str) -> None:
        """End an exchange from this side: tell the peer and the application."""
        self._send_reset(ex.exchange_id, code, reason)
        self._end_exchange(ex, code, reason, by_peer=False)

    def _end_exchange(self, ex: Exchange, code: ErrorCode, reason: str, *, by_peer: bool) -> None:
        """Reset an exchange and tell the application."""
        self._close_exchange(ex, was_reset=True)
        self._emit(ExchangeReset(ex.exchange_id, code, reason, by_peer=by_peer))

    def _send_reset(self, exchange_id: int, code: ErrorCode, reason: str) -> None:
        self._delivery.send(Reset(exchange_id, code, clip_reason(reason)))

    def _close_exchange(self, ex: Exchange, *, was_reset: bool) -> None:
        if was_reset:
            # The application drops a reset exchange's bytes, so release them.
            self._release_session_credit(ex.unconsumed)
            forgotten = self._exchanges.close(ex, 0)
        else:
            forgotten = self._exchanges.close(ex, ex.unconsumed)
        self._release_session_credit(forgotten)  # (nobody consumes a forgotten id's bytes)

    def _release_session_credit(self, nbytes: int) -> None:
        self._credit.release(nbytes)
        increment = self._credit.due()
        if increment:
            self._delivery.send(Window(0, increment))

    def _send_goaway(self, now: float, code: ErrorCode, reason: str, deadline: float) -> None:
        self._delivery.send(GoAway(self._exchanges.highest_peer_id, code, reason))
        self._move(SessionInput.GOAWAY_SENT)
        self._liveness.closing(deadline)

    def _check_drained(self) -> None:
        if drained(
            self.state,
            peer_said_goaway=self._peer_goaway is not None,
            exchanges_open=len(self._exchanges),
            all_acknowledged=self._delivery.settled,
        ):
            self._move(SessionInput.DRAINED)
            self._emit(SessionClosed(forced=False))

    def _check_retention(self) -> None:
        limit = self.config.max_unacknowledged_bytes
        retained = self._delivery.retained_bytes
        if retained > limit and self.state is not SessionState.FAILED:
            reason = (
                f"the peer has left {retained} sent bytes unacknowledged (the limit is"
                f" {limit}); it is not reading its link, or it is not a bridgeproto peer"
            )
            self._fail_session(ErrorCode.PEER_UNRESPONSIVE, reason, by_peer=False)
            # What it never acknowledged will never be resent: let it go.
            self._delivery.forget_unacknowledged()

    def _break_link(self, reason: str) -> None:
        self._emit(self._link.broken(reason))

    def _fail_session(self, code: ErrorCode, reason: str, *, by_peer: bool) -> None:
        """End the session for good: every open exchange is reset first."""
        for ex in self._exchanges.in_flight():
            self._end_exchange(ex, code, reason, by_peer=by_peer)
        if not by_peer:
            # Best effort: tell the peer why, so it need not wait for a timeout.
            self._delivery.send(GoAway(self._exchanges.highest_peer_id, code, clip_reason(reason)))
        self._move(SessionInput.FAILURE)
        self.failure = SessionFailed(code, reason, by_peer)
        self._emit(self.failure)
