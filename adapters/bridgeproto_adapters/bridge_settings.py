"""What ``open_bridge`` takes besides the sandbox and the upstream, as one record.

``open_bridge(sandbox, url, BridgeSettings(...))`` passes it whole; the
same names as keywords (``open_bridge(sandbox, url, listen=...)``) change
the record's fields, so calls written either way keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict

import attrs

import bridgeproto as bp

from .host_side import HostOptions
from .session import Tracer
from .settings import DEFAULT_LISTEN, RESUME_TIMEOUT, AgentLimits
from .transports.mailbox_options import MailboxOptions
from .transports.transport import Transport

__all__ = [
    "BridgeKeywords",
    "BridgeSettings",
]


@attrs.frozen(kw_only=True)
class BridgeSettings:
    """Every option of ``open_bridge``; docs/sandboxes.md says what each does.

    ``headers`` go to the upstream from the host side (its credentials);
    ``allowed_prefixes`` default to the upstream URL's path; ``config`` is
    the core's (both sides get it); ``options`` the host side's; ``python``
    and ``env`` start the sandbox side; ``limits`` bound its agents;
    ``transport`` names a transport of ``transports.registry`` (``stream``,
    ``mailbox``, tuned by ``mailbox``, one registered there, or ``auto``),
    or is the ``Transport`` itself.
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
    transport: str | Transport = "auto"
    mailbox: MailboxOptions | None = None

    @listen.validator
    def _check_listen(self, _: object, listen: object) -> None:
        if not isinstance(listen, tuple) or len(listen) != 2 or not isinstance(listen[1], int):
            raise ValueError(f"listen is (host, port), e.g. ('127.0.0.1', 13131): {listen!r}")


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
    transport: str | Transport
    mailbox: MailboxOptions | None
