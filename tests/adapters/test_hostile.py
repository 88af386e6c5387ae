"""Hostile and unlucky agents: raw bytes from where an adversary inside the
sandbox stands, what the agent must get, what the upstream must see, and
that the bridge still serves a normal request afterwards."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import h11
import httpx
import pytest

import bridgeproto as bp
from bridge import bridge
from bridgeproto.http import HttpPolicy, Upstream, upstream_request
from bridgeproto.wire import encode_frame
from bridgeproto_adapters.host_side import HostOptions
from bridgeproto_adapters.sandbox_side import AgentLimits

pytestmark = pytest.mark.anyio
POLICY = HttpPolicy(allowed_prefixes=["/rollout/k1"])
ROUTING = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-envoy-original-path",
    "x-http-method-override",
    "x-host",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def raw(url: str, data: bytes, *, wait: float = 10) -> bytes:
    """Send raw bytes; the bridge's answer: one whole response, or all until it closes."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with anyio.move_on_after(wait):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(data)
            while not _complete(received):
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
    return received


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if sep and line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def upstream_saw(request: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in request["headers"] if n.lower() == name]  # type: ignore[union-attr]


POST = b"POST /rollout/k1/echo HTTP/1.1\r\nHost: x\r\n"
GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
# (name, raw request, status the agent gets, X-Bridge-Error, does the upstream see it)
CASES: list[tuple[str, bytes, int, str | None, bool]] = [
    ("Connection names Content-Length", POST + b"Connection: content-length\r\n"
     b"Content-Length: 5\r\n\r\nhello", 200, None, True),
    ("fragment", GET % b"/rollout/k1#/../../x", 400, "unsafe-path", False),
    ("fragment after a query", GET % b"/rollout/k1/echo?a=1#x", 400, "unsafe-path", False),
    ("dot-dot with a parameter", GET % b"/rollout/k1/..;/k2/echo", 400, "unsafe-path", False),
    ("dot with a parameter", GET % b"/rollout/k1/.;x/echo", 400, "unsafe-path", False),
    ("encoded dot-dot", GET % b"/rollout/k1/%2e%2E/k2", 400, "unsafe-path", False),
    ("double-encoded dot-dot", GET % b"/rollout/k1/%252e%252e/k2", 400, "unsafe-path", False),
    ("overlong UTF-8 dot", GET % b"/rollout/k1/%c0%ae%c0%ae/k2", 400, "unsafe-path", False),
    ("%u escape", GET % b"/rollout/k1/%u002e%u002e/k2", 400, "unsafe-path", False),
    ("encoded slash", GET % b"/rollout/k1%2f..%2fk2", 400, "unsafe-path", False),
    ("encoded backslash", GET % b"/rollout/k1/..%5ck2", 400, "unsafe-path", False),
    ("encoded NUL", GET % b"/rollout/k1/a%00b", 400, "unsafe-path", False),
    ("a lone percent", GET % b"/rollout/k1/100%", 400, "unsafe-path", False),
    ("outside the prefix", GET % b"/rollout/k2/echo", 403, "path-not-allowed", False),
    ("prefix look-alike", GET % b"/rollout/k10/echo", 403, "path-not-allowed", False),
    ("absolute form", b"GET http://evil.example/rollout/k1 HTTP/1.1\r\nHost: evil\r\n\r\n",
     400, "absolute-target-refused", False),
    ("CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil\r\n\r\n", 405,
     "connect-refused", False),
    ("20-hex-digit chunk size", POST + b"Transfer-Encoding: chunked\r\n\r\n"
     b"FFFFFFFFFFFFFFFFFFFF\r\nabc", 400, "bad-request", False),
    ("21-hex-digit chunk size", POST + b"Transfer-Encoding: chunked\r\n\r\n"
     b"FFFFFFFFFFFFFFFFFFFFF\r\nabc", 400, "bad-request", False),
    ("Content-Length and chunked", POST + b"Content-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, "bad-request", False),
    ("two Content-Lengths", POST + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     400, "bad-request", False),
    ("bad chunk size", POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad-request",
     False),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "bad-request", False),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad-request",
     False),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_bytes", "status", "cause", "forwarded"), CASES,
                         ids=[case[0] for case in CASES])  # fmt: skip
