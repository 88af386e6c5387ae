"""What ``open_bridge`` takes besides the sandbox and the upstream, as one record.

``open_bridge(sandbox, url, BridgeSettings(...))`` passes it whole; the
same names as keywords (``open_bridge(sandbox, url, listen=...)``) change
the record's fields, so calls written either way keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypedDict

import attrs

import bridgeproto as bp

from .host_side import HostOptions
from .session import Tracer
from .settings import DEFAULT_LISTEN, RESUME_TIMEOUT, AgentLimits
from .transports.mailbox import MailboxOptions

__all__ = [
    "TRANSPORT_NAMES",
    "BridgeKeywords",
    "BridgeSettings",
    "TransportName",
]

TransportName = Literal["auto", "stream", "mailbox"]
TRANSPORT_NAMES: tuple[TransportName, ...] = ("auto", "stream", "mailbox")


@attrs.frozen(kw_only=True)
class BridgeSettings:
    """Every option of ``open_bridge``; docs/sandboxes.md says what each does.

    ``headers`` go to the upstream from the host side (its credentials);
    ``allowed_prefixes`` default to the upstream URL's path; ``config`` is
    the core's (both sides get it); ``options`` the host side's; ``python``
    and ``env`` start the sandbox side; ``limits`` bound its agents;
    ``transport`` is ``stream``, ``mailbox`` (tuned by ``mailbox``) or
    ``auto``.
    """

    headers: Sequence[tuple[bytes, bytes]] = ()
    listen: tuple[str, int] = attrs.field(default=DEFAULT_LISTEN)
    allowed_prefixes: Sequence[str] | None = None
    config: bp.Config | None = None
    options: HostOptions | None = None
    python: str = "python3"
    env: Mapping[str, str] | None = None
    tracer: Tracer | None = None
    limits: AgentLimits | None = None
    resume_timeout: float = RESUME_TIMEOUT
    on_channel: Callable[[str], None] | None = None
    transport: TransportName = attrs.field(default="auto")
    mailbox: MailboxOptions | None = None

    @listen.validator
    def _check_listen(self, _: object, listen: object) -> None:
        if not isinstance(listen, tuple) or len(listen) != 2 or not isinstance(listen[1], int):
            raise ValueError(f"listen is (host, port), e.g. ('127.0.0.1', 13131): {listen!r}")

    @transport.validator
    def _check_transport(self, _: object, transport: str) -> None:
        if transport not in TRANSPORT_NAMES:
            raise ValueError(
                f"unknown transport {transport!r}; use {', '.join(TRANSPORT_NAMES[1:])} or auto"
            )


class BridgeKeywords(TypedDict, total=False):
    """``BridgeSettings``' fields as ``open_bridge`` keywords (a test holds the two alike)."""

    headers: Sequence[tuple[bytes, bytes]]
    listen: tuple[str, int]
    allowed_prefixes: Sequence[str] | None
    config: bp.Config | None
    options: HostOptions | None
    python: str
    env: Mapping[str, str] | None
    tracer: Tracer | None
    limits: AgentLimits | None
    resume_timeout: float
    on_channel: Callable[[str], None] | None
    transport: TransportName
    mailbox: MailboxOptions | None
