"""The clients agents use, inside a real offline sandbox, through
``bridgeproto run``, each against a real server of its kind on the host
(``servers_of_kind.py``). Each checks the content, that streams arrive
chunk by chunk (the server writes the next chunk only once the agent has
the last), that errors pass through as the upstream gave them, and that the
upstream saw the host's credential on every request and never the
placeholder the sandbox holds."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from sandbox_kinds import SITE_PACKAGES, need_bwrap
from servers_of_kind import (
    SECRET,
    Seen,
    aiohttp_server,
    anthropic_routes,
    mcp_server,
    openai_routes,
    plain_routes,
)

pytestmark = pytest.mark.anyio

# Every agent starts with this: the clients' packages, and a way to tell the
# server it has a chunk.
PRELUDE = f"""
import sys
sys.path.insert(0, {SITE_PACKAGES!r})
import json, os, urllib.request
BASE = os.environ["BRIDGEPROTO_URL"]

def ack(name):
    urllib.request.urlopen(urllib.request.Request(BASE + "/ack", data=name.encode())).read()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_agent(
    server: AbstractAsyncContextManager[tuple[str, Seen]], script: str, header: str
) -> tuple[dict[str, object], Seen]:
    """``script`` run by ``bridgeproto run`` in a bwrap sandbox, with the
    host's ``header`` added to every request; the JSON of its last line."""
    need_bwrap()
    async with server as (url, seen):
        with anyio.fail_after(180):
            result = await anyio.run_process(
                [sys.executable, "-m", "bridgeproto_adapters", "run", "--sandbox", "bwrap",
                 "--upstream", url, "--ro", SITE_PACKAGES, "--header", header, "--",
                 "python3", "-c", PRELUDE + script],
                check=False,
            )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return json.loads(result.stdout.decode().splitlines()[-1]), seen


def streamed_chunk_by_chunk(seen: Seen, *names: str) -> None:
    assert seen.missed == []  # no chunk held back until the gate gave up
    for name in names:
        assert f"{name}:0" in seen.passed, (name, seen.passed)


def only_the_hosts_credential(seen: Seen, expected: str) -> None:
    assert seen.credentials, "the server saw no request"
    assert set(seen.credentials) == {expected}


OPENAI_AGENT = """
import openai
client = openai.OpenAI(max_retries=0)
hi = [{"role": "user", "content": "hi"}]
out = {}
plain = client.chat.completions.create(model="test-model", messages=hi)
out["plain"] = plain.choices[0].message.content
pieces = []
stream = client.chat.completions.create(model="test-model", messages=hi, stream=True)
for i, chunk in enumerate(stream):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    ack(f"chat:{i}")
out["streamed"] = pieces

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
name, arguments = None, ""
for i, chunk in enumerate(client.chat.completions.create(
        model="test-model", messages=hi, tools=tools, stream=True)):
    for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        name = name or call.function.name
        arguments += call.function.arguments or ""
    ack(f"tool:{i}")
out["tool_call"] = [name, json.loads(arguments)]
followup = hi + [
    {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
     "function": {"name": name, "arguments": arguments}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]
out["after_tool"] = client.chat.completions.create(
    model="test-model", messages=followup, tools=tools).choices[0].message.content

out["responses"] = client.responses.create(model="test-model", input="hi").output_text
deltas = []
for i, event in enumerate(client.responses.create(model="test-model", input="hi", stream=True)):
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    ack(f"responses:{i}")
out["responses_streamed"] = deltas
try:
    client.chat.completions.create(model="missing-model", messages=hi)
except openai.NotFoundError as error:
    out["error"] = [error.status_code, error.body["code"]]
print(json.dumps(out))
"""


