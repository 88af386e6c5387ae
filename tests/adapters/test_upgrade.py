"""WebSocket (an HTTP/1.1 Upgrade) through the bridge: real clients in a
real offline sandbox (the ``websockets`` library and aiohttp), a real
WebSocket server upstream (aiohttp's), over both transports."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import anyio.abc
import attrs
import pytest
from aiohttp import web

import bridgeproto as bp
from bridge import bridge as local_bridge
from bridgeproto_adapters.host_side import HostOptions
from bridgeproto_adapters.launch import Bridge, open_bridge
from bridgeproto_adapters.sandboxes import BwrapSandbox
from cuts import ChannelWatch, bytes_in_flight
from sandbox_kinds import SITE_PACKAGES, need_bwrap
from servers_of_kind import PREFIX, serving

pytestmark = pytest.mark.anyio
# How late an end may reach the agent past the moment the docs name (a timeout
# or "at once"): a close crossing the bridge, on a machine other work keeps busy.
MARGIN = 1.0
SECRET = "Bearer the-hosts-own"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@attrs.define
class Seen:
    """What the WebSocket upstream saw."""

    heads: list[dict[str, str]] = attrs.field(factory=list)  # each upgrade request's headers
    hung_up: anyio.Event = attrs.field(factory=anyio.Event)  # a watched client went away
    flood_over: anyio.Event = attrs.field(factory=anyio.Event)  # the flood's client is gone
    plain: int = 0
    echoed: int = 0  # messages the echo route sent back
    echo_heard: anyio.Event = attrs.field(factory=anyio.Event)  # set (and renewed) on each

    async def echoes(self, count: int) -> None:
        while self.echoed < count:
            await self.echo_heard.wait()


@asynccontextmanager
async def websocket_upstream() -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def accept(request: web.Request) -> web.WebSocketResponse:
        seen.heads.append(dict(request.headers))
        ws = web.WebSocketResponse(max_msg_size=0)  # no limit: a 16 MiB message comes
        await ws.prepare(request)
        return ws

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = await accept(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            seen.echoed += 1
            seen.echo_heard.set()
            seen.echo_heard = anyio.Event()
        return ws

    async def server_closes(request: web.Request) -> web.WebSocketResponse:
        ws = await accept(request)
        await ws.send_str("goodbye")
        await ws.close(code=4000, message=b"the server is done")
        return ws

    async def watch(request: web.Request) -> web.WebSocketResponse:
        ws = await accept(request)
        await ws.send_str("watching")
        async for _ in ws:
            pass
        seen.hung_up.set()
        return ws

    async def breaks(request: web.Request) -> web.WebSocketResponse:
        ws = await accept(request)
        await ws.send_str("breaking")
        sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()  # type: ignore[union-attr]  # a reset, no close frame
        return ws

    async def floods(request: web.Request) -> web.WebSocketResponse:
        ws = await accept(request)
        await ws.send_bytes(b"y" * 2000)
        async for _ in ws:
            pass
        seen.flood_over.set()
        return ws

    async def declined(request: web.Request) -> web.Response:
        seen.heads.append(dict(request.headers))
        return web.Response(status=403, text="no WebSockets here")

    async def plain(request: web.Request) -> web.Response:
        seen.plain += 1
        return web.json_response({"ok": True, "body": (await request.read()).decode()})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get(f"{PREFIX}/ws/echo", echo)
    app.router.add_get(f"{PREFIX}/ws/closes", server_closes)
    app.router.add_get(f"{PREFIX}/ws/watch", watch)
    app.router.add_get(f"{PREFIX}/ws/declined", declined)
    app.router.add_get(f"{PREFIX}/ws/breaks", breaks)
    app.router.add_get(f"{PREFIX}/ws/floods", floods)
    app.router.add_get("/elsewhere/ws", echo)
    app.router.add_post(f"{PREFIX}/plain", plain)
    async with serving(app) as url:
        yield url, seen


@attrs.frozen
class Bridged:
    sandbox: BwrapSandbox
    env: dict[str, str]  # what an agent runs with
    seen: Seen
    bridge: Bridge


@asynccontextmanager
async def bridged(
    transport: str = "stream", config: bp.Config | None = None, options: HostOptions | None = None
) -> AsyncIterator[Bridged]:
    """A bridge into an offline sandbox whose Python can import the clients."""
    need_bwrap()
    sandbox = await BwrapSandbox.create(ro=(SITE_PACKAGES,))
    try:
        async with (
            websocket_upstream() as (url, seen),
            open_bridge(
                sandbox, url, headers=[(b"authorization", SECRET.encode())],
                transport=transport, config=config, options=options,
            ) as bridge,
        ):  # fmt: skip
            yield Bridged(sandbox, {**bridge.env, "PYTHONPATH": SITE_PACKAGES}, seen, bridge)
    finally:
        await sandbox.aclose()


async def run_agent(bridged: Bridged, script: str) -> dict[str, object]:
    """Run ``script`` in the sandbox; the JSON its last line holds."""
    result = await bridged.sandbox.run(["python3", "-c", script], env=bridged.env, timeout=180)
    assert result.exit_code == 0, result.stderr.decode()[-3000:]
    answer: dict[str, object] = json.loads(result.stdout.decode().splitlines()[-1])
    return answer


WEBSOCKETS_AGENT = """
import asyncio, hashlib, json, os
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

base = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://")

async def main():
    out = {}
    headers = {"Authorization": "Bearer the-agents-fake", "X-Forwarded-For": "10.9.8.7",
               "Forwarded": "for=10.9.8.7"}
    async with connect(base + "/ws/echo", max_size=None, additional_headers=headers) as ws:
        await ws.send("hello")
        out["text"] = await ws.recv()
        await ws.send(b"\\x00\\x01binary\\xff")
        out["binary"] = (await ws.recv()).hex()
        big = os.urandom(16 << 20)
        await ws.send(big)
        back = await ws.recv()
        out["big"] = hashlib.sha256(back).hexdigest() == hashlib.sha256(big).hexdigest()
        pong = await ws.ping(b"are you there")
        out["pong_ms"] = await asyncio.wait_for(pong, 10) * 1000
    async with connect(base + "/ws/closes") as ws:
        out["last"] = await ws.recv()
        try:
            await ws.recv()
        except ConnectionClosed as closed:
            out["close"] = [closed.rcvd.code, closed.rcvd.reason]
    try:
        async with connect(base + "/ws/declined"):
            pass
    except InvalidStatus as refused:
        out["declined"] = [refused.response.status_code, refused.response.body.decode()]
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_the_websockets_client_through_the_bridge(transport: str) -> None:
    """Text and binary messages, a 16 MiB message each way, ping and pong, a
    close the server starts, a declined upgrade; the upstream sees the
    host's credential, never the agent's."""
    async with bridged(transport) as b:
        out = await run_agent(b, WEBSOCKETS_AGENT)
    assert out["text"] == "hello"
    assert out["binary"] == b"\x00\x01binary\xff".hex()
    assert out["big"] is True
    assert isinstance(out["pong_ms"], float)
    assert out["last"] == "goodbye"
    assert out["close"] == [4000, "the server is done"]
    assert out["declined"] == [403, "no WebSockets here"]
    assert [head["Authorization"] for head in b.seen.heads] == [SECRET] * 3
    # Routing headers an agent sets are dropped from an upgrade as from any request.
    assert not any({"X-Forwarded-For", "Forwarded"} & set(head) for head in b.seen.heads)
    assert all(head["Upgrade"] == "websocket" for head in b.seen.heads[:2])


AIOHTTP_AGENT = """
import asyncio, hashlib, json, os
import aiohttp

base = os.environ["BRIDGEPROTO_URL"]

async def main():
    out = {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(base + "/ws/echo", max_msg_size=0) as ws:
            await ws.send_str("hi from aiohttp")
            out["text"] = (await ws.receive()).data
            big = os.urandom(16 << 20)
            await ws.send_bytes(big)
            back = (await ws.receive()).data
            out["big"] = hashlib.sha256(back).digest() == hashlib.sha256(big).digest()
        async with session.ws_connect(base + "/ws/closes") as ws:
            out["last"] = (await ws.receive()).data
            closing = await ws.receive()
            out["close"] = [closing.type.name, ws.close_code]
        try:
            await session.ws_connect("http://127.0.0.1:13131/elsewhere/ws")
        except aiohttp.WSServerHandshakeError as refused:
            out["outside"] = [refused.status, refused.headers.get("x-bridge-error")]
    print(json.dumps(out))

asyncio.run(main())
"""


