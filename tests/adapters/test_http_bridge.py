"""HTTP through the whole bridge: real sockets, a real upstream, real clients,
over an in-memory transport and over a real subprocess's stdio, on asyncio
and on trio."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import openai
import pytest

import bridgeproto as bp
from bridge import bridge
from bridgeproto.http import HttpPolicy, Upstream
from bridgeproto_adapters.host_side import HostOptions
from upstream import pattern_bytes

pytestmark = pytest.mark.anyio
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["memory", "process", "mailbox"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def raw_exchange(url: str, data: bytes, *, until: bytes = b"") -> bytes:
    """Send raw bytes to the sandbox side; read until ``until`` appears or the close."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(data)
            while not (until and until in received):
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    return received


# ------------------------------------------------------------------ basics


async def test_every_method(transport: str) -> None:
    async with bridge(transport=transport) as b, httpx.AsyncClient(base_url=b.url) as client:
        for method in ALL_METHODS:
            response = await client.request(
                method, "/echo", content=b"x" if method in {"POST", "PUT", "PATCH"} else None
            )
            assert response.status_code == 200, method
            if method == "HEAD":
                assert response.content == b""
                assert int(response.headers["content-length"]) > 0
            else:
                assert response.json()["method"] == method
        assert [r["method"] for r in b.upstream.requests] == ALL_METHODS
        # One pooled keep-alive connection to the upstream served them all.
        assert b.upstream.connections == 1


async def test_content_length_and_chunked_request_bodies(transport: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield b"part %d;" % i

    async with bridge(transport=transport) as b, httpx.AsyncClient(base_url=b.url) as client:
        fixed = (await client.post("/echo", content=b"0123456789")).json()
        assert fixed["body_size"] == 10
        assert ["content-length", "10"] in [[n.lower(), v] for n, v in fixed["headers"]]
        streamed = (await client.post("/echo", content=chunks())).json()
        expected = b"".join(b"part %d;" % i for i in range(5))
        assert streamed["body_sha256"] == hashlib.sha256(expected).hexdigest()
        assert ["transfer-encoding", "chunked"] in [
            [n.lower(), v.lower()] for n, v in streamed["headers"]
        ]


async def test_chunked_and_streamed_responses() -> None:
    async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
        response = await client.get("/chunked?n=4")
        assert response.text == "".join(f"chunk {i}\n" for i in range(4))
        slow = await client.get("/slow?n=3")
        assert slow.text == "chunk 0\nchunk 1\nchunk 2\n"


async def test_expect_100_continue() -> None:
    async with bridge() as b:
        host, port = b.url.removeprefix("http://").split(":")
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\n\r\n"
                )
                interim = await stream.receive()
                assert interim.startswith(b"HTTP/1.1 100 ")  # before any body was sent
                await stream.send(b"hello")
                answer = b""
                while b'"body_size": 5' not in answer:
                    answer += await stream.receive()
        headers = dict(b.upstream.requests[0]["headers"])  # type: ignore[arg-type]
        assert "expect" not in {k.lower() for k in headers}


async def test_keep_alive_and_pipelining_on_one_agent_connection() -> None:
    async with bridge() as b:
        # Four requests in one write, the last asking to close: four answers
        # in order on the one connection, then the close.
        requests = b"".join(
            b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n%s\r\n"
            % (i, b"Connection: close\r\n" * (i == 3))
            for i in range(4)
        )
        answer = await raw_exchange(b.url, requests)
        assert answer.count(b"HTTP/1.1 200 ") == 4
        targets = [t.decode() for t in re.findall(rb'"target": "([^"]+)"', answer)]
        assert targets == [f"/echo?n={i}" for i in range(4)]
        assert [r["target"] for r in b.upstream.requests] == targets


async def test_concurrent_agents() -> None:
    async with bridge() as b, httpx.AsyncClient(base_url=b.url) as client:
        results: list[int] = []

        async def one(i: int) -> None:
            response = await client.post("/echo", content=b"x" * i)
            results.append(response.json()["body_size"])

        async with anyio.create_task_group() as tg:
            for i in range(32):
                tg.start_soon(one, i)
        assert sorted(results) == list(range(32))


