"""Inward routes: a server started inside an offline sandbox answers the host
through the bridge (Bridge.expose), on both transports, while the agent's
outward traffic runs on the same bridge."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import anyio
import attrs
import httpx
import pytest

import bridgeproto as bp
from bridgeproto_adapters.errors import BridgeError
from bridgeproto_adapters.launch import MAILBOX_LIMITS, Bridge, open_bridge
from bridgeproto_adapters.sandbox_calls import channel_dir
from bridgeproto_adapters.sandboxes import BwrapSandbox, LiveProcess, SandboxClient
from sandbox_kinds import SITE_PACKAGES, need_bwrap
from upstream import Upstream, running_upstream

pytestmark = pytest.mark.anyio
MiB = 1 << 20
PORT = 8700  # inside the sandbox, whose network namespace is its own

# The server inside: plain, streamed (SSE paced by the host), WebSocket, and
# what it saw of clients that hung up.
SERVER = r"""
import asyncio, hashlib, json, sys
from aiohttp import web

next_event = asyncio.Event()
hung_up = asyncio.Event()
posted = []  # the body of every POST /digest, in arrival order

async def hello(request):
    return web.json_response({"path": request.path_qs, "host": request.headers.get("host")})

async def digest(request):
    body = await request.read()
    posted.append(body.decode("latin-1")[:40])
    return web.json_response({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})

async def sse(request):
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for i in range(int(request.query.get("n", "3"))):
        await response.write(f"data: event {i}\n\n".encode())
        next_event.clear()
        await next_event.wait()  # the next one is written only once the host saw this one
    await response.write_eof()
    return response

async def posts(request):
    return web.json_response(posted)

async def pattern(request):
    size, chunk = int(request.query["size"]), bytes(range(256)) * 256
    response = web.StreamResponse(headers={"content-length": str(size)})
    await response.prepare(request)
    sent = 0
    while sent < size:
        await response.write(chunk[: size - sent])
        sent += len(chunk)
    await response.write_eof()
    return response

async def broken(request):
    response = web.StreamResponse(headers={"content-length": "1000"})
    await response.prepare(request)
    await response.write(b"partial")
    request.transport.abort()  # the server dies mid-body
    return response

async def stall(request):
    await asyncio.sleep(3600)

async def advance(request):
    next_event.set()
    return web.json_response({})

async def hang(request):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        hung_up.set()
        raise

async def hangups(request):
    await asyncio.wait_for(hung_up.wait(), 30)
    return web.json_response({"hung_up": True})

async def ws(request):
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        await socket.send_str("echo " + message.data)
    return socket

app = web.Application(client_max_size=8 << 20, handler_args={"handler_cancellation": True})
app.router.add_get("/hello", hello)
app.router.add_post("/digest", digest)
app.router.add_get("/sse", sse)
app.router.add_post("/advance", advance)
app.router.add_get("/posts", posts)
app.router.add_get("/broken", broken)
app.router.add_get("/stall", stall)
app.router.add_get("/bytes", pattern)
app.router.add_get("/hang", hang)
app.router.add_get("/hangups", hangups)
app.router.add_get("/ws", ws)