async def test_the_aiohttp_client_through_the_bridge() -> None:
    """aiohttp's WebSocket client: messages, 16 MiB, the server's close; an
    upgrade to a path outside the allowlist is refused in the sandbox."""
    async with bridged() as b:
        out = await run_agent(b, AIOHTTP_AGENT)
    assert out["text"] == "hi from aiohttp"
    assert out["big"] is True
    assert out["last"] == "goodbye"
    assert out["close"] == ["CLOSE", 4000]
    assert out["outside"] == [403, "path-not-allowed"]
    assert len(b.seen.heads) == 2  # the refused one never reached the upstream


MANY_AGENT = """
import asyncio, json, os, urllib.request
from websockets.asyncio.client import connect

base = os.environ["BRIDGEPROTO_URL"]

async def one_socket(i):
    async with connect(base.replace("http://", "ws://") + "/ws/echo") as ws:
        got = []
        for k in range(5):
            await ws.send(f"socket {i} message {k}")
            got.append(await ws.recv())
        return got == [f"socket {i} message {k}" for k in range(5)]

def one_plain(i):
    request = urllib.request.Request(base + "/plain", data=f"plain {i}".encode())
    return json.load(urllib.request.urlopen(request))["body"] == f"plain {i}"

async def main():
    sockets = [one_socket(i) for i in range(100)]
    plain = [asyncio.to_thread(one_plain, i) for i in range(50)]
    results = await asyncio.gather(*sockets, *plain)
    print(json.dumps({"sockets": sum(results[:100]), "plain": sum(results[100:])}))

asyncio.run(main())
"""


async def test_a_hundred_websockets_at_once_beside_plain_requests() -> None:
    async with bridged() as b:
        out = await run_agent(b, MANY_AGENT)
    assert out == {"sockets": 100, "plain": 50}
    assert b.seen.plain == 50 and len(b.seen.heads) == 100


def raw_upgrade(path: str, then: str = "", headers: str = "") -> str:
    """Agent code: a WebSocket handshake by hand on ``sock`` (``headers``
    added to it; ``then`` sent in the same write, before any answer)."""
    return f"""
import base64, os, socket
sock = socket.create_connection(("127.0.0.1", 13131))
prefix = os.environ["BRIDGEPROTO_URL"][len("http://127.0.0.1:13131"):]
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(
    f"GET {{prefix}}{path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
    f"Upgrade: websocket\\r\\nSec-WebSocket-Key: {{key}}\\r\\n"
    f"Sec-WebSocket-Version: 13\\r\\n{headers}\\r\\n".encode() + {then}
)
answer = b""
"""


HANG_UP_AGENT = (
    raw_upgrade("/ws/watch", 'b""')
    + """
while b"watching" not in answer:
    answer += sock.recv(65536)
print(answer.split(b"\\r\\n", 1)[0].decode(), flush=True)
os._exit(0)  # gone without a close frame: the connection just drops
"""
)


async def test_a_client_that_hangs_up_is_seen_by_the_upstream() -> None:
    async with bridged() as b:
        result = await b.sandbox.run(["python3", "-c", HANG_UP_AGENT], env=b.env, timeout=60)
        assert result.stdout.decode().strip() == "HTTP/1.1 101 Switching Protocols"
        with anyio.fail_after(10):
            await b.seen.hung_up.wait()


# A masked text frame "early", written with the handshake, before the 101.
EARLY_FRAME = (
    "bytes([0x81, 0x85, 1, 2, 3, 4])"
    ' + bytes(c ^ (1, 2, 3, 4)[i % 4] for i, c in enumerate(b"early"))'
)
EARLY_AGENT = (
    raw_upgrade("/ws/echo", EARLY_FRAME)
    + """
while not answer.endswith(b"\\x81\\x05early"):
    chunk = sock.recv(65536)
    if not chunk:
        break
    answer += chunk
print(answer.endswith(b"\\x81\\x05early"), flush=True)
"""
)


async def test_bytes_an_agent_sends_before_the_101_are_not_lost() -> None:
    """A client may write its first frame with the handshake: the sandbox
    side reads it with the request, and it must reach the upstream once the
    switch is made (the echo comes back)."""
    async with bridged() as b:
        result = await b.sandbox.run(["python3", "-c", EARLY_AGENT], env=b.env, timeout=60)
    assert result.stdout.decode().strip() == "True", result.stderr.decode()


