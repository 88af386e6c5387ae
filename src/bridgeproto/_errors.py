"""Errors and the error codes carried on the wire.

The split follows h11: ``LocalProtocolError`` means the caller used the API
wrongly, ``RemoteProtocolError`` means the peer sent something invalid.
``CorruptFrameError`` is the one remote error that blames the link, not the
peer: the bytes were damaged or lost in transit, and resending them
(``Connection.resume``) repairs it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Why an exchange was reset or a session told to go away.

    Each code has the HTTP status the sandbox side answers with when the code
    ends an exchange before its response head reached the agent.
    """

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    CANCELLED = 4
    REFUSED = 5
    IDLE_TIMEOUT = 6
    DEADLINE_EXCEEDED = 7
    UPSTREAM_UNREACHABLE = 8
    UPSTREAM_FAILED = 9
    UPSTREAM_TIMEOUT = 10
    HEADERS_TOO_LARGE = 11
    BODY_TOO_LARGE = 12
    TOO_MANY_EXCHANGES = 13
    SHUTTING_DOWN = 14
    FORBIDDEN = 15
    BAD_REQUEST = 16
    PEER_UNRESPONSIVE = 17

    @property
    def http_status(self) -> int:
        """The status an agent gets when this code ends its exchange early."""
        return _HTTP_ANSWER[self][0]

    @property
    def cause(self) -> str:
        """The ``X-Bridge-Error`` value that names this code to the agent."""
        return _HTTP_ANSWER[self][1]


# The one place codes meet HTTP: the status and X-Bridge-Error an agent gets.
_HTTP_ANSWER = {
    ErrorCode.NO_ERROR: (502, "no-error"),
    ErrorCode.PROTOCOL_ERROR: (502, "protocol-error"),
    ErrorCode.INTERNAL_ERROR: (502, "internal-error"),
    ErrorCode.FLOW_CONTROL_ERROR: (502, "flow-control-error"),
    ErrorCode.CANCELLED: (502, "cancelled"),
    ErrorCode.REFUSED: (503, "refused"),
    ErrorCode.IDLE_TIMEOUT: (504, "idle-timeout"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "deadline-exceeded"),
    ErrorCode.UPSTREAM_UNREACHABLE: (502, "upstream-unreachable"),
    ErrorCode.UPSTREAM_FAILED: (502, "upstream-failed"),
    ErrorCode.UPSTREAM_TIMEOUT: (504, "upstream-timeout"),
    ErrorCode.HEADERS_TOO_LARGE: (431, "headers-too-large"),
    ErrorCode.BODY_TOO_LARGE: (413, "body-too-large"),
    ErrorCode.TOO_MANY_EXCHANGES: (503, "bridge-busy"),
    ErrorCode.SHUTTING_DOWN: (503, "shutting-down"),
    ErrorCode.FORBIDDEN: (403, "forbidden"),
    ErrorCode.BAD_REQUEST: (400, "bad-request"),
    ErrorCode.PEER_UNRESPONSIVE: (502, "peer-unresponsive"),
}


class ProtocolError(Exception):
    """Base of every error the core raises.

    ``code``, when set, is the ``ErrorCode`` that describes the failure to
    an HTTP client; ``status_hint`` is its status (431, 413, 503, ...).
    """

    def __init__(self, msg: str, *, code: ErrorCode | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(msg)
        self.code = code

    @property
    def status_hint(self) -> int | None:
        return None if self.code is None else self.code.http_status


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol or the state forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or records that break the protocol."""


class CorruptFrameError(RemoteProtocolError):
    """Bytes were damaged, cut short or lost on the link.

    The session survives it: reopen the link and call ``Connection.resume``.
    """


class PeerFault(Exception):
    """Inside the core only: the peer broke a rule. Raised while reading one
    exchange's record, it resets that exchange and the session goes on;
    raised anywhere else, it fails the session."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
