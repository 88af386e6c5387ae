"""A minimal verifiers harness (importable by its id, ``vf_agent``): runs
``vf_kit.AGENT`` with the runtime's own Python, the openai SDK taken from
this venv's packages (shown read-only to offline runtimes). It installs
nothing, so it runs where there is no network."""

from __future__ import annotations

import json
from typing import Any

from verifiers.v1 import Harness, HarnessConfig
from verifiers.v1.dialects.chat import message_to_wire

from sandbox_kinds import SITE_PACKAGES
from vf_kit import AGENT

__all__ = ["AgentHarness", "AgentHarnessConfig"]


class AgentHarnessConfig(HarnessConfig):
    python: str = "python3"


class AgentHarness(Harness[AgentHarnessConfig]):
    NEEDS_CONTAINER = False
    EXECUTES_CODE = False
    SUPPORTS_RESUME = True  # verifiers relaunches it on the conversation so far

    async def launch(  # type: ignore[override]
        self, ctx: Any, trace: Any, runtime: Any, endpoint: str, secret: str,
        mcp_urls: dict[str, str], data: Any, **_: Any,
    ) -> Any:  # fmt: skip
        _, prompt = self.resolve_prompt(data)
        if not isinstance(prompt, str):
            path = f"conversation-{trace.id}.json"
            wire = [message_to_wire(message) for message in prompt or []]
            await runtime.write(path, json.dumps(wire).encode())
            prompt = f"@{path}"
        argv = [self.config.python, "-c", AGENT, endpoint, secret, ctx.model, prompt]
        return await runtime.run_program(argv, {"PYTHONPATH": SITE_PACKAGES})
