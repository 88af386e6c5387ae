"""A real HTTP/1.1 upstream for tests: anyio sockets and h11, keep-alive.

Routes (any prefix before them is ignored, so tests can use allowlisted paths):

    /echo               JSON describing the request (method, target, headers, body size and hash)
    /json               a small JSON object
    /sse?n=N&gated=1    N server-sent events with ': keepalive' comments between;
                        gated: each event waits for a token from ``sse_gate``
    /gate               puts one token in ``sse_gate`` (so an agent can pace a stream)
    /chunked?n=N        a chunked body of N chunks
    /bytes?size=N       N pattern bytes with Content-Length
    /slow?n=N           N chunks, each after a short pause
    /status/NNN         an empty answer with that status
    /hang               never answers; sets ``hang_closed`` when the client leaves
    /forever            a head, then a chunk now and then until the client leaves
    /break              a head and part of the body, then the connection drops
    /late-body?after=S  a small JSON body, written S seconds (0.05) after its head
    /close              reads the request, then closes without answering
    /v1/chat/completions  OpenAI-compatible, streamed or not
    /v1/models          OpenAI-compatible model list
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import h11

from bridgeproto_adapters.h11io import H11Stream

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


class Upstream:
    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests: list[dict[str, object]] = []
        send, receive = anyio.create_memory_object_stream[None](math.inf)
        self.sse_gate_send, self.sse_gate = send, receive
        self.hang_closed = anyio.Event()
        self.forever_closed = anyio.Event()
        self.hang_started = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        http = H11Stream(stream, h11.SERVER)
        async with stream:
            try:
                while True:
                    request = await http.next_event()
                    if not isinstance(request, h11.Request):
                        return
                    await self._answer(http, request)
                    if (
                        http.h11.our_state is h11.MUST_CLOSE
                        or http.h11.their_state is h11.MUST_CLOSE
                    ):
                        return
                    http.h11.start_next_cycle()
            except (anyio.BrokenResourceError, anyio.EndOfStream, h11.ProtocolError, OSError):
                return

    async def _answer(self, http: H11Stream, request: h11.Request) -> None:
        stream = http.stream
        url = urlsplit(request.target.decode())
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        route = "/" + url.path.rstrip("/").split("/")[-1]
        if "/status/" in url.path:
            route = "/status"
        if url.path.endswith("/chat/completions"):
            route = "/chat"
        # Read the whole body first, hashing it as it streams past.
        digest, size, small = hashlib.sha256(), 0, bytearray()
        while True:
            event = await http.next_event()
            if isinstance(event, h11.Data):
                digest.update(event.data)
                size += len(event.data)
                if len(small) < 1 << 20:
                    small += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return
        info = {
            "method": request.method.decode(),
            "target": request.target.decode(),
            "headers": [[n.decode(), v.decode()] for n, v in request.headers.raw_items()],
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        }
        self.requests.append(info)

        send = http.send

        async def reply(status: int, body: bytes, ctype: bytes = b"application/json") -> None:
            headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
            await send(h11.Response(status_code=status, headers=headers))
            if request.method != b"HEAD":
                await send(h11.Data(data=body))
            await send(h11.EndOfMessage())

        sse = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if route == "/echo":
            await reply(200, json.dumps(info).encode())
        elif route == "/json":
            await reply(200, b'{"ok": true}')
        elif route == "/status":
            await reply(int(url.path.rsplit("/", 1)[1]), b"")
        elif route == "/bytes":
            total = int(query.get("size", "0"))
            await send(
                h11.Response(status_code=200, headers=[(b"content-length", str(total).encode())])
            )
            sent = 0
            while sent < total:
                chunk = PATTERN[: min(len(PATTERN), total - sent)]
                await send(h11.Data(data=chunk))
                sent += len(chunk)
            await send(h11.EndOfMessage())
        elif route in ("/chunked", "/slow"):
            await send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
            for i in range(int(query.get("n", "3"))):
                if route == "/slow":
                    await anyio.sleep(0.05)
                await send(h11.Data(data=f"chunk {i}\n".encode()))
            await send(h11.EndOfMessage())
        elif route == "/sse":
            await send(h11.Response(status_code=200, headers=sse))
            for i in range(int(query.get("n", "3"))):
                if query.get("gated"):
                    await self.sse_gate.receive()
                await send(h11.Data(data=b": keepalive\n\n"))
                await send(h11.Data(data=f"data: event {i}\n\n".encode()))
            await send(h11.EndOfMessage())
        elif route == "/hang":
            self.hang_started.set()
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                await stream.receive()  # the client never sends more; returns on close
            self.hang_closed.set()
            raise anyio.EndOfStream
        elif route == "/forever":
            await send(h11.Response(status_code=200, headers=sse))
            try:
                while True:
                    await send(h11.Data(data=b"data: tick\n\n"))
                    await anyio.sleep(0.02)
            except (anyio.BrokenResourceError, OSError):
                self.forever_closed.set()
                raise
        elif route == "/gate":
            self.sse_gate_send.send_nowait(None)
            await reply(200, b"{}")
        elif route == "/late-body":
            body = b'{"late": true}'
            await send(h11.Response(status_code=200, headers=[(b"content-length", b"14")]))
            await anyio.sleep(float(query.get("after", "0.05")))
            await send(h11.Data(data=body))
            await send(h11.EndOfMessage())
        elif route == "/close":
            raise anyio.EndOfStream  # closes without a word
        elif route == "/break":
            await send(h11.Response(status_code=200, headers=[(b"content-length", b"1000")]))
            await send(h11.Data(data=b"partial"))
            raise anyio.EndOfStream  # drops the connection mid-body
        elif route == "/chat":
            await self._chat(send, reply, json.loads(bytes(small) or b"{}"))
        elif route == "/models":
            await reply(
                200,
                json.dumps(
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": "test-model",
                                "object": "model",
                                "created": 0,
                                "owned_by": "tests",
                            }
                        ],
                    }
                ).encode(),
            )
        else:
            await reply(404, b'{"error": "no such route"}')

    async def _chat(self, send, reply, body: dict) -> None:  # type: ignore[no-untyped-def]
        words = ["Hello", ",", " world", "!"]
        base = {"id": "chatcmpl-1", "created": 0, "model": body.get("model", "test-model")}
        if not body.get("stream"):
            await reply(
                200,
                json.dumps(
                    {
                        **base,
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "".join(words)},
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
                    }
                ).encode(),
            )
            return
        await send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")]))
        for word in words:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            await send(h11.Data(data=b": keepalive\n\n"))
            await send(h11.Data(data=b"data: " + json.dumps(chunk).encode() + b"\n\n"))
        await send(h11.Data(data=b"data: [DONE]\n\n"))
        await send(h11.EndOfMessage())


@asynccontextmanager
async def running_upstream() -> AsyncIterator[Upstream]:
    upstream = Upstream()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    upstream.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, upstream.serve_connection)
        yield upstream
        tg.cancel_scope.cancel()


class ThreadedUpstream:
    """The test upstream served on a thread of its own; its events are
    mirrored as ``threading.Event``s so that a blocking test can wait on them."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.url = upstream.url
        self.hang_started = threading.Event()
        self.hang_closed = threading.Event()

    @property
    def requests(self) -> list[dict[str, object]]:
        return self.upstream.requests

    async def mirror(self) -> None:
        async with anyio.create_task_group() as tg:
            for name in ("hang_started", "hang_closed"):
                tg.start_soon(self._mirror_one, name)

    async def _mirror_one(self, name: str) -> None:
        await getattr(self.upstream, name).wait()
        getattr(self, name).set()


@contextmanager
def upstream_in_thread() -> Iterator[ThreadedUpstream]:
    """The test upstream on a thread of its own, for a ``bridgeproto`` process to use."""
    ready, stop = threading.Event(), threading.Event()
    found: list[ThreadedUpstream] = []

    async def serve() -> None:
        async with running_upstream() as upstream, anyio.create_task_group() as tg:
            threaded = ThreadedUpstream(upstream)
            tg.start_soon(threaded.mirror)
            found.append(threaded)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)
            tg.cancel_scope.cancel()

    thread = threading.Thread(target=anyio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(10), "the test upstream did not start"
    try:
        yield found[0]
    finally:
        stop.set()
        thread.join(10)
