"""The adapters' own exceptions; transport errors are mapped to these in one
place per adapter, so callers never see a backend's exception types."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio

import bridgeproto as bp

__all__ = [
    "STREAM_ERRORS",
    "BridgeError",
    "BridgeStartError",
    "ExchangeAborted",
    "SessionEnded",
    "UpstreamError",
    "found_in",
]

# What a byte stream raises when it ends or fails, whatever carries it: the
# one list every adapter catches.
STREAM_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class BridgeError(Exception):
    """Base of every error the adapters raise."""


class BridgeStartError(BridgeError):
    """The bridge could not start; the message names the cause and the fix."""


class SessionEnded(BridgeError):
    """The bridge session is over (closed, failed or its link is gone)."""


class ExchangeAborted(BridgeError):
    """The exchange was reset; ``code`` says why."""

    def __init__(self, code: bp.ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class UpstreamError(BridgeError):
    """The upstream could not be reached or broke the response."""

    def __init__(self, code: bp.ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


E = TypeVar("E", bound=BaseException)


def found_in(
    exc: BaseException,
    kinds: type[E] | tuple[type[E], ...],
    matches: Callable[[E], bool] = lambda _: True,
) -> E | None:
    """The first exception of ``kinds`` in ``exc`` that ``matches``, looking
    through exception groups (a task group's failure holds the real cause)."""
    if isinstance(exc, kinds) and matches(exc):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if (found := found_in(inner, kinds, matches)) is not None:
            return found
    return None