HALF_CLOSE_AGENT = (
    raw_upgrade("/ws/echo", EARLY_FRAME)
    + """
sock.shutdown(socket.SHUT_WR)  # nothing more from the agent; it still reads
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    answer += chunk
print(b"\\x81\\x05early" in answer, flush=True)
"""
)


async def test_an_agent_that_closes_its_sending_side_still_gets_the_answer() -> None:
    """A half-close crosses as one: the upstream sees the agent's end, and the
    bytes it still sends (the echo) reach the agent before the end of its
    own side."""
    async with bridged() as b:
        result = await b.sandbox.run(["python3", "-c", HALF_CLOSE_AGENT], env=b.env, timeout=60)
    assert result.stdout.decode().strip() == "True", result.stderr.decode()


IDLE_AGENT = """
import asyncio, json, os, time
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/watch"
    async with connect(url) as ws:
        await ws.recv()
        start = time.monotonic()
        try:
            await ws.recv()
        except ConnectionClosed:
            print(json.dumps({"closed_after": time.monotonic() - start}))

asyncio.run(main())
"""


async def test_an_idle_upgraded_connection_ends_at_the_idle_timeout() -> None:
    async with bridged(config=bp.Config(idle_timeout=1.0)) as b:
        out = await run_agent(b, IDLE_AGENT)
        with anyio.fail_after(10):
            await b.seen.hung_up.wait()  # the upstream's side was closed too
    assert 0.9 <= out["closed_after"] < 1.0 + MARGIN  # type: ignore[operator]


LATE_AGENT = """
import asyncio, json, os
from websockets.asyncio.client import connect

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/echo"
    async with connect(url) as ws:
        await asyncio.sleep(1.5)  # three response timeouts
        await ws.send("still here")
        print(json.dumps({"echo": await ws.recv()}))

asyncio.run(main())
"""


async def test_a_websocket_outlives_the_response_timeout() -> None:
    """The host's response timeout bounds the wait for the 101, not the
    connection it opens."""
    async with bridged(options=HostOptions(response_timeout=0.5)) as b:
        assert await run_agent(b, LATE_AGENT) == {"echo": "still here"}


RESUMED_AGENT = """
import asyncio, json, os
from websockets.asyncio.client import connect

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/echo"
    sent = [f"message {i} ".encode() * 1000 for i in range(300)]
    got = []
    async with connect(url) as ws:
        for message in sent:
            await ws.send(message)
            got.append(await ws.recv())
            await asyncio.sleep(0.005)
    print(json.dumps({"in_order_and_whole": got == sent, "count": len(got)}))

asyncio.run(main())
"""


async def test_a_websocket_outlives_channels_that_break_under_it() -> None:
    """The channel is cut three times while messages cross (a quarter, half
    and three quarters of the way, each with bytes in flight); the session
    resumes each time and the WebSocket sees nothing of it."""
    result: list[dict[str, object]] = []
    in_flight: list[int] = []
    async with bridged() as b:
        session = b.bridge.session
        watch = ChannelWatch(session)

        async def agent() -> None:
            result.append(await run_agent(b, RESUMED_AGENT))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            for cut in range(3):
                with anyio.fail_after(30):
                    await watch.resumed(cut)  # the last cut's channel is up again
                    await b.seen.echoes(75 * (cut + 1))
                    in_flight.append(await bytes_in_flight(session))
                    assert session.stream is not None
                    await session.stream.aclose()
            with anyio.fail_after(30):
                await watch.resumed(3)
    assert result == [{"in_order_and_whole": True, "count": 300}]
    assert len(in_flight) == 3 and all(in_flight), in_flight
    assert session.stats.reconnects == 3


RAW_TOKEN_AGENT = """
import os, socket
sock = socket.create_connection(("127.0.0.1", 13131))
prefix = os.environ["BRIDGEPROTO_URL"][len("http://127.0.0.1:13131"):]
sock.sendall(
    f"GET {prefix}/raw HTTP/1.1\\r\\nHost: x\\r\\nConnection: upgrade\\r\\n"
    "Upgrade: x-echo/1\\r\\n\\r\\n".encode()
)
answer = b""
while not answer.endswith(b"hello after the switch"):
    answer += sock.recv(65536)
sock.sendall(b"echo this")
sock.shutdown(socket.SHUT_WR)
while chunk := sock.recv(65536):
    answer += chunk
print(repr(answer))
"""


