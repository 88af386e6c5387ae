"""The sandbox side's settings, as one record that crosses to it whole.

The host decides every setting (timeouts, limits, the path allowlist, what
agents may cost) and hands the sandbox side this record as JSON on its
command line: defined once, so a setting can never reach one side only. It
holds no secret (credentials stay on the host side).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

import bridgeproto as bp
from bridgeproto.http import HttpPolicy

from .sandbox_side import DEFAULT_LISTEN, AgentLimits, Listen
from .session import RESUME_TIMEOUT
from .transports.registry import STREAM
from .transports.transport import SandboxEnd


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
