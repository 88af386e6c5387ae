"""Delivery: every sequenced record takes effect exactly once, across broken links.

Outbound, each sequenced record gets the next sequence number and its frame
is retained until the peer acknowledges it. Unsequenced frames (hello, ack,
ping, pong) go first and are never retained: they mean something only on the
link they were sent on. Inbound, a record is taken only if its number is the
next one expected; an older number is a resend (the peer missed our ack) and
a newer one means frames were lost on the link.

When a link is replaced, ``resume`` starts the new one with a fresh control
queue (hello, then ack) followed by everything still unacknowledged.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque

from ._codec import encode_frame
from ._errors import ErrorCode, PeerFault
from ._records import Ack, Record


class Arrival(enum.Enum):
    """What a received sequence number means."""

    NEXT = "next"  # take it
    SEEN = "seen"  # a resend of a record already taken: drop it
    GAP = "gap"  # records before it were lost: the link is broken


class Delivery:
    """Sequence numbers, retained frames and acknowledgements for one side."""

    def __init__(self) -> None:
        self._next_seq = 1
        self._retained: OrderedDict[int, bytes] = OrderedDict()
        self.retained_bytes = 0
        self._unsent: deque[bytes] = deque()
        self._control: list[bytes] = []
        self.unsent_bytes = 0  # in both queues, kept as they change (read often)
        self.received_seq = 0  # the last sequence number taken
        self.acked_seq = 0  # the highest the peer acknowledged
        self._ack_due = False

    @property
    def sent_seq(self) -> int:
        """The highest sequence number queued so far (0 before any)."""
        return self._next_seq - 1

    @property
    def settled(self) -> bool:
        """Whether the peer has acknowledged everything sent."""
        return not self._retained

    # ------------------------------------------------------------ sending

    def send(self, record: Record) -> None:
        """Queue a sequenced record and retain it until acknowledged."""
        frame = encode_frame(record, self._next_seq)
        self._retained[self._next_seq] = frame
        self.retained_bytes += len(frame)
        self._next_seq += 1
        self._unsent.append(frame)
        self.unsent_bytes += len(frame)

    def send_control(self, record: Record) -> None:
        """Queue an unsequenced record, ahead of the sequenced ones."""
        frame = encode_frame(record)
        self._control.append(frame)
        self.unsent_bytes += len(frame)

    def data_to_send(self, max_bytes: int | None) -> bytes:
        parts = self._control
        self._control = []
        self.unsent_bytes -= sum(map(len, parts))
        if self._ack_due:
            parts.append(encode_frame(Ack(self.received_seq)))
            self._ack_due = False
        if max_bytes is None:
            parts.extend(self._unsent)
            self._unsent.clear()
            self.unsent_bytes = 0
        else:
            taken = sum(map(len, parts))
            while self._unsent and (taken < max_bytes or not parts):
                frame = self._unsent.popleft()
                parts.append(frame)
                taken += len(frame)
                self.unsent_bytes -= len(frame)
        return b"".join(parts)

    def resend_unacknowledged(self) -> None:
        """The peer reopened the link: what it has not acknowledged may be
        lost, so send it again (it drops what it already has)."""
        self._unsent = deque(self._retained.values())
        self.unsent_bytes = sum(map(len, self._unsent)) + sum(map(len, self._control))

    def resume(self, hello: Record) -> None:
        """Start a new link: hello and ack first, then everything unacknowledged."""
        self._control = [encode_frame(hello)]
        self._ack_due = True
        self.resend_unacknowledged()

    def forget_unacknowledged(self) -> None:
        """Let go of what will never be resent (the session has failed)."""
        self._retained.clear()
        self.retained_bytes = 0

    # ------------------------------------------------------------ receiving

    def receive_ack(self, seq: int) -> None:
        if seq >= self._next_seq:
            raise PeerFault(
                ErrorCode.PROTOCOL_ERROR,
                f"the peer acknowledged sequence number {seq}, but only"
                f" {self._next_seq - 1} were sent",
            )
        retained = self._retained
        while retained:
            first = next(iter(retained))
            if first > seq:
                break
            self.retained_bytes -= len(retained.pop(first))
        self.acked_seq = max(self.acked_seq, seq)

    def arrival(self, seq: int) -> Arrival:
        """Classify a received sequence number; a taken or resent one is acknowledged."""
        if seq <= self.received_seq:
            self._ack_due = True  # a resend: the peer missed our ack
            return Arrival.SEEN
        if seq != self.received_seq + 1:
            return Arrival.GAP
        self.received_seq = seq
        self._ack_due = True
        return Arrival.NEXT