async def main():
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# The agent's outward traffic meanwhile: 20 POSTs to the default upstream.
AGENT = r"""
import json, os, urllib.request
for i in range(20):
    body = f"post {i}".encode()
    with urllib.request.urlopen(os.environ["BRIDGEPROTO_URL"] + "/echo", body, timeout=60) as r:
        assert r.status == 200
print("outward done")
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@attrs.frozen
class Inside:
    bridge: Bridge
    upstream: Upstream
    url: str  # the exposed server's URL on the host
    server: LiveProcess
    sandbox: BwrapSandbox  # the sandbox itself (the bridge may reach it another way)


@asynccontextmanager
async def served_inside(
    transport: str,
    wrap: Callable[[BwrapSandbox], SandboxClient] | None = None,
    config: bp.Config | None = None,
    resume_timeout: float = 30.0,
) -> AsyncIterator[Inside]:
    """A bridge into a bwrap sandbox with SERVER running inside and exposed.
    With ``wrap``, the bridge reaches the sandbox through what it makes of it
    (the server still starts in the sandbox itself)."""
    need_bwrap()
    sandbox = await BwrapSandbox.create(ro=(SITE_PACKAGES,))
    reached = sandbox if wrap is None else wrap(sandbox)
    try:
        async with (
            running_upstream() as upstream,
            open_bridge(
                reached,
                f"{upstream.url}/rollout/k",
                transport=transport,
                config=config,
                resume_timeout=resume_timeout,
            ) as bridge,
        ):
            env = {**bridge.env, "PYTHONPATH": SITE_PACKAGES}
            server = await sandbox.open_process(["python3", "-c", SERVER, str(PORT)], env=env)
            try:
                with anyio.fail_after(30):
                    assert (await server.stream.receive()).startswith(b"ready")
                url = await bridge.expose(PORT)
                yield Inside(bridge, upstream, url, server, sandbox)
            finally:
                await server.stop()
    finally:
        await sandbox.aclose()


@pytest.mark.parametrize(
    ("transport", "anyio_backend"),
    [("stream", "asyncio"), ("mailbox", "asyncio"), ("stream", "trio"), ("mailbox", "trio")],
)
async def test_a_server_inside_answers_the_host_while_the_agent_calls_out(transport: str) -> None:
    async with served_inside(transport) as inside, httpx.AsyncClient(timeout=60) as client:
        assert inside.url.startswith("http://127.0.0.1:")
        outward = await inside.sandbox.open_process(["python3", "-c", AGENT], env=inside.bridge.env)
        # GET
        response = await client.get(f"{inside.url}/hello?a=1")
        assert response.status_code == 200
        assert response.json() == {"path": "/hello?a=1", "host": f"127.0.0.1:{PORT}"}
        # A 1 MiB POST, whole and once
        body = os.urandom(MiB)
        response = await client.post(f"{inside.url}/digest", content=body)
        assert response.json() == {"size": MiB, "sha256": hashlib.sha256(body).hexdigest()}
        # SSE as written: each event arrives before the server writes the next
        async with client.stream("GET", f"{inside.url}/sse?n=4") as stream:
            assert stream.headers["content-type"] == "text/event-stream"
            lines = stream.aiter_lines()
            for i in range(4):
                line = await anext(lines)
                while not line:
                    line = await anext(lines)
                assert line == f"data: event {i}"
                await client.post(f"{inside.url}/advance")
        # 32 at once
        async with anyio.create_task_group() as tg:
            answers: dict[int, object] = {}

            async def one(i: int) -> None:
                answers[i] = (await client.get(f"{inside.url}/hello?i={i}")).json()["path"]

            for i in range(32):
                tg.start_soon(one, i)
        assert answers == {i: f"/hello?i={i}" for i in range(32)}
        # The agent's outward traffic ran on the same bridge meanwhile.
        with anyio.fail_after(60):
            assert await outward.wait() == 0
        posts = [r for r in inside.upstream.requests if r["method"] == "POST"]
        assert sorted(r["body_size"] for r in posts) == sorted(len(f"post {i}") for i in range(20))


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_websocket_and_a_client_that_hangs_up_inward(transport: str) -> None:
    async with served_inside(transport) as inside:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{inside.url}/ws") as ws,
        ):
            for word in ("one", "two"):
                await ws.send_str(word)
                assert (await ws.receive_str()) == f"echo {word}"
        # A client that hangs up mid-request: the server inside sees it.
        async with httpx.AsyncClient(timeout=60) as client:
            with anyio.move_on_after(1):
                await client.get(f"{inside.url}/hang")
            response = await client.get(f"{inside.url}/hangups")
            assert response.json() == {"hung_up": True}


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_host_listener_is_loopback_only_and_ports_are_checked() -> None:
    async with served_inside("stream") as inside:
        port = int(inside.url.rsplit(":", 1)[1])
        # Bound to 127.0.0.1: another address of this host gets no answer.
        other = _non_loopback_address()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        # The same port again: the same URL.
        assert await inside.bridge.expose(PORT) == inside.url
        async with httpx.AsyncClient(timeout=30) as client:
            # A declared port nothing listens on inside: 502, named.
            nothing = await inside.bridge.expose(PORT + 1)
            response = await client.get(f"{nothing}/x")
            assert response.status_code == 502
            assert response.headers["x-bridge-error"] == "upstream-unreachable"
            # A host that opens an exchange on a route it never declared (its
            # core is bypassed here) is refused by the sandbox side, by name.
            session = inside.bridge.session
            session.conn.routes[77] = PORT  # the host's own book only: no ROUTE is sent
            with anyio.fail_after(30):
                exchange = await session.open_exchange(
                    b"GET", b"/hello", [(b"host", b"x")], route=77
                )
                exchange.end()
                reset = None
                async for event in exchange.events:
                    reset = event
            exchange.close()
            assert isinstance(reset, bp.ExchangeReset) and reset.code is bp.ErrorCode.FORBIDDEN
            assert "route 77 was never declared" in reset.reason


def _non_loopback_address() -> str | None:
    """An address of this host that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_inward_failures_and_timeouts_reach_the_host_client(transport: str) -> None:
    quick = bp.Config(idle_timeout=1.0)
    if transport == "mailbox":
        quick = bp.Config(limits=MAILBOX_LIMITS, idle_timeout=1.0)
    async with (
        served_inside(transport, config=quick) as inside,
        httpx.AsyncClient(timeout=30) as client,
    ):
        # A chunked upload from the host arrives whole.
        pieces = [os.urandom(64 << 10) for _ in range(16)]

        async def chunks() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        response = await client.post(f"{inside.url}/digest", content=chunks())
        whole = b"".join(pieces)
        assert response.json() == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
        # A server that dies mid-body: the client sees an error, never a short
        # body that looks complete.
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{inside.url}/broken")
        # A server that never answers: the exchange's idle timeout, named.
        response = await client.get(f"{inside.url}/stall")
        assert response.status_code == 504
        assert response.headers["x-bridge-error"] == "idle-timeout"
        # And the route still serves.
        assert (await client.get(f"{inside.url}/hello")).status_code == 200


