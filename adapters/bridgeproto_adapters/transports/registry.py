"""The transports a bridge can run over, by name: the one place a name is read.

``open_bridge(transport=...)``, ``run --transport`` and ``auto`` all choose
here. A transport of your own is a module with its two ends and one line::

    registry.register(Transport("tcp", "my_tcp:TcpChannels", "my_tcp:serve"))

Its module goes into the sandbox side's archive with the rest (``packaging``).
"""

from __future__ import annotations

from typing import Any

import bridgeproto as bp

from ..errors import BridgeError
from .mailbox_options import MailboxOptions
from .transport import Transport

# Over the mailbox every window update costs a call's round trip, so its
# windows are larger (still under max_retained_bytes).
MAILBOX_LIMITS = bp.Limits(initial_window=16 << 20, session_window=32 << 20)

STREAM = Transport(
    "stream",
    host_end="bridgeproto_adapters.transports.live:host_channels",
    sandbox_end="bridgeproto_adapters.transports.live_sandbox:serve_channels",
)
MAILBOX = Transport(
    "mailbox",
    host_end="bridgeproto_adapters.transports.mailbox:host_channels",
    sandbox_end="bridgeproto_adapters.transports.mailbox_sandbox:serve_mailbox",
    limits=MAILBOX_LIMITS,
    options=MailboxOptions(),
)

_TRANSPORTS: dict[str, Transport] = {t.name: t for t in (STREAM, MAILBOX)}


def register(transport: Transport) -> None:
    """Make ``transport`` choosable by its name (a name taken already is replaced)."""
    if transport.name == "auto" or not transport.name:
        raise BridgeError(f"a transport cannot be named {transport.name!r}")
    _TRANSPORTS[transport.name] = transport


def names() -> list[str]:
    return list(_TRANSPORTS)


def choose(transport: str | Transport, *, live_processes: bool, options: Any = None) -> Transport:
    """The transport ``transport`` names (``auto``: stream where the sandbox
    has live processes, mailbox otherwise), with ``options`` if given."""
    if isinstance(transport, str):
        name = transport
        if name == "auto":
            name = STREAM.name if live_processes else MAILBOX.name
        found = _TRANSPORTS.get(name)
        if found is None:
            raise BridgeError(
                f"unknown transport {transport!r}; use {', '.join(_TRANSPORTS)} or auto"
            )
        transport = found
    return transport if options is None else transport.with_options(options)