async def test_any_upgrade_token_and_bytes_sent_with_the_101_cross() -> None:
    """An upstream of its own protocol (not WebSocket) that writes its first
    bytes in the same write as its 101: they are read with the head on the
    host side, and must reach the agent; then an echo, and the half-closes."""
    seen_head: list[bytes] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            seen_head.append(head)
            await stream.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-echo/1\r\n"
                b"Connection: Upgrade\r\n\r\nhello after the switch"
            )
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    await stream.send(await stream.receive())
            await stream.send(b" (and the end)")

    need_bwrap()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    sandbox = await BwrapSandbox.create()
    try:
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            async with open_bridge(sandbox, f"http://127.0.0.1:{port}{PREFIX}") as bridge:
                result = await sandbox.run(
                    ["python3", "-c", RAW_TOKEN_AGENT], env=bridge.env, timeout=60
                )
            tg.cancel_scope.cancel()
    finally:
        await sandbox.aclose()
    assert result.stdout.decode().strip() == repr(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x-echo/1\r\n"
        b"via: 1.1 bridgeproto\r\n\r\nhello after the switch" + b"echo this (and the end)"
    ), result.stderr.decode()
    assert b"\r\nupgrade: x-echo/1\r\n" in seen_head[0].lower()


async def test_a_websocket_past_the_body_limit_is_dropped_and_the_bridge_goes_on() -> None:
    """``max_body_bytes`` counts a switched connection's bytes each way: past
    it, the connection is dropped at both ends (both sides run here, in
    process), and the next request is served."""
    config = bp.Config(max_body_bytes=1000)
    async with websocket_upstream() as (url, seen):
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        async with (
            local_bridge(host_config=config, sandbox_config=config, upstream_port=port) as b,
            aiohttp.ClientSession() as client,
        ):
            async with client.ws_connect(f"{b.url}{PREFIX}/ws/watch") as ws:
                assert (await ws.receive()).data == "watching"
                await ws.send_bytes(b"x" * 2000)
                with anyio.fail_after(10):
                    closed = await ws.receive()
                assert closed.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            with anyio.fail_after(10):
                await seen.hung_up.wait()
            async with client.ws_connect(f"{b.url}{PREFIX}/ws/floods") as ws:  # the other way
                with anyio.fail_after(10):
                    closed = await ws.receive()
                assert closed.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            with anyio.fail_after(10):
                await seen.flood_over.wait()
            async with client.post(f"{b.url}{PREFIX}/plain", data=b"still here") as answer:
                assert (await answer.json())["body"] == "still here"


HOLDER_AGENT = """
import asyncio, os
from websockets.asyncio.client import connect

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/watch"
    async with connect(url) as ws:
        print(await ws.recv(), flush=True)
        await asyncio.sleep(3600)  # holds the WebSocket open until the bridge goes

asyncio.run(main())
"""


async def test_stopping_the_bridge_with_a_websocket_open_is_bounded() -> None:
    """A switched connection never ends by itself: stopping the bridge drains
    for the grace ``stop`` is given (not the longer one of the config) and
    then drops it, at both ends."""
    async with bridged() as b:
        holder = await b.sandbox.open_process(["python3", "-c", HOLDER_AGENT], env=b.env)
        try:
            with anyio.fail_after(30):
                assert await holder.stream.receive() == b"watching\n"
            session = b.bridge.session
            started = anyio.current_time()
            ended: list[float] = []

            async def session_end() -> None:
                await session.finished.wait()
                ended.append(anyio.current_time() - started)

            async with anyio.create_task_group() as tg:
                tg.start_soon(session_end)
                await b.bridge.stop(grace=1.0)
            stopped_in = anyio.current_time() - started
            with anyio.fail_after(10):
                await b.seen.hung_up.wait()  # the upstream's side was closed
        finally:
            await holder.stop()
    # The session ends within the grace asked for plus 1 s (docs/adapters.md,
    # "Session"), not the config's 5 s; MARGIN for a loaded machine.
    assert ended[0] < 1 + 1 + MARGIN, ended
    # Then the daemon gets up to 5 s to answer its agents and exit (docs/sandboxes.md).
    assert stopped_in < 1 + 1 + 5 + MARGIN, stopped_in