async def test_the_bridge_going_down_mid_upload_fails_the_client_not_the_host() -> None:
    """The sandbox side killed while a host client uploads to a server inside:
    the client gets an error, and the host's bridge (its caller's task group)
    carries on to a clean stop."""
    async with served_inside("stream", resume_timeout=1.0) as inside:
        first_sent, go_on = anyio.Event(), anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            first_sent.set()
            await go_on.wait()
            yield b"y" * 1000

        async with httpx.AsyncClient(timeout=30) as client, anyio.create_task_group() as tg:
            outcome: list[object] = []

            async def upload() -> None:
                try:
                    outcome.append(await client.post(f"{inside.url}/digest", content=body()))
                except httpx.HTTPError as exc:
                    outcome.append(exc)

            tg.start_soon(upload)
            await first_sent.wait()
            directory = channel_dir(inside.bridge.session.conn.session_id)
            killed = await inside.sandbox.run(["sh", "-c", f"kill -9 $(cat {directory}/pid)"])
            assert killed.exit_code == 0, killed.stderr
            with anyio.fail_after(30):
                await inside.bridge.session.finished.wait()
            go_on.set()
        with pytest.raises(BridgeError, match=r"expose\(9999\): the bridge is down \(the session"):
            await inside.bridge.expose(9999)
        (result,) = outcome
        if isinstance(result, httpx.Response):
            assert result.status_code == 502 and result.headers["x-bridge-error"] == "bridge-down"
        else:
            assert isinstance(result, httpx.HTTPError)
