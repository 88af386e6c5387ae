"""Events a ``Connection`` reports besides the records the peer sent.

Records the peer sent that the application must act on (``RequestHead``,
``ResponseHead``, ``Data``, ``EndOfBody``, ``GoAway``) are reported as
themselves, as h11 reports its events; the classes here cover what has no
record of its own.
"""

from __future__ import annotations

import attrs

from ._errors import ErrorCode
from ._records import Data, EndOfBody, GoAway, Hello, RequestHead, ResponseHead


@attrs.frozen
class HandshakeComplete:
    """The peer's hello arrived and checked out; exchanges may start."""

    peer: Hello


@attrs.frozen
class ExchangeReset:
    """An exchange ended without completing.

    ``by_peer`` is true when the peer sent the reset; false when this side
    ended it (a timer fired, the peer broke the exchange's rules, the session
    shut down or failed). Either way the exchange is gone: stop sending on it.
    """

    exchange_id: int
    code: ErrorCode
    reason: str
    by_peer: bool


@attrs.frozen
class CreditAvailable:
    """The peer granted more body credit; exchange id 0 means session-wide."""

    exchange_id: int


@attrs.frozen
class SessionClosed:
    """Both sides said goaway and every exchange has ended.

    ``forced`` is true when the grace period ran out first and the remaining
    exchanges were reset.
    """

    forced: bool


@attrs.frozen
class SessionFailed:
    """The session is over because of an error; every exchange has ended."""

    code: ErrorCode
    reason: str
    by_peer: bool


@attrs.frozen
class LinkBroken:
    """Bytes on the link were damaged or lost; the session itself is fine.

    Input is ignored until the link is reopened and ``Connection.resume`` is
    called; nothing in flight is lost.
    """

    reason: str


Event = (
    HandshakeComplete
    | RequestHead
    | ResponseHead
    | Data
    | EndOfBody
    | GoAway
    | ExchangeReset
    | CreditAvailable
    | SessionClosed
    | SessionFailed
    | LinkBroken
)
