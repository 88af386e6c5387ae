"""What one side's ``Connection`` is configured with: its limits and its timers."""

from __future__ import annotations

from typing import Any

import attrs

from ._errors import LocalProtocolError
from ._records import Limits


def _optional_positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise LocalProtocolError(f"{attribute.name} must be positive or None, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise LocalProtocolError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class Config:
    """Limits and timers for one side. Times are in seconds; None disables.

    The defaults suit model calls that think for minutes: an exchange may sit
    idle (no body bytes either way) for 5 minutes and has no total deadline.
    """

    limits: Limits = attrs.field(factory=Limits)
    idle_timeout: float | None = attrs.field(default=300.0, validator=_optional_positive)
    exchange_timeout: float | None = attrs.field(default=None, validator=_optional_positive)
    handshake_timeout: float = attrs.field(default=30.0, validator=_positive)
    ping_interval: float | None = attrs.field(default=20.0, validator=_optional_positive)
    peer_timeout: float | None = attrs.field(default=60.0, validator=_optional_positive)
    shutdown_grace: float = attrs.field(default=5.0, validator=_positive)
    # each way, sent or received
    max_body_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    closed_exchange_memory: int = attrs.field(default=1024, validator=_positive)
    # New exchanges wait while this many sent bytes are unacknowledged, and
    # the session fails past ``max_unacknowledged_bytes`` (a peer that keeps
    # talking but never acknowledges would otherwise pin this side's memory).
    max_retained_bytes: int = attrs.field(default=32 << 20, validator=_positive)
    max_unacknowledged_bytes: int = attrs.field(default=64 << 20, validator=_positive)
