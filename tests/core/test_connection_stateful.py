"""Both sides of a session driven at random through a link that loses,
duplicates and reorders batches, with exchanges opened by either side (the
host's on a declared inward route), cancels, timeouts, shutdowns and link
restarts. Whatever happens, the invariants below must hold.

Run with --hypothesis-show-statistics to see how often each event was reached.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import event as note
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import bridgeproto as bp
from pair import SID

LIMITS = bp.Limits(
    max_frame_size=2048,
    initial_window=300,
    session_window=700,
    max_exchanges=8,
    max_header_bytes=512,
)
CONFIG = bp.Config(
    limits=LIMITS,
    idle_timeout=40,
    exchange_timeout=None,
    ping_interval=15,
    peer_timeout=None,
    shutdown_grace=30,
    closed_exchange_memory=8,
    max_retained_bytes=4096,
)
# What a side may hold in unacknowledged frames: the cap on starting
# exchanges, plus the body bytes its credit allows, plus room for the small
# frames (ends, resets, windows) a run of this length can queue.
RETAINED_BOUND = CONFIG.max_retained_bytes + LIMITS.session_window + 64 * 1024
INWARD_ROUTE = 1


def opened_by(exchange_id: int) -> bp.Role:
    return bp.Role.SANDBOX if exchange_id % 2 else bp.Role.HOST


def pattern(exchange_id: int, direction: int, start: int, n: int) -> bytes:
    return bytes((exchange_id * 31 + direction * 17 + i) % 251 for i in range(start, start + n))


class App:
    """What one side's application did and saw."""

    def __init__(self, conn: bp.Connection) -> None:
        self.conn = conn
        self.sent: dict[int, bytearray] = {}
        self.received: dict[int, bytearray] = {}
        self.unconsumed: Counter[int] = Counter()
        self.ended: Counter[int] = Counter()
        self.known: set[int] = set()  # exchanges the application was told about
        self.head_sent: set[int] = set()
        self.end_sent: set[int] = set()
        self.end_received: set[int] = set()
        self.failed: bp.SessionFailed | None = None
        self.closed = False

    def open(self) -> list[int]:
        return sorted(x for x in self.known if x in self.conn.open_exchanges)


class BridgeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        sandbox = bp.Connection(bp.Role.SANDBOX, SID, CONFIG)
        host = bp.Connection(bp.Role.HOST, SID, CONFIG)
        self.apps = {bp.Role.SANDBOX: App(sandbox), bp.Role.HOST: App(host)}
        # Batches in flight, per receiving side.
        self.wire: dict[bp.Role, list[bytes]] = {bp.Role.SANDBOX: [], bp.Role.HOST: []}
        sandbox.start(self.now)
        host.start(self.now)
        self.settle()
        host.declare_route(INWARD_ROUTE, 8080)

    # ---------------------------------------------------------- plumbing

    def app(self, role: bp.Role) -> App:
        return self.apps[role]

    def flush(self, role: bp.Role) -> None:
        data = self.app(role).conn.data_to_send()
        if data:
            self.wire[role.peer].append(data)

    def handle(self, role: bp.Role, events: list[bp.Event]) -> None:
        app = self.app(role)
        for event in events:
            # Shown by --hypothesis-show-statistics: proof the runs reach these.
            note(f"{role.name.lower()} saw {type(event).__name__}")
            if isinstance(event, bp.RequestHead):
                app.known.add(event.exchange_id)
            elif isinstance(event, bp.Data):
                app.received.setdefault(event.exchange_id, bytearray()).extend(event.data)
                app.unconsumed[event.exchange_id] += len(event.data)
            elif isinstance(event, bp.EndOfBody):
                app.end_received.add(event.exchange_id)
                if event.exchange_id in app.end_sent:
                    app.ended[event.exchange_id] += 1
            elif isinstance(event, bp.ExchangeReset):
                app.ended[event.exchange_id] += 1
                app.unconsumed.pop(event.exchange_id, None)  # released by the core
            elif isinstance(event, bp.LinkBroken):
                app.conn.resume(self.now)  # what an adapter does: reopen and resume
            elif isinstance(event, bp.SessionFailed):
                app.failed = event
            elif isinstance(event, bp.SessionClosed):
                app.closed = True

    def receive(self, role: bp.Role, data: bytes) -> None:
        app = self.app(role)
        if app.failed is None:
            self.handle(role, app.conn.receive_data(data, self.now))

    def settle(self) -> None:
        """A healthy link: deliver everything until both sides are quiet."""
        for _ in range(200):
            for role in bp.Role:
                self.flush(role)
            if not any(self.wire.values()):
                return
            for role in bp.Role:
                while self.wire[role]:
                    self.receive(role, self.wire[role].pop(0))
        raise AssertionError("the link never went quiet")

    def usable(self, role: bp.Role) -> bool:
        app = self.app(role)
        return app.failed is None and not app.closed

    def pick(self, items: list[int], index: int) -> int | None:
        return items[index % len(items)] if items else None

    def send_body(self, role: bp.Role, exchange_id: int, n: int) -> None:
        app = self.app(role)
        credit = app.conn.send_credit(exchange_id)
        sent = app.sent.setdefault(exchange_id, bytearray())
        chunk = pattern(exchange_id, role, len(sent), min(n, credit))
        app.conn.send_data(exchange_id, chunk, self.now)
        sent.extend(chunk)

    def send_end(self, role: bp.Role, exchange_id: int) -> None:
        app = self.app(role)
        app.conn.send_end(exchange_id, self.now)
        app.end_sent.add(exchange_id)
        if exchange_id in app.end_received:
            app.ended[exchange_id] += 1

    def can_send_body(self, role: bp.Role, exchange_id: int) -> bool:
        app = self.app(role)
        return (
            exchange_id in app.conn.open_exchanges
            and exchange_id in app.head_sent
            and exchange_id not in app.end_sent
        )

    # ---------------------------------------------------------- application

    @rule(role=st.sampled_from(bp.Role), n=st.integers(0, 400), end=st.booleans())
    def start_exchange(self, role: bp.Role, n: int, end: bool) -> None:
        app = self.app(role)
        if not self.usable(role):
            return
        route = INWARD_ROUTE if role is bp.Role.HOST else 0
        try:
            xid = app.conn.start_exchange(
                b"POST", b"/v1/chat", [(b"x-n", b"%d" % n)], self.now, route=route
            )
        except bp.LocalProtocolError as exc:
            # Only the documented refusals: too many in flight, shutting down,
            # or waiting for acknowledgements.
            assert exc.status_hint == 503, exc
            return
        assert opened_by(xid) is role
        app.known.add(xid)
        app.head_sent.add(xid)
        self.send_body(role, xid, n)
        if end:
            self.send_end(role, xid)

    @rule(role=st.sampled_from(bp.Role), index=st.integers(0, 10), n=st.integers(1, 500))
    def send_more(self, role: bp.Role, index: int, n: int) -> None:
        app = self.app(role)
        xid = self.pick([x for x in app.open() if self.can_send_body(role, x)], index)
        if xid is not None and self.usable(role):
            self.send_body(role, xid, n)

    @rule(role=st.sampled_from(bp.Role), index=st.integers(0, 10))
    def end_body(self, role: bp.Role, index: int) -> None:
        app = self.app(role)
        xid = self.pick([x for x in app.open() if self.can_send_body(role, x)], index)
        if xid is not None and self.usable(role):
            self.send_end(role, xid)

    def unanswered(self, role: bp.Role) -> list[int]:
        """Exchanges the peer opened that ``role`` has not answered yet."""
        app = self.app(role)
        return [x for x in app.open() if opened_by(x) is role.peer and x not in app.head_sent]

    @rule(
        role=st.sampled_from(bp.Role),
        index=st.integers(0, 10),
        status=st.sampled_from([100, 200, 404, 500]),
    )
    def respond(self, role: bp.Role, index: int, status: int) -> None:
        app = self.app(role)
        xid = self.pick(self.unanswered(role), index)
        if xid is None or not self.usable(role):
            return
        app.conn.send_response(xid, status, b"", [], self.now)
        if status >= 200:
            app.head_sent.add(xid)

    @rule(role=st.sampled_from(bp.Role), index=st.integers(0, 10), n=st.integers(0, 400))
    def answer_whole(self, role: bp.Role, index: int, n: int) -> None:
        """A side answers an exchange the peer opened in one go: head, body, end."""
        app = self.app(role)
        xid = self.pick(self.unanswered(role), index)
        if xid is None or not self.usable(role):
            return
        app.conn.send_response(xid, 200, b"OK", [], self.now)
        app.head_sent.add(xid)
        self.send_body(role, xid, n)
        self.send_end(role, xid)

    @rule(role=st.sampled_from(bp.Role), index=st.integers(0, 10))
    def cancel(self, role: bp.Role, index: int) -> None:
        app = self.app(role)
        xid = self.pick(app.open(), index)
        if xid is not None and self.usable(role):
            app.conn.reset(xid, bp.ErrorCode.CANCELLED, "the client went away")
            app.ended[xid] += 1
            app.unconsumed.pop(xid, None)

    @rule(role=st.sampled_from(bp.Role), index=st.integers(0, 10))
    def consume(self, role: bp.Role, index: int) -> None:
        app = self.app(role)
        xid = self.pick(sorted(x for x, n in app.unconsumed.items() if n), index)
        if xid is not None and app.failed is None:
            app.conn.consume(xid, app.unconsumed.pop(xid))

    # Rare rules take a `dice` argument and act on one value only, so a run
    # has time to build up exchanges before the session shuts down.
    @rule(role=st.sampled_from(bp.Role), dice=st.integers(0, 9))
    def close(self, role: bp.Role, dice: int) -> None:
        if dice == 0 and self.app(role).failed is None:
            self.app(role).conn.close(self.now)

    @rule(seconds=st.floats(0.5, 15))
    def advance_time(self, seconds: float) -> None:
        self.now += seconds
        for role in bp.Role:
            app = self.app(role)
            deadline = app.conn.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.handle(role, app.conn.handle_timer(self.now))

    # ---------------------------------------------------------- the link

    @rule(role=st.sampled_from(bp.Role))
    def transmit(self, role: bp.Role) -> None:
        self.flush(role)

    @rule(role=st.sampled_from(bp.Role), piece=st.integers(1, 600))
    def transmit_a_piece(self, role: bp.Role, piece: int) -> None:
        conn = self.app(role).conn
        before = conn.unsent_bytes
        data = conn.data_to_send(piece)
        if data:
            self.wire[role.peer].append(data)
        assert conn.unsent_bytes <= before  # (an acknowledgement is not counted)

    @rule(role=st.sampled_from(bp.Role))
    def deliver(self, role: bp.Role) -> None:
        if self.wire[role]:
            self.receive(role, self.wire[role].pop(0))

    @rule(role=st.sampled_from(bp.Role))
    def lose(self, role: bp.Role) -> None:
        if self.wire[role]:
            self.wire[role].pop(0)

    @rule(role=st.sampled_from(bp.Role), position=st.integers(0, 10000))
    def damage(self, role: bp.Role, position: int) -> None:
        batches = self.wire[role]
        if batches:
            damaged = bytearray(batches[0])
            damaged[position % len(damaged)] ^= 0x55
            batches[0] = bytes(damaged)

    @rule(role=st.sampled_from(bp.Role))
    def duplicate(self, role: bp.Role) -> None:
        if self.wire[role]:
            self.wire[role].append(self.wire[role][0])

    @rule(role=st.sampled_from(bp.Role))
    def reorder(self, role: bp.Role) -> None:
        batches = self.wire[role]
        if len(batches) >= 2:
            batches[0], batches[1] = batches[1], batches[0]

    @rule(dice=st.integers(0, 4))
    def restart(self, dice: int) -> None:
        if dice == 0:
            self.restart_link()

    def restart_link(self) -> None:
        for role in bp.Role:
            self.wire[role].clear()
            if self.app(role).failed is None:
                self.app(role).conn.resume(self.now)

    # ---------------------------------------------------------- invariants

    @invariant()
    def nothing_ends_twice(self) -> None:
        for app in self.apps.values():
            assert all(count == 1 for count in app.ended.values()), app.ended

    @invariant()
    def body_bytes_arrive_in_order_without_loss_or_duplication(self) -> None:
        for role in bp.Role:
            receiver, sender = self.app(role), self.app(role.peer)
            for xid, got in receiver.received.items():
                sent = sender.sent.get(xid, bytearray())
                assert got == sent[: len(got)], f"exchange {xid} body differs"
                if xid in receiver.end_received:
                    assert got == sent, f"exchange {xid} ended with missing bytes"

    @invariant()
    def credit_is_never_negative_and_memory_is_bounded(self) -> None:
        for app in self.apps.values():
            conn = app.conn
            for xid in conn.open_exchanges:
                assert conn.send_credit(xid) >= 0
            assert conn.retained_bytes <= RETAINED_BOUND
            assert sum(app.unconsumed.values()) <= LIMITS.session_window

    @invariant()
    def unsent_bytes_are_what_is_queued(self) -> None:
        for app in self.apps.values():
            delivery = app.conn._delivery
            queued = [*delivery._control, *delivery._unsent]
            assert app.conn.unsent_bytes == sum(map(len, queued))

    @invariant()
    def no_session_fails(self) -> None:
        # Loss, duplication, reordering and timeouts are all survivable.
        for app in self.apps.values():
            assert app.failed is None, app.failed

    def teardown(self) -> None:
        """Heal the link, let both applications finish, and check every end."""
        for _ in range(20):
            self.restart_link()
            self.settle()
            for role in bp.Role:
                app = self.app(role)
                for xid in list(app.unconsumed):
                    app.conn.consume(xid, app.unconsumed.pop(xid))
                if not self.usable(role):
                    continue
                for xid in app.open():
                    if opened_by(xid) is role.peer and xid not in app.head_sent:
                        app.conn.send_response(xid, 200, b"", [], self.now)
                        app.head_sent.add(xid)
                    if self.can_send_body(role, xid):
                        self.send_end(role, xid)
            self.settle()
            if not any(app.open() for app in self.apps.values()):
                break
        self.no_session_fails()
        self.nothing_ends_twice()
        self.body_bytes_arrive_in_order_without_loss_or_duplication()
        sandbox, host = self.app(bp.Role.SANDBOX), self.app(bp.Role.HOST)
        for xid in sandbox.known:
            assert sandbox.ended[xid] == 1, f"exchange {xid} never ended on the sandbox side"
        for xid in host.known:
            assert host.ended[xid] == 1, f"exchange {xid} never ended on the host side"
        for app in self.apps.values():
            assert app.conn.retained_bytes == 0  # everything acknowledged


BridgeMachine.TestCase.settings = settings(settings.default, stateful_step_count=150)
TestBridgeSession = BridgeMachine.TestCase