async def test_openai_sdk() -> None:
    server = aiohttp_server(openai_routes)
    out, seen = await run_agent(server, OPENAI_AGENT, f"Authorization: Bearer {SECRET}")
    assert out["plain"] == "Hello, world!"
    assert out["streamed"] == ["Hello", ",", " world", "!"]
    assert out["tool_call"] == ["get_weather", {"city": "Paris"}]
    assert out["after_tool"] == "It is sunny in Paris."
    assert out["responses"] == "Hello from responses"
    assert out["responses_streamed"] == ["Hello", " from", " responses"]
    assert out["error"] == [404, "model_not_found"]
    streamed_chunk_by_chunk(seen, "chat", "tool", "responses")
    only_the_hosts_credential(seen, f"Bearer {SECRET}")


ANTHROPIC_AGENT = """
import anthropic
client = anthropic.Anthropic(max_retries=0)
hi = [{"role": "user", "content": "hi"}]
out = {}
plain = client.messages.create(model="test-model", max_tokens=64, messages=hi)
out["plain"] = plain.content[0].text
pieces = []
with client.messages.stream(model="test-model", max_tokens=64, messages=hi) as stream:
    for i, text in enumerate(stream.text_stream):
        pieces.append(text)
        ack(f"text:{i}")
    out["final"] = stream.get_final_message().content[0].text
out["streamed"] = pieces

tools = [{"name": "get_weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}}}]
kinds, partial, deltas = [], "", 0
for event in client.messages.create(
        model="test-model", max_tokens=64, messages=hi, tools=tools, stream=True):
    kinds.append(event.type)
    if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
        partial += event.delta.partial_json
        ack(f"tool:{deltas}")
        deltas += 1
out["raw_events"] = kinds
out["tool_input"] = json.loads(partial)
try:
    client.messages.create(model="overloaded-model", max_tokens=64, messages=hi)
except anthropic.APIStatusError as error:
    out["error"] = [error.status_code, error.body["error"]["type"]]
print(json.dumps(out))
"""


async def test_anthropic_sdk() -> None:
    server = aiohttp_server(anthropic_routes, credential="x-api-key")
    out, seen = await run_agent(server, ANTHROPIC_AGENT, f"x-api-key: {SECRET}")
    assert out["plain"] == "Hello, world!"
    assert out["streamed"] == ["Hello", ",", " world", "!"]
    assert out["final"] == "Hello, world!"
    assert out["raw_events"] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert out["tool_input"] == {"city": "Paris"}
    assert out["error"] == [529, "overloaded_error"]
    streamed_chunk_by_chunk(seen, "text", "tool")
    # The host adds its key to every request (the acks too), in place of the placeholder.
    only_the_hosts_credential(seen, SECRET)


PLAIN_AGENT = """
import asyncio, hashlib
import aiohttp, httpx

def body(i):
    return (b"upload %d;" % i) * 20000

async def chunks(data, size=65536):
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)

def check(answer, data):
    digest = hashlib.sha256(data).hexdigest()
    return answer == {"sha256": digest, "size": len(data), "chunked": True}

async def with_httpx():
    out = {}
    async with httpx.AsyncClient(base_url=BASE, timeout=60) as client:
        out["get"] = (await client.get("/json")).json()
        answer = await client.post("/upload", content=chunks(body(0)))
        out["chunked_upload"] = check(answer.json(), body(0))
        lines = []
        async with client.stream("GET", "/lines", params={"name": "httpx", "n": 5}) as response:
            async for line in response.aiter_lines():
                await asyncio.to_thread(ack, f"httpx:{len(lines)}")
                lines.append(line)
        out["lines"] = lines
        teapot = await client.get("/teapot")
        out["error"] = [teapot.status_code, teapot.json()]
        answers = await asyncio.gather(*(
            client.post("/upload", content=chunks(body(i))) for i in range(32)))
        out["concurrent"] = sum(check(a.json(), body(i)) for i, a in enumerate(answers))
    return out

async def with_aiohttp():
    out = {}
    async with aiohttp.ClientSession(BASE + "/") as session:
        async with session.get("json") as response:
            out["get"] = await response.json()
        async with session.post("upload", data=chunks(body(1))) as response:
            out["chunked_upload"] = check(await response.json(), body(1))
        lines = []
        async with session.get("lines", params={"name": "aiohttp", "n": 5}) as response:
            while line := await response.content.readline():
                await asyncio.to_thread(ack, f"aiohttp:{len(lines)}")
                lines.append(line.decode().strip())
        out["lines"] = lines
        async with session.get("teapot") as response:
            out["error"] = [response.status, await response.json()]

        async def one(i):
            async with session.post("upload", data=chunks(body(i))) as response:
                return check(await response.json(), body(i))
        out["concurrent"] = sum(await asyncio.gather(*(one(i) for i in range(32))))
    return out

async def main():
    print(json.dumps({"httpx": await with_httpx(), "aiohttp": await with_aiohttp()}))

asyncio.run(main())
"""


