"""The link: the bytes between the two sides, one byte stream at a time.

Each link opens with each side's hello and then carries frames both ways.
Inbound, the link decodes frames, checks the peer's hello (its role and the
session's id), answers pings, takes acks and lets sequenced records through
only in order (``_delivery``); outbound, it queues what the connection sends.
Bytes lost or damaged break it; ``resume`` starts the next one, which opens
with the hello again and carries everything the peer has not acknowledged.
The session above goes on across any number of links.
"""

from __future__ import annotations

from ._codec import NEED_DATA, Frame, FrameDecoder, Sentinel
from ._delivery import Arrival, Delivery
from ._errors import CorruptFrameError, ErrorCode, PeerFault, RemoteProtocolError
from ._events import LinkBroken
from ._records import PROTOCOL_VERSION, Ack, Hello, Limits, Ping, Pong, Record, Role
from ._state import LinkInput, LinkState, link_after


class Link:
    """The link of one side, and the delivery state that outlives it."""

    def __init__(self, role: Role, session_id: bytes, limits: Limits) -> None:
        self.state = LinkState.UP
        self.delivery = Delivery()
        self.peer_hello: Hello | None = None  # the first one, once it came
        self._role = role
        self._session_id = session_id
        self._hello = Hello(PROTOCOL_VERSION, role, session_id, limits)
        self._decoder = FrameDecoder(limits.max_frame_size)

    @property
    def frame_waiting(self) -> bool:
        """Whether the link is up and holds part of a frame."""
        return self.state is LinkState.UP and self._decoder.buffered > 0

    def start(self) -> None:
        self.delivery.send_control(self._hello)

    def resume(self) -> None:
        """Begin the next link: hello and ack, then everything unacknowledged."""
        self._decoder = FrameDecoder(self._hello.limits.max_frame_size)
        self._move(LinkInput.RESUME)
        self.delivery.resume(self._hello)

    def broken(self, reason: str) -> LinkBroken:
        self._move(LinkInput.BREAK)
        return LinkBroken(reason)

    # ------------------------------------------------------------ receiving

    def feed(self, data: bytes) -> None:
        """Bytes read from the transport; ``b""`` at its end."""
        self._decoder.receive_data(data)

    def next_frame(self) -> Frame | LinkBroken | None:
        """The next whole frame, None if more bytes are needed, or (the link
        breaking) why the bytes cannot be read. An invalid frame from a
        peer that is not damaged but wrong raises ``PeerFault``."""
        try:
            frame = self._decoder.next_frame()
        except CorruptFrameError as exc:
            return self.broken(str(exc))
        except RemoteProtocolError as exc:
            raise PeerFault(ErrorCode.PROTOCOL_ERROR, str(exc)) from None
        if frame is NEED_DATA:
            return None
        if isinstance(frame, Sentinel):
            return self.broken("the peer closed the link")
        return frame

    def take(self, frame: Frame) -> Hello | Record | LinkBroken | None:
        """What a frame means above the link: the peer's first hello, the
        next sequenced record, the link breaking, or None (handled here)."""
        record = frame.record
        if isinstance(record, Hello):
            self._check_hello(record)
            if self.peer_hello is None:
                self.peer_hello = record
                return record
            self.delivery.resend_unacknowledged()  # the peer reopened the link
            return None
        if self.peer_hello is None:
            raise PeerFault(
                ErrorCode.PROTOCOL_ERROR,
                f"{type(record).__name__} arrived before HELLO; a session opens with HELLO",
            )
        if isinstance(record, Ack):
            self.delivery.receive_ack(record.seq)
        elif isinstance(record, Ping):
            self.delivery.send_control(Pong(record.payload))
        elif not isinstance(record, Pong):  # (a pong only proves the peer alive)
            arrival = self.delivery.arrival(frame.seq)
            if arrival is Arrival.NEXT:
                return record
            if arrival is Arrival.GAP:
                return self.broken(
                    "frames were lost: expected sequence number"
                    f" {self.delivery.received_seq + 1}, got {frame.seq}"
                )
        return None

    def _check_hello(self, hello: Hello) -> None:
        # (A hello of another wire version never gets here: the decoder refuses it.)
        if hello.role is not self._role.peer:
            raise PeerFault(
                ErrorCode.PROTOCOL_ERROR,
                f"both sides claim the {self._role.name.lower()} role; one must be the"
                f" {self._role.peer.name.lower()} side",
            )
        if hello.session_id != self._session_id:
            raise PeerFault(
                ErrorCode.PROTOCOL_ERROR,
                f"session id mismatch: the peer has {hello.session_id.hex()}, this side"
                f" {self._session_id.hex()}; the peer restarted or belongs to another bridge",
            )

    def _move(self, what: LinkInput) -> None:
        new = link_after(self.state, what)
        if new is None:
            raise AssertionError(f"{what.value} while the link is {self.state.value}")
        self.state = new