async def test_hostile_requests(
    name: str, request_bytes: bytes, status: int, cause: str | None, forwarded: bool
) -> None:
    async with bridge(policy=POLICY) as b:
        with anyio.fail_after(10):  # a clear answer at once, never a timeout
            answer = await raw(b.url, request_bytes)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
        if cause is not None:
            assert b"x-bridge-error: " + cause.encode() in answer.lower(), answer[:400]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == cause
        assert bool(b.upstream.requests) == forwarded, b.upstream.requests
        if forwarded:
            (seen,) = b.upstream.requests
            assert seen["body_size"] == 5  # the body reached the upstream as framed
            assert upstream_saw(seen, "content-length") == ["5"]
        # ... and the bridge still serves a normal request.
        async with httpx.AsyncClient(base_url=b.url) as client:
            assert (await client.get("/rollout/k1/json")).json() == {"ok": True}


async def test_routing_headers_from_the_agent_never_reach_the_upstream() -> None:
    sent = {name: "10.9.8.7" for name in ROUTING}
    async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
        seen = (await client.get("/echo", headers=sent)).json()
        for name in ROUTING:
            assert upstream_saw(seen, name) == [], name
        assert upstream_saw(seen, "via") == ["1.1 bridgeproto"]


def test_routing_headers_pass_when_the_upstream_says_so() -> None:
    head = bp.RequestHead(1, b"GET", b"/", [(b"x-forwarded-for", b"1.2.3.4")])
    default = upstream_request(head, Upstream("127.0.0.1", 80))
    allowed = upstream_request(head, Upstream("127.0.0.1", 80, pass_routing_headers=True))
    assert isinstance(default, h11.Request) and isinstance(allowed, h11.Request)
    assert b"x-forwarded-for" not in dict(default.headers.raw_items())
    assert dict(allowed.headers.raw_items())[b"x-forwarded-for"] == b"1.2.3.4"


# ------------------------------------------------------------------ slow agents


async def test_a_connection_that_sends_nothing_is_closed_quietly() -> None:
    async with bridge(limits=AgentLimits(head_timeout=0.3)) as b:
        with anyio.fail_after(5):
            assert await raw(b.url, b"") == b""


@pytest.mark.parametrize("trickle", [False, True], ids=["half a head", "a byte at a time"])
async def test_a_head_that_never_completes_gets_408(trickle: bool) -> None:
    head = b"GET /json HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000
    async with bridge(limits=AgentLimits(head_timeout=0.5)) as b:
        host, port = b.url.removeprefix("http://").split(":")
        answer = b""
        with anyio.fail_after(5):  # the timeout bounds the head, however it trickles
            async with (
                await anyio.connect_tcp(host, int(port)) as stream,
                anyio.create_task_group() as tg,
            ):

                async def send() -> None:
                    pieces = [head[i : i + 1] for i in range(len(head))] if trickle else [head]
                    for piece in pieces:
                        await stream.send(piece)
                        await anyio.sleep(0.01)

                tg.start_soon(send)
                while True:
                    try:
                        answer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
                tg.cancel_scope.cancel()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"x-bridge-error: request-timeout" in answer.lower()
        assert b.upstream.requests == []


async def test_a_request_body_that_stops_coming_times_out() -> None:
    async with bridge(sandbox_config=bp.Config(idle_timeout=0.3)) as b:
        with anyio.fail_after(5):
            answer = await raw(b.url, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                      b"\r\nonly this")  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 504 "), answer
        assert b"x-bridge-error: idle-timeout" in answer.lower()


async def test_connections_waiting_for_a_head_are_bounded() -> None:
    limits = AgentLimits(max_pending_connections=3, head_timeout=30)
    async with bridge(limits=limits) as b:
        host, port = b.url.removeprefix("http://").split(":")
        idle = [await anyio.connect_tcp(host, int(port)) for _ in range(3)]
        await anyio.wait_all_tasks_blocked()  # the sandbox side took them; waits for heads
        refused = await raw(b.url, b"")
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"x-bridge-error: too-many-connections" in refused.lower()
        for stream in idle:
            await stream.aclose()
        async with httpx.AsyncClient(base_url=b.url) as client:
            with anyio.fail_after(5):
                while True:  # the sandbox side notices the closes as they come
                    response = await client.get("/json")
                    if response.status_code == 200:
                        break


