"""The sandbox side's settings, as one record that crosses to it whole.

It sits low in the adapters (it imports only the core and the transports'
records), so both sides and the command line take their records from here.

The host decides every setting (timeouts, limits, the path allowlist, what
agents may cost) and hands the sandbox side this record as JSON on its
command line: defined once, so a setting can never reach one side only. It
holds no secret (credentials stay on the host side).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

import bridgeproto as bp
from bridgeproto.http import HttpPolicy

from .transports.registry import STREAM
from .transports.transport import SandboxEnd

__all__ = [
    "DEFAULT_LISTEN",
    "RESUME_TIMEOUT",
    "AgentLimits",
    "Listen",
    "SandboxSettings",
    "http_policy",
]

Listen = tuple[str, int] | str  # (host, port) or a Unix socket path
DEFAULT_LISTEN: tuple[str, int] = ("127.0.0.1", 13131)
RESUME_TIMEOUT = 30.0  # seconds a broken channel may take to come back


@attrs.frozen
class AgentLimits:
    """What agent connections may cost the sandbox side before they are refused.

    ``head_timeout``: seconds from a connection being ready for a request
    (accepted, or its previous answer sent) to the whole request head; a
    connection that sent nothing is closed quietly, one that sent part of a
    head gets 408 ``request-timeout``. ``max_pending_connections``:
    connections waiting for a request head at once; more get 503
    ``too-many-connections``. ``max_queued`` requests wait for a free
    exchange when the session's limit is reached, each for at most
    ``queue_timeout`` seconds; past either bound the answer is 503
    ``bridge-busy``.
    """

    head_timeout: float = 60.0
    max_pending_connections: int = 1024
    max_queued: int = 4096
    queue_timeout: float = 120.0


def http_policy(config: bp.Config, allowed_prefixes: Sequence[str] = ("/",)) -> HttpPolicy:
    """The HTTP policy for ``config``: its head and body limits are the core's,
    so the two can never disagree."""
    return HttpPolicy(
        allowed_prefixes=list(allowed_prefixes),
        max_header_bytes=config.limits.max_header_bytes,
        max_body_bytes=config.max_body_bytes,
    )


@attrs.frozen
class SandboxSettings:
    config: bp.Config = attrs.field(factory=bp.Config)
    policy: HttpPolicy = attrs.field(factory=HttpPolicy)
    limits: AgentLimits = attrs.field(factory=AgentLimits)
    listen: Listen = DEFAULT_LISTEN
    resume_timeout: float = RESUME_TIMEOUT
    transport: SandboxEnd = attrs.field(factory=STREAM.sandbox_settings)

    def to_json(self) -> str:
        data = attrs.asdict(self, recurse=True)
        data["policy"]["allowed_prefixes"] = [p.decode() for p in self.policy.allowed_prefixes]
        data["listen"] = self.listen if isinstance(self.listen, str) else list(self.listen)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SandboxSettings:
        """The record ``to_json`` made; ``ValueError`` naming what is wrong otherwise."""
        try:
            data: dict[str, Any] = json.loads(text)
            config = dict(data["config"])
            config["limits"] = bp.Limits(**config["limits"])
            listen = data["listen"]
            return cls(
                config=bp.Config(**config),
                policy=HttpPolicy(**data["policy"]),
                limits=AgentLimits(**data["limits"]),
                listen=listen if isinstance(listen, str) else (str(listen[0]), int(listen[1])),
                resume_timeout=float(data["resume_timeout"]),
                transport=SandboxEnd(**data["transport"]),
            )
        except (KeyError, TypeError, ValueError, bp.LocalProtocolError) as exc:
            raise ValueError(f"the sandbox side's settings are not valid: {exc!r}") from None
