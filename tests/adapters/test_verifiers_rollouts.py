"""Real verifiers v1 rollouts through BridgedRuntime(OfflineRuntime): verifiers'
own Agent, Rollout and InterceptionServer (per-rollout secrets, its state
channel), a host-side model that streams and calls a tool, and an agent in
an offline bubblewrap sandbox using the openai SDK at the URL verifiers gave
it. Both transports; no tunnel opened; 16 rollouts at once; a channel cut
mid-turn loses no turn and duplicates none.

Skipped without verifiers, unless BRIDGEPROTO_REQUIRE_VERIFIERS=1 (.ci/run
runs them in a second venv that has it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

from sandbox_kinds import SITE_PACKAGES, need_bwrap
from vf_kit import Model, make_agent, make_task, need_verifiers, running_model

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # verifiers runs on asyncio only


@pytest.fixture
def tunnels(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every tunnel verifiers' interception would open, recorded and refused."""
    need_verifiers()
    need_bwrap()
    import verifiers.v1.interception.server as server

    opened: list[object] = []

    def no_tunnel(config: object) -> object:
        opened.append(config)
        raise AssertionError("verifiers opened a tunnel")

    monkeypatch.setattr(server, "make_tunnel", no_tunnel)
    yield opened


@asynccontextmanager
async def bridged_runtime(transport: str) -> AsyncIterator[Any]:
    from bridgeproto_adapters.verifiers import BridgedRuntime, OfflineRuntime

    inner = OfflineRuntime(ro=[SITE_PACKAGES], live_processes=transport == "stream")
    runtime = BridgedRuntime(inner)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def assert_solved(trace: Any, model: Model, *, requests: int = 2) -> None:
    """Two turns (the tool call, the answer), each asked of the model once."""
    assert trace.ok, trace.errors
    assert trace.stop_condition == "agent_completed"
    assert trace.num_turns == 2
    roles = [(node.message.role, node.message.content) for node in trace.nodes]
    assert roles == [
        ("user", "what is 2 + 3?"),
        ("assistant", None),
        ("tool", "5"),
        ("assistant", "the sum is 5"),
    ]
    assert len(model.requests) == requests
    assert all(body["stream"] for body in model.requests)


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_a_rollout_reaches_its_interception_server_over_the_bridge(
    transport: str, tunnels: list[object]
) -> None:
    async with running_model() as model, bridged_runtime(transport) as runtime:
        trace = await make_agent(model).run(make_task(), runtime=runtime)
        assert_solved(trace, model)
        assert tunnels == []
        # verifiers asked for the interception server's /v1 on host loopback
        # and got a route of the one bridge, of the transport asked for.
        (asked,) = [url for url in runtime.routes if url.endswith("/v1")]
        assert asked.startswith("http://127.0.0.1:")
        assert runtime.routes[asked] == "http://127.0.0.1:13131/_routes/1/v1"
        kind = type(runtime.bridge.channels).__name__
        assert kind == ("ProcessChannels" if transport == "stream" else "MailboxChannels")
        # Inside, that host port is not reachable: the bridge was the only way;
        # and the route reaches only its own path (/v1), not the server's /state.
        port = urlsplit(asked).port
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)"
        direct = await runtime.run(["python3", "-c", probe], {})
        assert direct.exit_code != 0 and "refused" in direct.stderr.lower()
        state = "http://127.0.0.1:13131/_routes/1/state"
        fetch = f"import urllib.request as u; u.urlopen({state!r})"
        refused = await runtime.run(["python3", "-c", fetch], {})
        assert "403" in refused.stderr
        # Nothing of the bridge's or the host's went into the agent's environment.
        seen = await runtime.run(["env"], {})
        assert "OPENAI" not in seen.stdout and "BRIDGEPROTO" not in seen.stdout


async def test_sixteen_rollouts_at_once(tunnels: list[object]) -> None:
    """16 runtimes, each its own offline sandbox and bridge, one entered
    Agent (so one shared interception server, its secrets per rollout)."""
    async with running_model() as model:
        agent = make_agent(model)
        async with agent:

            async def one() -> Any:
                async with bridged_runtime("stream") as runtime:
                    return await agent.run(make_task(), runtime=runtime)

            traces = await asyncio.gather(*(one() for _ in range(16)))
        for trace in traces:
            assert trace.ok, trace.errors
            assert trace.num_turns == 2
        assert len(model.requests) == 32
        assert len({trace.id for trace in traces}) == 16
        assert tunnels == []


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_a_channel_cut_mid_turn_loses_no_turn_and_duplicates_none(
    transport: str, tunnels: list[object]
) -> None:
    """The model holds its first answer; meanwhile the bridge's channel (the
    relay process, or the mailbox's epoch of calls) is closed under it. The
    session resumes on a new channel, the turn arrives once, and the agent
    (openai SDK, no retries) never notices."""
    async with running_model() as model, bridged_runtime(transport) as runtime:
        model.hold = asyncio.Event()
        run = asyncio.create_task(make_agent(model).run(make_task(), runtime=runtime))
        await asyncio.wait_for(model.held.wait(), 60)
        session = runtime.bridge.session
        assert session.stats.reconnects == 0 and session.stream is not None
        await session.stream.aclose()  # the channel, gone mid-turn
        model.hold.set()
        trace = await asyncio.wait_for(run, 60)
        assert_solved(trace, model)
        assert session.stats.reconnects >= 1
        first = json.dumps(model.requests[0]["messages"])
        assert sum(json.dumps(r["messages"]) == first for r in model.requests) == 1


TOOL_SERVER = r"""
import http.server, json, os
class Tool(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = json.dumps({"sum": body["a"] + body["b"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        print("served", self.command, self.path, flush=True)
server = http.server.HTTPServer(("127.0.0.1", 0), Tool)
with open("port.tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename("port.tmp", "port")
server.serve_forever()
"""


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_a_tool_server_inside_is_reached_through_expose(
    transport: str, tunnels: list[object]
) -> None:
    """A server started inside with verifiers' run_background answers the host
    at the loopback URL expose gave, once per request."""
    import httpx

    async with bridged_runtime(transport) as runtime:
        await runtime.run_background(["python3", "-c", TOOL_SERVER], {}, "tool.log")
        found = await runtime.run(
            ["sh", "-c", "until test -s port; do sleep 0.01; done; cat port"], {}
        )
        url = await runtime.expose(int(found.stdout))
        assert urlsplit(url).hostname == "127.0.0.1"
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"{url}/tools/add", json={"a": 2, "b": 3})
        assert answer.status_code == 200 and answer.json() == {"sum": 5}
        log = await runtime.read("tool.log")
        assert log == b"served POST /tools/add\n"
        assert tunnels == []


async def test_an_interaction_borrows_the_runtime_turn_by_turn(tunnels: list[object]) -> None:
    """agent.interaction(task, runtime=...): the caller is the user; each turn
    relaunches the agent on the conversation, through the same bridge."""
    async with running_model() as model, bridged_runtime("stream") as runtime:
        agent = make_agent(model)
        async with agent.interaction(make_task(prompt=None), runtime=runtime) as talk:
            first = await talk.turn("what is 2 + 3?")
            second = await talk.turn("and once more?")
        assert first.last_reply == second.last_reply == "the sum is 5"
        trace = talk.trace
        assert trace.ok, trace.errors
        assert trace.num_turns == 4 and len(model.requests) == 4
        assert [m["role"] for m in model.requests[-1]["messages"]] == [
            "user", "assistant", "tool", "assistant", "user", "assistant", "tool",
        ]  # fmt: skip
        assert tunnels == []
