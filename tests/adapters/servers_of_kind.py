"""Real servers of the kinds agents call, for the client matrix.

Each runs on loopback in the test's event loop and records the credential
every request carried. Streams are **gated**: the server writes chunk k+1
only once the agent has said (``POST <prefix>/ack`` with the chunk's name)
that it has chunk k, so a bridge that held a response back would stall the
stream and the gate would record the miss.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import uvicorn
from aiohttp import web
from mcp.server.fastmcp import Context, FastMCP

PREFIX = "/rollout/k1"
SECRET = "host-secret"  # what the host adds; the sandbox holds only a placeholder
GATE_SECONDS = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@attrs.define
class Seen:
    """What one server saw: each request's credential, and the gates it waited at."""

    credentials: list[str | None] = attrs.field(factory=list)
    acked: dict[str, anyio.Event] = attrs.field(factory=dict)
    missed: list[str] = attrs.field(factory=list)  # chunks the agent never said it had
    passed: list[str] = attrs.field(factory=list)
    methods: list[str] = attrs.field(factory=list)

    def _event(self, name: str) -> anyio.Event:
        return self.acked.setdefault(name, anyio.Event())

    async def gate(self, name: str) -> None:
        """Wait until the agent has chunk ``name``."""
        with anyio.move_on_after(GATE_SECONDS) as waited:
            await self._event(name).wait()
        (self.missed if waited.cancelled_caught else self.passed).append(name)


def sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def stream_events(
    request: web.Request, seen: Seen, name: str, gated: list[bytes], after: list[bytes]
) -> web.StreamResponse:
    """An SSE response: each of ``gated`` waits for the agent's word on the
    one before it; ``after`` follows at once."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for k, event in enumerate(gated):
        await response.write(event)
        await seen.gate(f"{name}:{k}")
    for event in after:
        await response.write(event)
    await response.write_eof()
    return response


@asynccontextmanager
async def aiohttp_server(
    routes: Callable[[web.Application, Seen], None], credential: str = "Authorization"
) -> AsyncIterator[tuple[str, Seen]]:
    """An aiohttp server with ``routes`` and the ack route, at ``PREFIX``."""
    seen = Seen()

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.credentials.append(request.headers.get(credential))
        seen.methods.append(request.method)
        return await handler(request)

    async def ack(request: web.Request) -> web.Response:
        seen._event((await request.text()).strip()).set()
        return web.Response(text="ok")

    app = web.Application(middlewares=[record], client_max_size=1 << 30)
    app.router.add_post(f"{PREFIX}/ack", ack)
    routes(app, seen)
    async with serving(app) as url:
        yield url, seen


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free loopback port; its URL down to ``PREFIX``."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- OpenAI


def openai_routes(app: web.Application, seen: Seen) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "test-model",
                "choices": [choice],
            }
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["model"] == "missing-model":
            error = {
                "message": "The model `missing-model` does not exist",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
            return web.json_response({"error": error}, status=404)
        after_tool = body["messages"][-1]["role"] == "tool"
        wants_tool = bool(body.get("tools")) and not after_tool
        text = ["It is sunny in ", "Paris."] if after_tool else ["Hello", ",", " world", "!"]
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
            if wants_tool:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if wants_tool else "stop",
            }
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [choice],
                }
            )
        if wants_tool:
            first = {**call, "index": 0, "function": {"name": "get_weather", "arguments": ""}}
            pieces = ['{"city": ', '"Paris"}']
            deltas = [{"role": "assistant", "tool_calls": [first]}] + [
                {"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces
            ]
            return await stream_events(
                request,
                seen,
                "tool",
                [chunk(d) for d in deltas],
                [chunk({}, "tool_calls"), b"data: [DONE]\n\n"],
            )
        deltas = [{"role": "assistant", "content": ""}] + [{"content": t} for t in text]
        return await stream_events(
            request,
            seen,
            "chat",
            [chunk(d) for d in deltas],
            [chunk({}, "stop"), b"data: [DONE]\n\n"],
        )

    def response_object(status: str, text: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        output = (
            [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": status,
                    "role": "assistant",
                    "content": content,
                }
            ]
            if text
            else []
        )
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 0,
            "model": "test-model",
            "status": status,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
        }

    async def responses(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = ["Hello", " from", " responses"]
        if not body.get("stream"):
            return web.json_response(response_object("completed", "".join(text)))
        events = [
            sse(
                {
                    "type": "response.created",
                    "sequence_number": 0,
                    "response": response_object("in_progress", ""),
                },
                "response.created",
            )
        ]
        for k, piece in enumerate(text):
            delta = {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
                "logprobs": [],
                "sequence_number": k + 1,
            }
            events.append(sse(delta, "response.output_text.delta"))
        done = {
            "type": "response.completed",
            "sequence_number": len(text) + 1,
            "response": response_object("completed", "".join(text)),
        }
        return await stream_events(
            request, seen, "responses", events, [sse(done, "response.completed")]
        )

    app.router.add_post(f"{PREFIX}/v1/chat/completions", chat)
    app.router.add_post(f"{PREFIX}/v1/responses", responses)


# ---------------------------------------------------------------- Anthropic


def anthropic_routes(app: web.Application, seen: Seen) -> None:
    def message(content: list[dict[str, Any]], stop: str) -> dict[str, Any]:
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "test-model",
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 5},
        }

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["model"] == "overloaded-model":
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return web.json_response({"type": "error", "error": error}, status=529)
        tool = bool(body.get("tools"))
        text = ["Hello", ",", " world", "!"]
        use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
        if not body.get("stream"):
            content = (
                [{**use, "input": {"city": "Paris"}}]
                if tool
                else [{"type": "text", "text": "".join(text)}]
            )
            return web.json_response(message(content, "tool_use" if tool else "end_turn"))
        start = sse(
            {"type": "message_start", "message": message([], "end_turn") | {"stop_reason": None}},
            "message_start",
        )
        block = use if tool else {"type": "text", "text": ""}
        opened = sse(
            {"type": "content_block_start", "index": 0, "content_block": block},
            "content_block_start",
        )
        if tool:
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in ('{"city": ', '"Par', 'is"}')
            ]
        else:
            deltas = [{"type": "text_delta", "text": t} for t in text]
        gated = [
            start
            + opened
            + sse(
                {"type": "content_block_delta", "index": 0, "delta": deltas[0]},
                "content_block_delta",
            )
        ]
        gated += [
            sse({"type": "content_block_delta", "index": 0, "delta": d}, "content_block_delta")
            for d in deltas[1:]
        ]
        after = [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "tool_use" if tool else "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": 5},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return await stream_events(request, seen, "tool" if tool else "text", gated, after)

    app.router.add_post(f"{PREFIX}/v1/messages", messages)


# ---------------------------------------------------------------- plain HTTP


def plain_routes(app: web.Application, seen: Seen) -> None:
    import hashlib

    async def json_(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for piece in request.content.iter_any():
            digest.update(piece)
            size += len(piece)
        chunked = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
        return web.json_response({"sha256": digest.hexdigest(), "size": size, "chunked": chunked})

    async def lines(request: web.Request) -> web.StreamResponse:
        name, count = request.query["name"], int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for k in range(count):
            await response.write(f"line {k}\n".encode())
            await seen.gate(f"{name}:{k}")
        await response.write_eof()
        return response

    async def teapot(request: web.Request) -> web.Response:
        return web.json_response({"error": "I'm a teapot"}, status=418)

    app.router.add_get(f"{PREFIX}/json", json_)
    app.router.add_post(f"{PREFIX}/upload", upload)
    app.router.add_get(f"{PREFIX}/lines", lines)
    app.router.add_get(f"{PREFIX}/teapot", teapot)


# ---------------------------------------------------------------- MCP


@asynccontextmanager
async def mcp_server() -> AsyncIterator[tuple[str, Seen]]:
    """A FastMCP server (the official SDK's) on uvicorn, under ``PREFIX``."""
    seen = Seen()
    server = FastMCP("matrix", streamable_http_path=f"{PREFIX}/mcp", log_level="WARNING")

    @server.tool()
    async def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    async def count(n: int, ctx: Context) -> str:  # type: ignore[type-arg]
        """Count to n, reporting progress and logging each step."""
        for i in range(n):
            await ctx.report_progress(i + 1, n, f"step {i + 1}")
            await ctx.info(f"counted {i + 1}")
            await seen.gate(f"progress:{i}")
        return f"counted to {n}"

    @server.tool()
    def fails(why: str) -> str:
        """Always fails."""
        raise ValueError(why)

    @server.tool()
    def big(size: int) -> str:
        """A large result."""
        return "x" * size

    mcp_app = server.streamable_http_app()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            seen.credentials.append((headers.get(b"authorization") or b"").decode() or None)
            seen.methods.append(scope["method"])
            if scope["path"] == f"{PREFIX}/ack":
                body = b""
                while True:
                    message = await receive()
                    body += message.get("body", b"")
                    if not message.get("more_body"):
                        break
                seen._event(body.decode().strip()).set()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})
                return
        await mcp_app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve, [sock])
        while not uv.started:
            await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}{PREFIX}", seen
        finally:
            uv.should_exit = True
    sock.close()