# ------------------------------------------------------------------ streaming


async def test_sse_events_arrive_one_by_one_with_keepalives(transport: str) -> None:
    """Each event reaches the client before the upstream may write the next:
    the upstream waits for a token the test sends only after the client saw
    the previous event, so any buffering on the way would deadlock (and time out)."""
    async with bridge(transport=transport) as b, httpx.AsyncClient(base_url=b.url) as client:
        seen: list[str] = []
        with anyio.fail_after(10):
            async with client.stream("GET", "/sse?n=3&gated=1") as response:
                assert response.headers["content-type"] == "text/event-stream"
                await b.upstream.sse_gate_send.send(None)
                async for line in response.aiter_lines():
                    if line:
                        seen.append(line)
                    if line.startswith("data: ") and len(seen) < 6:
                        await b.upstream.sse_gate_send.send(None)
        assert seen == [
            ": keepalive",
            "data: event 0",
            ": keepalive",
            "data: event 1",
            ": keepalive",
            "data: event 2",
        ]


async def read_peak_rss_kib(pid: int) -> int:
    status = await anyio.Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1])


async def test_64_mib_each_way_with_bounded_memory() -> None:
    size = 64 << 20

    async def upload() -> AsyncIterator[bytes]:
        block = pattern_bytes(256 << 10)
        for _ in range(size // len(block)):
            yield block

    async with (
        bridge(transport="process") as b,
        httpx.AsyncClient(base_url=b.url, timeout=60) as client,
    ):
        assert b.process is not None
        before = await read_peak_rss_kib(b.process.pid)
        sent = (await client.post("/echo", content=upload())).json()
        assert sent["body_size"] == size
        assert (
            sent["body_sha256"]
            == hashlib.sha256(pattern_bytes(256 << 10) * (size // (256 << 10))).hexdigest()
        )
        digest, received = hashlib.sha256(), 0
        async with client.stream("GET", f"/bytes?size={size}") as response:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                received += len(chunk)
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()
        peak = await read_peak_rss_kib(b.process.pid)
    # The sandbox side holds at most its windows (16 MiB session) plus what
    # awaits acknowledgement, never the 64 MiB bodies.
    assert peak - before < 48 << 10, f"sandbox side grew by {(peak - before) >> 10} MiB"


# ------------------------------------------------------------------ real clients


async def test_openai_sdk_chat_completions(transport: str) -> None:
    async with bridge(transport=transport) as b:
        client = openai.OpenAI(base_url=b.url + "/v1", api_key="placeholder", max_retries=0)

        def calls() -> tuple[str, list[str], list[str]]:
            whole = client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "hi"}]
            )
            stream = client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
            models = [m.id for m in client.models.list()]
            return whole.choices[0].message.content or "", pieces, models

        content, pieces, models = await anyio.to_thread.run_sync(calls)
        client.close()
    assert content == "Hello, world!"
    assert pieces == ["Hello", ",", " world", "!"]
    assert models == ["test-model"]


# ------------------------------------------------------------------ failures


async def test_upstream_down_is_502() -> None:
    # A port bound and never listened on refuses connections, and no other
    # test running beside this one can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        async with (
            bridge(upstream_port=held.getsockname()[1]) as b,
            httpx.AsyncClient(base_url=b.url) as client,
        ):
            response = await client.get("/json")
        assert response.status_code == 502
        assert response.headers["x-bridge-error"] == "upstream-unreachable"
        assert "cannot connect to the upstream" in response.json()["error"]["message"]