async def test_httpx_and_aiohttp_clients() -> None:
    server = aiohttp_server(plain_routes)
    out, seen = await run_agent(server, PLAIN_AGENT, f"Authorization: Bearer {SECRET}")
    for client in ("httpx", "aiohttp"):
        result = out[client]
        assert isinstance(result, dict)
        assert result["get"] == {"ok": True}, client
        assert result["chunked_upload"] is True, client
        assert result["lines"] == [f"line {k}" for k in range(5)], client
        assert result["error"] == [418, {"error": "I'm a teapot"}], client
        assert result["concurrent"] == 32, client
    streamed_chunk_by_chunk(seen, "httpx", "aiohttp")
    only_the_hosts_credential(seen, f"Bearer {SECRET}")


MCP_AGENT = """
import asyncio
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

async def main():
    out, logs, progress = {}, [], []

    async def on_log(params):
        logs.append(params.data)

    async def on_progress(done, total, message):
        progress.append([done, total, message])
        await asyncio.to_thread(ack, f"progress:{len(progress) - 1}")

    async with streamablehttp_client(BASE + "/mcp") as (read, write, session_id):
        async with ClientSession(read, write, logging_callback=on_log) as session:
            info = await session.initialize()
            out["server"] = info.serverInfo.name
            out["tools"] = sorted(tool.name for tool in (await session.list_tools()).tools)
            result = await session.call_tool("add", {"a": 2, "b": 3})
            out["add"] = result.content[0].text
            result = await session.call_tool("count", {"n": 3}, progress_callback=on_progress)
            out["count"] = result.content[0].text
            out["progress"] = progress
            out["logs"] = logs
            result = await session.call_tool("fails", {"why": "no such city"})
            out["error"] = [result.isError, result.content[0].text]
            result = await session.call_tool("big", {"size": 2 << 20})
            out["big"] = len(result.content[0].text)
            results = await asyncio.gather(*(
                session.call_tool("add", {"a": i, "b": i}) for i in range(20)))
            out["concurrent"] = [int(r.content[0].text) for r in results]
            out["had_session"] = session_id() is not None
    print(json.dumps(out))

asyncio.run(main())
"""


async def test_mcp_streamable_http() -> None:
    out, seen = await run_agent(mcp_server(), MCP_AGENT, f"Authorization: Bearer {SECRET}")
    assert out["server"] == "matrix"
    assert out["tools"] == ["add", "big", "count", "fails"]
    assert out["add"] == "5"
    assert out["count"] == "counted to 3"
    assert out["progress"] == [[1.0, 3.0, "step 1"], [2.0, 3.0, "step 2"], [3.0, 3.0, "step 3"]]
    assert out["logs"] == ["counted 1", "counted 2", "counted 3"]
    assert out["error"][0] is True and "no such city" in out["error"][1]  # type: ignore[index]
    assert out["big"] == 2 << 20
    assert out["concurrent"] == [2 * i for i in range(20)]
    assert out["had_session"] is True
    assert "DELETE" in seen.methods  # the client closed its session on the server
    streamed_chunk_by_chunk(seen, "progress")
    only_the_hosts_credential(seen, f"Bearer {SECRET}")
