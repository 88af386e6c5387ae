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
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    ErrorCode.NO_ERROR: 502,
    ErrorCode.PROTOCOL_ERROR: 502,
    ErrorCode.INTERNAL_ERROR: 502,
    ErrorCode.FLOW_CONTROL_ERROR: 502,
    ErrorCode.CANCELLED: 502,
    ErrorCode.REFUSED: 503,
    ErrorCode.IDLE_TIMEOUT: 504,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UPSTREAM_UNREACHABLE: 502,
    ErrorCode.UPSTREAM_FAILED: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_EXCHANGES: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PEER_UNRESPONSIVE: 502,
}


class ProtocolError(Exception):
    """Base of every error the core raises.

    ``status_hint`` is the HTTP status that best describes the failure when it
    has to be reported to an HTTP client (431, 413, 503, ...), or ``None``.
    """

    def __init__(self, msg: str, *, status_hint: int | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(msg)
        self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol or the state forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or records that break the protocol."""


class CorruptFrameError(RemoteProtocolError):
    """Bytes were damaged, cut short or lost on the link.

    The session survives it: reopen the link and call ``Connection.resume``.
    """