async def test_upstream_breaking_mid_body_aborts_the_agent_connection(transport: str) -> None:
    async with bridge(transport=transport) as b, httpx.AsyncClient(base_url=b.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/break")  # never a body that looks complete
        assert (await client.get("/json")).status_code == 200  # the bridge carries on


async def test_agent_hanging_up_cancels_the_upstream_request(transport: str) -> None:
    async with bridge(transport=transport) as b:
        host, port = b.url.removeprefix("http://").split(":")
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp(host, int(port))
            await stream.send(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            await b.upstream.hang_started.wait()
            await stream.aclose()
            await b.upstream.hang_closed.wait()  # the upstream saw its request cancelled


async def test_agent_hanging_up_mid_stream_cancels_the_upstream(transport: str) -> None:
    async with bridge(transport=transport) as b, httpx.AsyncClient(base_url=b.url) as client:
        with anyio.fail_after(10):
            async with client.stream("GET", "/forever") as response:
                async for line in response.aiter_lines():
                    if line == "data: tick":
                        break
            await b.upstream.forever_closed.wait()


@pytest.mark.parametrize(
    ("settings", "cause"),
    [
        ({"host_config": bp.Config(idle_timeout=0.3)}, "idle-timeout"),
        ({"sandbox_config": bp.Config(exchange_timeout=0.3)}, "deadline-exceeded"),
        ({"options": HostOptions(response_timeout=0.3)}, "upstream-timeout"),
    ],
    ids=["idle", "total deadline", "response head"],
)
async def test_timeouts_before_the_response_head_are_504(
    settings: dict[str, Any], cause: str
) -> None:
    async with bridge(**settings) as b, httpx.AsyncClient(base_url=b.url) as client:
        response = await client.get("/hang")
        assert response.status_code == 504
        assert response.headers["x-bridge-error"] == cause


async def test_connect_timeout_is_502() -> None:
    # A listener that never accepts, with its backlog full: connects hang.
    blocked = socket.socket()
    blocked.bind(("127.0.0.1", 0))
    blocked.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(blocked.getsockname())
        fillers.append(filler)
    try:
        async with (
            bridge(options=HostOptions(connect_timeout=0.3)) as b,
            httpx.AsyncClient(base_url=b.url) as client,
        ):
            host_side = b.session.on_request.__self__  # type: ignore[union-attr]
            host_side.pool.port = blocked.getsockname()[1]
            response = await client.get("/json")
            assert response.status_code == 502
            assert response.headers["x-bridge-error"] == "upstream-unreachable"
            assert "took longer than 0.3 s" in response.json()["error"]["message"]
    finally:
        for sock in [*fillers, blocked]:
            sock.close()


# ------------------------------------------------------------------ policy


async def test_refusals_are_answered_in_the_sandbox() -> None:
    policy = HttpPolicy(
        allowed_prefixes=["/rollout/k1"], max_header_bytes=8192, max_body_bytes=1000
    )
    async with bridge(policy=policy) as b:
        cases = [
            (
                b"GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
                400,
                b"absolute-target-refused",
            ),
            (
                b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example\r\n\r\n",
                405,
                b"connect-refused",
            ),
            (b"GET /rollout/k2/v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 403, b"path-not-allowed"),
            (b"GET /rollout/k1/../k2/v1 HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"unsafe-path"),
            (
                b"GET /rollout/k1/json HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
                431,
                b"headers-too-large",
            ),
            (
                b"POST /rollout/k1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
                413,
                b"body-too-large",
            ),
            (b"GARBAGE\r\n\r\n", 400, b"bad-request"),
        ]
        for request, status, cause in cases:
            answer = await raw_exchange(b.url, request)
            assert answer.startswith(b"HTTP/1.1 %d " % status), (request[:40], answer[:80])
            assert b"x-bridge-error: " + cause in answer.lower()
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"]["code"] == cause.decode() and body["error"]["message"]
        assert b.upstream.requests == []  # none of it reached the host

        # A chunked body that grows past the limit is stopped too.
        async def big() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 100

        async with httpx.AsyncClient(base_url=b.url) as client:
            response = await client.post("/rollout/k1/echo", content=big())
            assert response.status_code == 413
            ok = await client.get("/rollout/k1/json")
            assert ok.status_code == 200


async def test_a_response_past_the_body_limit_is_cut_and_nothing_else_suffers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The core refuses to send a body past ``max_body_bytes``: the host side
    resets the exchange (the agent, already past the head, sees the
    connection cut), logs no failure of its own, and goes on serving."""
    config = bp.Config(max_body_bytes=1000)
    async with (
        bridge(host_config=config, sandbox_config=config) as b,
        httpx.AsyncClient(base_url=b.url) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/bytes?size=5000")
        assert (await client.get("/json")).status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_header_hygiene_and_credentials_stay_on_the_host(transport: str) -> None:
    secret = (b"authorization", b"Bearer real-secret")
    async with (
        bridge(transport=transport, added_headers=(secret,)) as b,
        httpx.AsyncClient(base_url=b.url) as client,
    ):
        response = await client.get(
            "/echo",
            headers={
                "Authorization": "Bearer placeholder",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "must not cross",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "X-Kept": "yes",
            },
        )
        seen = {n.lower(): v for n, v in response.json()["headers"]}
        assert seen["authorization"] == "Bearer real-secret"
        assert seen["host"] == f"127.0.0.1:{b.upstream.port}"
        assert seen["x-kept"] == "yes"
        assert "1.1 bridgeproto" in seen["via"]
        for name in ("x-hop", "keep-alive", "te", "connection"):
            assert name not in seen, name
        assert "bridgeproto" in response.headers["via"]


async def test_unix_socket_listener(tmp_path: object) -> None:
    from bridgeproto_adapters.host_side import run_host_side
    from bridgeproto_adapters.sandbox_side import run_sandbox_side
    from bridgeproto_adapters.settings import SandboxSettings
    from bridgeproto_adapters.streams import memory_stream_pair
    from upstream import running_upstream

    path = os.path.join(str(tmp_path), "bridge.sock")
    session_id = os.urandom(16)
    async with running_upstream() as upstream, anyio.create_task_group() as tg:
        a, c = memory_stream_pair()
        await tg.start(
            lambda task_status: run_sandbox_side(
                a, session_id, SandboxSettings(listen=path), task_status=task_status
            )
        )
        session = await tg.start(
            lambda task_status: run_host_side(
                c, session_id, Upstream("127.0.0.1", upstream.port), task_status=task_status
            )
        )
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            assert (await client.get("/json")).json() == {"ok": True}
        await session.close()


# ------------------------------------------------------------------ shutdown


async def test_a_drain_with_an_answer_in_flight_ends_cleanly_on_both_sides() -> None:
    """A stop while an answer streams: the sandbox side finishes once it is
    out, and still sends the host its last acknowledgement before letting the
    channel go (cut, the host's session waited for it, saw the channel end,
    looked for another and failed). Over pipes, as into a real sandbox; the
    cut was a race, hence the rounds."""
    for _ in range(12):
        async with bridge(transport="pipes") as b, httpx.AsyncClient(base_url=b.url) as client:
            params = {"n": "2", "gated": "1"}
            async with (
                client.stream("GET", "/sse", params=params) as response,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(b.session.close)
                for _ in range(2):
                    b.upstream.sse_gate_send.send_nowait(None)
                body = await response.aread()
            assert body.count(b"data: event") == 2
            assert b.session.failure is None, b.session.failure
            assert b.session.conn.state is bp.SessionState.CLOSED
            assert b.session.stats.reconnects == 0


async def test_shutdown_with_requests_in_flight_is_bounded(transport: str) -> None:
    config = bp.Config(shutdown_grace=0.5)
    fds_before = len(os.listdir("/proc/self/fd"))
    async with (
        bridge(transport=transport, host_config=config) as b,
        httpx.AsyncClient(base_url=b.url) as client,
    ):
        results: list[httpx.Response | Exception] = []

        async def waiting() -> None:
            try:
                results.append(await client.get("/hang"))
            except httpx.HTTPError as exc:
                results.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            await b.upstream.hang_started.wait()
            # Documented: close returns within the grace period plus 1 s; the
            # last second here is a margin for a loaded machine.
            with anyio.fail_after(config.shutdown_grace + 1 + 1):
                await b.session.close()
        (result,) = results
        assert isinstance(result, httpx.Response) and result.status_code == 503
        assert result.headers["x-bridge-error"] == "shutting-down"
    await anyio.sleep(0)
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # no socket or pipe left open