async def test_heads_waiting_for_their_small_body_are_held_within_the_pending_bound() -> None:
    """A head whose small body has not come is held by the sandbox side
    (nothing crosses) and counts as a connection waiting for a request: an
    agent that opens many and never sends their bodies holds no more than
    the bound. Each request crosses, and is answered, once its body comes."""
    limits = AgentLimits(max_pending_connections=3, head_timeout=30)
    async with bridge(limits=limits) as b:
        host, port = b.url.removeprefix("http://").split(":")
        held = [await anyio.connect_tcp(host, int(port)) for _ in range(3)]
        for stream in held:
            await stream.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        await anyio.wait_all_tasks_blocked()  # the sandbox side read the heads; waits for bodies
        refused = await raw(b.url, b"")
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"x-bridge-error: too-many-connections" in refused.lower()
        assert b.upstream.requests == []  # no head crossed without its body
        for stream in held:
            await stream.send(b"hello")
            answer = b""
            with anyio.fail_after(5):
                while not _complete(answer):
                    answer += await stream.receive()
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body_size"] == 5
            await stream.aclose()


async def test_an_upstream_body_that_stops_coming_after_its_head_times_out() -> None:
    """The host side waits for a small answer body before the head crosses,
    for no longer than the exchange's idle timeout: an upstream that sends a
    head and then nothing gets the agent a 504 in time, not a hang."""
    async with bridge(host_config=bp.Config(idle_timeout=0.3)) as b:
        with anyio.fail_after(5):
            answer = await raw(b.url, GET % b"/late-body?after=30")
        assert answer.startswith(b"HTTP/1.1 504 "), answer
        assert b"x-bridge-error: idle-timeout" in answer.lower()


# ------------------------------------------------------------------ bursts and queues


async def test_requests_past_the_exchange_limit_queue_and_are_all_served() -> None:
    host_config = bp.Config(limits=bp.Limits(max_exchanges=4))
    async with bridge(host_config=host_config) as b:
        statuses: list[int] = []

        async def one(client: httpx.AsyncClient) -> None:
            statuses.append((await client.get("/slow?n=2")).status_code)

        limits = httpx.Limits(max_connections=200)
        async with (
            httpx.AsyncClient(base_url=b.url, limits=limits, timeout=30) as client,
            anyio.create_task_group() as tg,
        ):
            for _ in range(60):
                tg.start_soon(one, client)
        assert statuses == [200] * 60


