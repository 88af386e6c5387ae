"""Credit: body bytes flow only as far as the receiver has room for them.

Each exchange has its own pair of windows and the session has one more pair
over all exchanges; a body byte needs credit in both. Sending spends the
peer's grant; receiving takes from what this side granted. When the
application reports bytes consumed, the room comes back, and it is
announced to the peer (a ``Window`` record) once half a window has
gathered, so credit updates cost one small record per half window.
"""

from __future__ import annotations

from ._errors import ErrorCode, PeerFault
from ._records import MAX_WINDOW


class Credit:
    """Both windows of one scope: an exchange, or the whole session."""

    __slots__ = ("can_receive", "can_send", "unreturned", "window")

    def __init__(self, can_send: int, window: int) -> None:
        self.can_send = can_send  # bytes the peer lets us send now
        self.window = window  # the window this side grants
        self.can_receive = window  # bytes we still let the peer send
        self.unreturned = 0  # consumed, not yet announced back to the peer

    def spend(self, nbytes: int) -> None:
        """Bytes were sent (the caller checked ``can_send``)."""
        self.can_send -= nbytes

    def grant(self, increment: int) -> bool:
        """The peer granted more; False (and nothing changes) past 2**32-1."""
        if self.can_send + increment > MAX_WINDOW:
            return False
        self.can_send += increment
        return True

    def take(self, nbytes: int) -> bool:
        """Bytes arrived; False (and nothing changes) if they exceed the grant."""
        if nbytes > self.can_receive:
            return False
        self.can_receive -= nbytes
        return True

    def release(self, nbytes: int) -> None:
        """The application has consumed ``nbytes``; they can be granted again."""
        self.unreturned += nbytes

    def due(self) -> int:
        """The increment to announce now (0 below half a window); announcing
        it grants the peer that much more."""
        if not self.unreturned or self.unreturned < self.window // 2:
            return 0
        increment, self.unreturned = self.unreturned, 0
        self.can_receive += increment
        return increment


class SessionCredit(Credit):
    """The session-wide windows: a peer that overruns them breaks the whole
    session, so these raise ``PeerFault`` instead of answering False."""

    __slots__ = ()

    def take_from_peer(self, nbytes: int) -> None:
        if not self.take(nbytes):
            raise PeerFault(
                ErrorCode.FLOW_CONTROL_ERROR,
                f"{nbytes} body bytes arrived with only {self.can_receive}"
                " bytes of session credit left",
            )

    def granted_by_peer(self, increment: int) -> None:
        if not self.grant(increment):
            raise PeerFault(
                ErrorCode.FLOW_CONTROL_ERROR, "session credit would exceed 2**32-1 bytes"
            )
