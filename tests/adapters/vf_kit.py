"""What the verifiers tests share: a host-side OpenAI-compatible model that
streams and calls a tool, a minimal harness whose agent uses the openai SDK,
and a verifiers Agent wired to both.

verifiers' own harnesses (``bash``, ``null``) install ``uv`` and packages from
the index inside the runtime, which an offline sandbox cannot do; the tests
enter one layer down with verifiers' public API: ``vf_agent.AgentHarness``
(a ``Harness`` of this project's own) runs ``AGENT`` below with the runtime's
Python and this venv's packages shown read-only.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

REQUIRE_VERIFIERS = os.environ.get("BRIDGEPROTO_REQUIRE_VERIFIERS") == "1"


def need_verifiers() -> None:
    """Skip without verifiers (the main venv), unless CI said it must be there."""
    try:
        import verifiers.v1  # noqa: F401
    except ImportError:
        if REQUIRE_VERIFIERS:
            pytest.fail("BRIDGEPROTO_REQUIRE_VERIFIERS=1 but verifiers is not installed")
        pytest.skip("verifiers is not installed (the .ci/run second venv has it)")


# The agent: asks the model (streamed), runs the tool it calls, sends the
# result back, prints the answer. max_retries=0: a lost turn would show.
AGENT = r"""
import json, sys, time
from openai import OpenAI
base_url, api_key, model, prompt = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
tools = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
if prompt.startswith("@"):  # a conversation to continue (a resumed exchange), as JSON
    with open(prompt[1:]) as f:
        messages = json.load(f)
else:
    messages = [{"role": "user", "content": prompt}]
turns = []
for _ in range(4):
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=tools, stream=True)
    text, calls = "", {}
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        text += delta.content or ""
        for call in delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += call.id or ""
            slot["name"] += (call.function.name or "") if call.function else ""
            slot["arguments"] += (call.function.arguments or "") if call.function else ""
    turns.append(time.perf_counter() - started)
    if not calls:
        print(text)
        break
    messages.append({"role": "assistant", "content": text or None, "tool_calls": [
        {"id": c["id"], "type": "function",
         "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls.values()]})
    for c in calls.values():
        args = json.loads(c["arguments"])
        answer = str(args["a"] + args["b"])
        messages.append({"role": "tool", "tool_call_id": c["id"], "content": answer})
with open("turns.json", "w") as f:  # each model turn as the agent saw it (bench_verifiers.py)
    json.dump(turns, f)
"""


class Model:
    """A host-side OpenAI-compatible model: the first turn streams a call to
    ``add``, the turn after a tool result streams the answer. ``hold`` keeps
    answers back until released (to cut a channel mid-turn)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()  # set when a request waits on ``hold``
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        last = body["messages"][-1]
        if last["role"] == "tool":
            deltas = [{"content": "the sum "}, {"content": f"is {last['content']}"}]
            finish = "stop"
        else:
            arguments = json.dumps({"a": 2, "b": 3})
            deltas = [
                {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "add", "arguments": ""}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:8]}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": arguments[8:]}}]},
            ]  # fmt: skip
            finish = "tool_calls"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def event(delta: dict[str, Any], reason: str | None = None) -> None:
            chunk = {
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await event({"role": "assistant", "content": ""})
        for delta in deltas:
            await response.write(b": keepalive\n\n")
            await event(delta)
        await event({}, finish)
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        tail = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                "model": body["model"], "choices": [], "usage": usage}  # fmt: skip
        await response.write(f"data: {json.dumps(tail)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@asynccontextmanager
async def running_model() -> AsyncIterator[Model]:
    model = Model()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", model.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    model.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield model
    finally:
        await runner.cleanup()


def make_agent(model: Model) -> Any:
    """A verifiers Agent: this project's harness, the host model."""
    from verifiers.v1 import AgentConfig
    from verifiers.v1.clients import EvalClientConfig
    from verifiers.v1.configs.agent import TimeoutConfig
    from verifiers.v1.runtimes import SubprocessConfig

    from vf_agent import AgentHarnessConfig

    config = AgentConfig(
        model="test-model",
        # The agent's own policy, used only by an entered Agent's shared
        # interception: local, so it opens no tunnel (runs borrow their box).
        runtime=SubprocessConfig(),
        client=EvalClientConfig(base_url=model.url, api_key_var="BRIDGEPROTO_TEST_MODEL_KEY"),
        harness=AgentHarnessConfig(id="vf_agent"),
        # A rollout timeout makes verifiers look the runtime's type up in its
        # fixed table (a KeyError for a type it does not know).
        timeout=TimeoutConfig(rollout=300),
    )
    from verifiers.v1 import Agent

    return Agent(config)


def make_task(prompt: str | None = "what is 2 + 3?") -> Any:
    from verifiers.v1 import Task, TaskData

    return Task(TaskData(prompt=prompt))