async def test_the_queue_is_bounded_and_so_is_the_wait() -> None:
    host_config = bp.Config(limits=bp.Limits(max_exchanges=1))
    limits = AgentLimits(max_queued=1, queue_timeout=0.5)
    async with bridge(host_config=host_config, limits=limits) as b:
        answers: list[httpx.Response] = []
        three = anyio.Event()

        async def one(client: httpx.AsyncClient, path: str) -> None:
            answers.append(await client.get(path))
            if len(answers) == 3:
                three.set()

        async with (
            httpx.AsyncClient(base_url=b.url, timeout=30) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(one, client, "/hang")
            await b.upstream.hang_started.wait()
            for _ in range(3):
                tg.start_soon(one, client, "/json")
            with anyio.fail_after(0.5 + 1):  # the queue timeout, and a stated 1 s margin
                await three.wait()  # two refused at once, one after the queue timeout
            tg.cancel_scope.cancel()  # the hanging one
        busy = [r for r in answers if r.status_code == 503]
        assert len(busy) == 3, [(r.status_code, r.text) for r in answers]
        reasons = sorted(r.json()["error"]["message"] for r in busy)
        assert sum("already wait for a free exchange" in m for m in reasons) == 2
        assert sum("no exchange came free within 0.5 s" in m for m in reasons) == 1
        assert {r.headers["x-bridge-error"] for r in busy} == {"bridge-busy"}


async def test_queued_agents_get_answers_when_the_session_ends() -> None:
    host_config = bp.Config(limits=bp.Limits(max_exchanges=1), shutdown_grace=0.3)
    async with bridge(host_config=host_config) as b:
        answers: list[httpx.Response] = []

        async def one(client: httpx.AsyncClient, path: str) -> None:
            answers.append(await client.get(path))

        async with (
            httpx.AsyncClient(base_url=b.url, timeout=30) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(one, client, "/hang")
            await b.upstream.hang_started.wait()
            tg.start_soon(one, client, "/json")
            await anyio.wait_all_tasks_blocked()  # queued behind the hanging one
            with anyio.fail_after(5):
                await b.session.close()
        assert [r.status_code for r in answers] == [503, 503], [r.text for r in answers]
        assert {r.headers["x-bridge-error"] for r in answers} == {"shutting-down"}


@pytest.mark.parametrize("pause", [0.5, 3.5])
async def test_a_slow_reader_gets_its_answer_after_the_session_ends_for_up_to_2_s(
    pause: float,
) -> None:
    """docs/adapters.md, ``run_sandbox_side``: when the session ends, agents
    still waiting get their answers (up to 2 s) first. The whole response has
    crossed the bridge, so the session can end; the agent reads it only
    ``pause`` s later, through a small receive buffer: after 0.5 s it gets it
    whole; after 3.5 s the sandbox side has gone (at 2 s) and it gets part."""
    import functools
    import socket
    import threading
    import time

    from bridgeproto_adapters.host_side import run_host_side
    from bridgeproto_adapters.sandbox_side import run_sandbox_side
    from bridgeproto_adapters.settings import SandboxSettings
    from bridgeproto_adapters.streams import memory_stream_pair
    from upstream import pattern_bytes, running_upstream

    # More than the kernel buffers hold (up to 4 MiB each way on loopback), and
    # under the exchange's window: all of it crosses the bridge at once.
    size = 12 << 20
    config = bp.Config(limits=bp.Limits(initial_window=16 << 20, session_window=32 << 20))
    session_id = os.urandom(bp.SESSION_ID_BYTES)
    sandbox_end, host_end = memory_stream_pair()
    ended = anyio.Event()
    got: list[bytes] = []

    async def sandbox_side(*, task_status: Any) -> None:
        settings = SandboxSettings(config=config, listen=("127.0.0.1", 0))
        await run_sandbox_side(sandbox_end, session_id, settings, task_status=task_status)
        ended.set()

    async with running_upstream() as upstream, anyio.create_task_group() as tg:
        host, port = await tg.start(sandbox_side)
        session = await tg.start(
            functools.partial(run_host_side, host_end, session_id,
                              Upstream("127.0.0.1", upstream.port), config=config)
        )  # fmt: skip
        asked = anyio.Event()
        token = anyio.lowlevel.current_token()

        def slow_reader() -> None:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((host, port))
                sock.sendall(f"GET /bytes?size={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                anyio.from_thread.run_sync(asked.set, token=token)
                time.sleep(pause)  # a slow reader: this is the behaviour under test
                answer = bytearray()
                while chunk := sock.recv(1 << 16):
                    answer += chunk
                got.append(bytes(answer))

        reader = threading.Thread(target=slow_reader)
        reader.start()
        with anyio.fail_after(10):
            await asked.wait()
            # The whole answer has crossed when the upstream has served the
            # request and the host's exchange is over (a busy machine can take
            # a while); it is then stuck at the agent's buffer.
            while not upstream.requests or session.conn.open_exchanges:
                await anyio.sleep(0.005)
            await session.close()  # nothing is in flight on the wire: it ends at once
        closed = anyio.current_time()
        with anyio.fail_after(2 + 1):  # the 2 s, and a stated 1 s margin
            await ended.wait()
        waited = anyio.current_time() - closed
        await anyio.to_thread.run_sync(reader.join)
        tg.cancel_scope.cancel()
    (answer,) = got
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    if pause < 2:
        assert body == pattern_bytes(size)
        assert waited < pause + 1, waited  # as long as the reader took, no longer
    else:
        assert 0 < len(body) < size and body == pattern_bytes(len(body))
        assert 2 <= waited < 2 + 1, waited


# ------------------------------------------------------------------ failures


async def test_the_bridge_going_down_is_502_bridge_down() -> None:
    async with bridge() as b, httpx.AsyncClient(base_url=b.url, timeout=30) as client:
        answers: list[httpx.Response] = []

        async def waiting() -> None:
            answers.append(await client.get("/hang"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            await b.upstream.hang_started.wait()
            await b.session.stream.aclose()  # the link dies under the host side
        (answer,) = answers
        assert answer.status_code == 502
        assert answer.headers["x-bridge-error"] == "bridge-down"
        assert answer.json()["error"]["message"].startswith("the bridge is down: ")


async def test_an_upstream_that_closes_before_answering_is_502_upstream_failed() -> None:
    async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
        response = await client.post("/close", content=b"payload")
        assert response.status_code == 502
        assert response.headers["x-bridge-error"] == "upstream-failed"
        assert "before answering" in response.json()["error"]["message"]
        assert (await client.get("/json")).status_code == 200


async def test_the_upstream_pool_keeps_at_most_max_idle_connections() -> None:
    async with bridge(options=HostOptions(max_idle_connections=1)) as b:
        async with httpx.AsyncClient(base_url=b.url) as client:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(client.get, "/slow?n=2")
            assert b.upstream.connections == 3  # three at once need three
            for _ in range(3):
                assert (await client.get("/json")).status_code == 200
        assert b.upstream.connections == 3  # the one kept idle served them all
        host_side = b.session.on_request.__self__  # type: ignore[union-attr]
        assert len(host_side.pool._idle) == 1


def test_a_hostile_peer_that_never_acknowledges_cannot_pin_memory() -> None:
    """A sandbox side that keeps asking and never acknowledges: the host's
    retained replies stay bounded, and the session fails saying why."""
    config = bp.Config(max_unacknowledged_bytes=1 << 20)
    host = bp.Connection(bp.Role.HOST, bytes(16), config)
    host.start(0.0)
    hello = bp.Hello(bp.PROTOCOL_VERSION, bp.Role.SANDBOX, bytes(16), bp.Limits())
    host.receive_data(encode_frame(hello, 0), 0.0)
    peak, seq = 0, 0
    for exchange_id in range(1, 20_000, 2):
        seq += 1
        head = bp.RequestHead(exchange_id, b"GET", b"/", [])
        host.receive_data(encode_frame(head, seq), 1.0)
        if host.failure:
            break
        host.send_response(exchange_id, 200, b"OK", [(b"x-pad", b"p" * 1000)], 1.0)
        host.send_end(exchange_id, 1.0)
        seq += 1
        host.receive_data(encode_frame(bp.EndOfBody(exchange_id), seq), 1.0)
        host.data_to_send()
        peak = max(peak, host.retained_bytes)
        if host.failure:
            break
    failed = host.failure
    assert failed is not None and failed.code is bp.ErrorCode.PEER_UNRESPONSIVE
    assert "unacknowledged" in failed.reason and str(1 << 20) in failed.reason
    assert peak <= (1 << 20) + 4096
    assert host.retained_bytes == 0  # what will never be acknowledged is let go


# ------------------------------------------------------------------ environment


async def test_host_command_sandboxes_pass_no_host_environment(monkeypatch: Any) -> None:
    from bridgeproto_adapters.sandboxes import CommandPrefixSandbox
    from sandbox_kinds import make_sandbox

    monkeypatch.setenv("BRIDGEPROTO_HOST_ONLY", "host-secret")
    kinds = ["local", "unshare", *(["bwrap"] if os.path.exists("/usr/bin/bwrap") else [])]
    for kind in kinds:
        async with make_sandbox(kind) as sandbox:
            seen = await sandbox.run(["env"], env={"GIVEN": "yes"})
            assert b"host-secret" not in seen.stdout, kind
            assert b"GIVEN=yes" in seen.stdout, kind
    # A prefix that runs on this host (as `docker exec` would run elsewhere).
    prefixed = await CommandPrefixSandbox(["env"]).run(["env"])
    assert b"host-secret" not in prefixed.stdout
