"""HTTP/1.1 with h11 over an anyio byte stream.

The one piece every HTTP peer in the adapters stands on: the host side's
client to the upstream, and the servers of the demo and the benchmark.
"""

from __future__ import annotations

import anyio
import anyio.abc
import h11

from bridgeproto.http import h11_connection

# A body of at most this much still to come after its head (peers write a
# head and its body apart, and the head is often read alone) is waited for
# before the head crosses: the message then crosses whole, in one write, and
# the far side passes it on whole (docs/adapters.md).
WHOLE_BODY_BYTES = 64 << 10


class H11Stream:
    """An h11 connection and the byte stream it speaks over."""

    def __init__(
        self, stream: anyio.abc.ByteStream, role: type[h11.CLIENT] | type[h11.SERVER],
        read_size: int = 256 << 10,
    ) -> None:  # fmt: skip
        self.stream = stream
        self.h11 = h11_connection(role)
        self.read_size = read_size

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send(data)

    async def next_event(self) -> h11.Event:
        """The next event, reading as much as it takes; the stream's end is
        h11's end of input (``ConnectionClosed``, or a protocol error mid-message)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive(self.read_size)
            except anyio.EndOfStream:
                data = b""
            self.h11.receive_data(data)
