"""Two connections wired back to back, for tests of the state machine."""

from __future__ import annotations

import bridgeproto as bp
from bridgeproto.wire import SEQUENCED, encode_frame

SID = bytes(range(16))


class Pair:
    """A sandbox side and a host side whose bytes cross when ``pump`` runs."""

    def __init__(
        self,
        sandbox: bp.Config | None = None,
        host: bp.Config | None = None,
        *,
        handshake: bool = True,
    ) -> None:
        self.now = 0.0
        self.sandbox = bp.Connection(bp.Role.SANDBOX, SID, sandbox)
        self.host = bp.Connection(bp.Role.HOST, SID, host)
        self.events: dict[bp.Connection, list[bp.Event]] = {self.sandbox: [], self.host: []}
        self.sandbox.start(self.now)
        self.host.start(self.now)
        if handshake:
            self.pump()
            self.take(self.sandbox)
            self.take(self.host)

    def peer(self, conn: bp.Connection) -> bp.Connection:
        return self.host if conn is self.sandbox else self.sandbox

    def deliver(self, sender: bp.Connection) -> bytes:
        """Move what ``sender`` has queued to its peer; return the bytes moved."""
        data = sender.data_to_send()
        if data:
            receiver = self.peer(sender)
            self.events[receiver] += receiver.receive_data(data, self.now)
        return data

    def pump(self) -> None:
        for _ in range(100):
            if not (self.deliver(self.sandbox) + self.deliver(self.host)):
                return
        raise AssertionError("the connections kept talking for 100 rounds")

    def take(self, conn: bp.Connection) -> list[bp.Event]:
        events, self.events[conn] = self.events[conn], []
        return events

    def completed_download(self, size: int) -> int:
        """A GET whose response of ``size`` bytes the sandbox side received
        and has not consumed; both sides have closed the exchange."""
        s, h = self.sandbox, self.host
        xid = s.start_exchange(b"GET", b"/", [], self.now)
        s.send_end(xid, self.now)
        self.pump()
        h.send_response(xid, 200, b"", [], self.now)
        if size:
            h.send_data(xid, b"z" * size, self.now)
        h.send_end(xid, self.now)
        self.pump()
        return xid

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing timers on both sides."""
        self.now += seconds
        for conn in (self.sandbox, self.host):
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= self.now:
                self.events[conn] += conn.handle_timer(self.now)


class RawPeer:
    """Hand-made frames from a peer that may break the rules."""

    def __init__(self, role: bp.Role, limits: bp.Limits | None = None) -> None:
        self.role = role
        self.limits = limits or bp.Limits()
        self.seq = 0

    def hello(self, version: int = bp.PROTOCOL_VERSION, session_id: bytes = SID) -> bytes:
        return encode_frame(bp.Hello(version, self.role, session_id, self.limits))

    def frame(self, record: bp.Record, seq: int | None = None) -> bytes:
        if not isinstance(record, SEQUENCED):
            return encode_frame(record)
        if seq is None:
            self.seq += 1
            seq = self.seq
        return encode_frame(record, seq)


def connected(role: bp.Role, config: bp.Config | None = None) -> tuple[bp.Connection, RawPeer]:
    """A connection of ``role`` whose peer is a ``RawPeer`` that has said hello."""
    conn = bp.Connection(role, SID, config)
    conn.start(0.0)
    peer = RawPeer(role.peer)
    events = conn.receive_data(peer.hello(), 0.0)
    assert isinstance(events[0], bp.HandshakeComplete)
    conn.data_to_send()
    return conn, peer