BODY_AGENT = (
    raw_upgrade("/ws/echo", 'b"hello"', headers="Content-Length: 5\\r\\n")
    + """
while chunk := sock.recv(65536):
    answer += chunk
print(answer.decode())
"""
)


async def test_an_upgrade_request_with_a_body_is_refused_in_the_sandbox() -> None:
    """Written by hand from inside the sandbox, as an agent that skips its
    client's checks would: a 400 naming the cause, and nothing upstream."""
    async with bridged() as b:
        result = await b.sandbox.run(["python3", "-c", BODY_AGENT], env=b.env, timeout=60)
        heads = len(b.seen.heads)
    answer = result.stdout.decode()
    assert answer.startswith("HTTP/1.1 400 "), answer
    assert "x-bridge-error: bad-request" in answer.lower()
    assert "cannot have a body" in answer
    assert heads == 0


BROKEN_AGENT = """
import asyncio, json, os, time
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/breaks"
    async with connect(url) as ws:
        first = await ws.recv()
        start = time.monotonic()
        try:
            await ws.recv()
        except ConnectionClosed as closed:
            print(json.dumps({"first": first, "frame": closed.rcvd is not None,
                              "after": time.monotonic() - start}))

asyncio.run(main())
"""


async def test_an_upstream_that_resets_its_connection_drops_the_agents() -> None:
    async with bridged() as b:
        out = await run_agent(b, BROKEN_AGENT)
    assert out["first"] == "breaking"
    assert out["frame"] is False  # no close frame: the connection just went
    assert out["after"] < MARGIN  # type: ignore[operator]  # at once


CHATTY_AGENT = """
import asyncio, json, os, time
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/echo"
    sent = 0
    async with connect(url) as ws:
        start = time.monotonic()
        try:
            while True:
                await ws.send("still talking")
                await ws.recv()
                sent += 1
                await asyncio.sleep(0.1)
        except ConnectionClosed:
            print(json.dumps({"closed_after": time.monotonic() - start, "messages": sent}))

asyncio.run(main())
"""


async def test_a_busy_upgraded_connection_ends_at_the_exchange_timeout() -> None:
    """Traffic keeps the idle timeout away, but not the exchange's own deadline."""
    async with bridged(config=bp.Config(exchange_timeout=1.5)) as b:
        out = await run_agent(b, CHATTY_AGENT)
    # The deadline counts from the request; the agent's clock starts after the 101.
    assert 1.0 <= out["closed_after"] < 1.5 + MARGIN  # type: ignore[operator]
    assert out["messages"] >= 5  # type: ignore[operator]


KILLER_AGENT = """
import asyncio, json, os, signal
from websockets.asyncio.client import connect

def kill_the_channel():
    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        except OSError:
            continue
        if b"channel" in argv and b"--session" in argv:
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
    return killed

async def main():
    url = os.environ["BRIDGEPROTO_URL"].replace("http://", "ws://") + "/ws/echo"
    sent = [f"message {i} ".encode() * 500 for i in range(200)]
    got, killed = [], []
    async with connect(url) as ws:
        for i, message in enumerate(sent):
            if i in (50, 100, 150):
                killed.append(kill_the_channel())
            await ws.send(message)
            got.append(await ws.recv())
    print(json.dumps({"killed": killed, "in_order_and_whole": got == sent}))

asyncio.run(main())
"""


async def test_a_websocket_survives_its_channel_process_killed_from_inside() -> None:
    """Code in the sandbox SIGKILLs every channel process it can find, three
    times while its WebSocket talks; every message comes back, in order. (The
    relay has handed its stdin and stdout to the sandbox side by then, so
    the channel itself goes on; a later look finds no process to kill.)"""
    async with bridged() as b:
        out = await run_agent(b, KILLER_AGENT)
        reconnects = b.bridge.session.stats.reconnects
        broke_because = b.bridge.session._broke_because
    # The relay, then nothing left to kill; the channel never noticed. (Both
    # in one message: a second relay found would mean a reconnect, and why.)
    assert (out["killed"], reconnects) == ([1, 0, 0], 0), broke_because
    assert out["in_order_and_whole"] is True
