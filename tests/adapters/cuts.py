"""Cutting a live bridge's channel the way a provider drops a stream: at a
moment when bytes are on their way, and knowing when the next channel is up."""

from __future__ import annotations

import anyio

from bridgeproto_adapters.session import Session


class ChannelWatch:
    """Hears the host side's session say a channel came up (its ``on_channel``
    lines), so a test waits for that instead of polling the counters."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.lines: list[str] = []
        self._heard = anyio.Event()
        self._previous = session.on_channel
        session.on_channel = self._hear

    def _hear(self, line: str) -> None:
        self.lines.append(line)
        self._heard.set()
        self._heard = anyio.Event()
        if self._previous is not None:
            self._previous(line)

    async def resumed(self, count: int) -> None:
        """Wait until the session runs on the channel after its ``count``-th break."""
        while self.session.stats.reconnects < count or self.session.stream is None:
            await self._heard.wait()


async def bytes_in_flight(session: Session) -> int:
    """Wait for a moment when the host side has written bytes that the other
    side has not acknowledged yet, and return how many: a cut right after
    this returns (with no checkpoint between) loses them with the channel,
    so the resume must resend them. The bytes come and go with the traffic,
    so this looks after every turn of the event loop (the core has no event
    for them)."""
    while session.stream is None or session.conn.retained_bytes == 0:
        await anyio.sleep(0)
    return session.conn.retained_bytes
