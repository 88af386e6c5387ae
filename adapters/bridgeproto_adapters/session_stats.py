"""What crossed a session, and the one line that presents it (``-v`` and
the end of ``bridgeproto run``)."""

from __future__ import annotations

import attrs

import bridgeproto as bp


@attrs.define
class SessionStats:
    """What crossed the session, for the summary line."""

    exchanges: int = 0
    reconnects: int = 0  # channels after the first
    body_bytes_sent: int = 0
    body_bytes_received: int = 0
    # Seconds from a frame being written to its acknowledgement arriving: at
    # most the time the bridge adds to an exchange, once each way (the peer
    # holds an acknowledgement up to its ack delay for traffic to carry it).
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
