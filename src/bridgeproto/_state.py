"""Every state the protocol can be in, and every way it moves, on one screen.

Rule: a state changes only through ``session_after``, ``link_after`` or
``half_after``, each a lookup in the table under it. ``Connection`` decides
*when* an input happens and what it sends and reports; these tables alone
decide *where* it leads. A pair missing from a table cannot happen:
``Connection`` checks before it moves, and says what is wrong in terms of
the call that was made.

The session::

    NEW --start--> HANDSHAKING --peer's hello--> OPEN
    HANDSHAKING, OPEN --goaway sent--> CLOSING      (we always answer a peer's goaway)
    CLOSING, CLOSED --peer's hello--> (unchanged)    (a close before the handshake ended)
    CLOSING --drained or grace over--> CLOSED
    any state but FAILED --failure--> FAILED

The link under it (the bytes between the two sides) breaks and is resumed
without touching the session. Each half of an exchange (the request half,
the response half) goes IDLE --head--> OPEN --data...--> OPEN --end--> DONE.

Three moves are triggered by state rather than by a call, and their rules
live here too: a session CLOSING is ``drained`` once both sides said goaway,
no exchange is open and the peer holds everything sent; an exchange ends
when ``both_halves_done``; and a response head below 200 leaves its half
IDLE, except 101, after which the bodies carry the new protocol
(``half_input``). The peer's silence is watched only in ``PEER_WATCHED``.
"""

from __future__ import annotations

import enum

from ._records import Data, EndOfBody, Record, ResponseHead


class _Member(enum.Enum):
    """Each member is one object, so its identity can be its hash: a hash in
    C, not Enum's in Python, for the table lookups every record makes."""

    __hash__ = object.__hash__


class SessionState(_Member):
    NEW = "new"  # start() not called yet
    HANDSHAKING = "handshaking"  # our hello is out; the peer's is not in
    OPEN = "open"
    CLOSING = "closing"  # our goaway is out: no new exchanges, draining
    CLOSED = "closed"  # drained, or the grace period ran out
    FAILED = "failed"  # a fatal error; ``Connection.failure`` says which


class SessionInput(_Member):
    START = "start"
    PEER_HELLO = "the peer's first hello"
    GOAWAY_SENT = "goaway"
    DRAINED = "drained"
    GRACE_OVER = "the shutdown grace ran out"
    FAILURE = "failure"


_S, _I = SessionState, SessionInput
_SESSION: dict[tuple[SessionState, SessionInput], SessionState] = {
    (_S.NEW, _I.START): _S.HANDSHAKING,
    (_S.HANDSHAKING, _I.PEER_HELLO): _S.OPEN,
    (_S.CLOSING, _I.PEER_HELLO): _S.CLOSING,  # closed before the handshake ended
    (_S.CLOSED, _I.PEER_HELLO): _S.CLOSED,
    (_S.HANDSHAKING, _I.GOAWAY_SENT): _S.CLOSING,
    (_S.OPEN, _I.GOAWAY_SENT): _S.CLOSING,
    (_S.CLOSING, _I.DRAINED): _S.CLOSED,
    (_S.CLOSING, _I.GRACE_OVER): _S.CLOSED,
    **{(state, _I.FAILURE): _S.FAILED for state in _S if state is not _S.FAILED},
}

# States in which the session has ended: timers stop and close() does nothing.
ENDED = frozenset({SessionState.CLOSED, SessionState.FAILED})
# States past the handshake's wait, in which the peer's silence is timed and
# pings go out (CLOSING too when the close came before the peer's hello).
PEER_WATCHED = frozenset({SessionState.OPEN, SessionState.CLOSING})


def session_after(state: SessionState, what: SessionInput) -> SessionState | None:
    """The session's next state, or None if ``what`` cannot happen in ``state``."""
    return _SESSION.get((state, what))


def drained(
    state: SessionState, *, peer_said_goaway: bool, exchanges_open: int, all_acknowledged: bool
) -> bool:
    """Whether a closing session has nothing left to wait for (``DRAINED``)."""
    return (
        state is SessionState.CLOSING
        and peer_said_goaway
        and not exchanges_open
        and all_acknowledged
    )


class LinkState(_Member):
    UP = "up"
    BROKEN = "broken"  # bytes were lost or damaged; waiting for resume


class LinkInput(_Member):
    BREAK = "break"
    RESUME = "resume"


_LINK: dict[tuple[LinkState, LinkInput], LinkState] = {
    (LinkState.UP, LinkInput.BREAK): LinkState.BROKEN,
    (LinkState.UP, LinkInput.RESUME): LinkState.UP,  # resuming twice is harmless
    (LinkState.BROKEN, LinkInput.RESUME): LinkState.UP,
}


def link_after(state: LinkState, what: LinkInput) -> LinkState | None:
    """The link's next state (a broken link stays broken until resumed)."""
    return _LINK.get((state, what))


class Half(_Member):
    """One direction of an exchange."""

    IDLE = "idle"  # no head yet
    OPEN = "open"  # head seen, body flowing
    DONE = "done"  # end of body seen


class HalfInput(_Member):
    """What is sent or received on one half of an exchange."""

    HEAD = "head"
    INFORMATIONAL_HEAD = "1xx head"
    DATA = "data"
    END = "end"


# The same table serves both directions and both roles. Anything missing is a
# protocol error for that exchange only.
_HALF: dict[tuple[Half, HalfInput], Half] = {
    (Half.IDLE, HalfInput.HEAD): Half.OPEN,
    (Half.IDLE, HalfInput.INFORMATIONAL_HEAD): Half.IDLE,  # 100 Continue and friends
    (Half.OPEN, HalfInput.DATA): Half.OPEN,
    (Half.OPEN, HalfInput.END): Half.DONE,
}


def half_after(half: Half, what: HalfInput) -> Half | None:
    """The half's next state, or None if ``what`` cannot happen on it now."""
    return _HALF.get((half, what))


def half_input(record: Record) -> HalfInput:
    """What a head, data or end record is to its half."""
    if isinstance(record, Data):
        return HalfInput.DATA
    if isinstance(record, EndOfBody):
        return HalfInput.END
    if isinstance(record, ResponseHead) and record.status < 200 and record.status != 101:
        return HalfInput.INFORMATIONAL_HEAD  # 101 is final: the bodies carry the new protocol
    return HalfInput.HEAD


def both_halves_done(send: Half, receive: Half) -> bool:
    """Whether an exchange is complete: each side has ended its body."""
    return send is Half.DONE and receive is Half.DONE
