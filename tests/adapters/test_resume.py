"""Channels that break: cut, damaged or refused, over in-memory channels
between the real sandbox side and the real host side. Every exchange in flight
must come through whole and exactly once, and agents must notice nothing but
a pause; when no channel comes back, they must get a clear answer."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridgeproto as bp
from bridge import bridge
from bridgeproto.http import Upstream
from bridgeproto_adapters.launch import open_bridge
from bridgeproto_adapters.streams import Descriptor
from cuts import ChannelWatch, bytes_in_flight
from processes import argv, descendants, is_python
from sandbox_kinds import make_sandbox, need_bwrap
from upstream import pattern_bytes, running_upstream

pytestmark = pytest.mark.anyio
MiB = 1 << 20
# Pings often, so a channel that lost bytes in the middle of a frame is given
# up quickly; the peer is not given up for much longer.
QUICK = bp.Config(ping_interval=0.2, peer_timeout=20)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Flaky(anyio.abc.ByteStream):
    """The host's end of one channel, which a ``Plan`` may cut or damage."""

    def __init__(self, inner: anyio.abc.ByteStream, plan: Plan) -> None:
        self.inner = inner
        self.plan = plan
        self.moved = 0
        self.cut_at, self.damage = plan.next_channel()

    async def _count(self, data: bytes) -> None:
        self.moved += len(data)
        if self.cut_at is not None and self.moved >= self.cut_at:
            self.cut_at = None  # once: a send and a receive may both cross the mark
            self.plan.cuts += 1
            await self.inner.aclose()  # the channel dies, as a killed process's pipes do

    async def send(self, item: bytes) -> None:
        if self.damage is not None and len(item) > 8:
            item, self.damage = self.plan.damaged(item, self.damage), None
        await self.inner.send(item)
        await self._count(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        await self._count(data)
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Plan:
    """What happens to each new channel: cut after some bytes, or one damaged
    write (a flipped, dropped or doubled byte), for the first ``channels`` ones."""

    def __init__(self, seed: int, *, cuts: int = 0, damage: str | None = None) -> None:
        self.random = random.Random(seed)
        self.cuts_left = cuts
        self.damage_kind = damage
        self.cuts = 0

    def next_channel(self) -> tuple[int | None, str | None]:
        if self.damage_kind is not None:
            damage, self.damage_kind = self.damage_kind, None
            return None, damage
        if self.cuts_left:
            self.cuts_left -= 1
            return self.random.randrange(1, 4 * MiB), None
        return None, None

    def damaged(self, data: bytes, kind: str) -> bytes:
        at = self.random.randrange(len(data))
        if kind == "flip":
            return data[:at] + bytes([data[at] ^ (1 << self.random.randrange(8))]) + data[at + 1 :]
        if kind == "drop":
            return data[:at] + data[at + 1 :]
        return data[:at] + data[at : at + 1] + data[at:]  # doubled


async def test_exchanges_survive_channels_cut_at_random() -> None:
    plan = Plan(7, cuts=10)
    async with (
        bridge(transport="channels", wrap=lambda s: Flaky(s, plan),
               host_config=QUICK, sandbox_config=QUICK) as b,
        httpx.AsyncClient(base_url=b.url, timeout=120, limits=httpx.Limits(max_connections=100))
        as client,
    ):  # fmt: skip
        results: dict[str, Any] = {}
        upload = pattern_bytes(64 * MiB)

        async def up() -> None:
            results["up"] = (await client.post("/echo", content=upload)).json()

        async def down() -> None:
            response = await client.get(f"/bytes?size={64 * MiB}")
            results["down"] = hashlib.sha256(response.content).hexdigest()

        async def sse() -> None:
            events = []
            async with client.stream("GET", "/sse?n=20&gated=1") as response:
                b.upstream.sse_gate_send.send_nowait(None)
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line)
                        b.upstream.sse_gate_send.send_nowait(None)  # the next only now
            results["sse"] = events

        async def post(i: int) -> None:
            answer = await client.post("/echo", content=f"post {i}".encode())
            results[f"post {i}"] = answer.json()["body_sha256"]

        async with anyio.create_task_group() as tg:
            for job in (up, down, sse):
                tg.start_soon(job)
            for i in range(50):
                tg.start_soon(post, i)
    assert plan.cuts == 10 and b.connector is not None and b.connector.opened == 11
    assert results["up"]["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert results["down"] == hashlib.sha256(pattern_bytes(64 * MiB)).hexdigest()
    assert results["sse"] == [f"data: event {i}" for i in range(20)]
    for i in range(50):
        assert results[f"post {i}"] == hashlib.sha256(f"post {i}".encode()).hexdigest()
    posts = [r for r in b.upstream.requests if r["method"] == "POST" and r["body_size"] < 100]
    assert len(posts) == 50  # each reached the upstream exactly once
    assert b.session.stats.reconnects == 10


async def test_damaged_channels_lose_nothing() -> None:
    """100 trials, each with one flipped, dropped or doubled byte in one write."""
    lost = wrong = 0
    for trial in range(100):
        plan = Plan(trial, damage=("flip", "drop", "double")[trial % 3])
        with anyio.fail_after(30):  # no hang
            async with (
                bridge(transport="channels", wrap=lambda s, p=plan: Flaky(s, p),
                       host_config=QUICK, sandbox_config=QUICK) as b,
                httpx.AsyncClient(base_url=b.url, timeout=20) as client,
            ):  # fmt: skip
                body = random.Random(trial).randbytes(random.Random(trial).randrange(1, 200_000))
                for _ in range(3):
                    try:
                        answer = await client.post("/echo", content=body)
                    except httpx.HTTPError:
                        lost += 1
                        continue
                    if answer.json().get("body_sha256") != hashlib.sha256(body).hexdigest():
                        wrong += 1
                assert b.session.failure is None
    assert (lost, wrong) == (0, 0)


async def test_no_channel_within_the_resume_deadline_is_502_bridge_down() -> None:
    class Refusing:
        def __init__(self, inner: Any) -> None:
            self.inner, self.calls = inner, 0

        async def next_channel(self) -> anyio.abc.ByteStream:
            self.calls += 1
            if self.calls > 1:
                raise OSError("the provider refuses the call")
            return await self.inner.next_channel()  # type: ignore[no-any-return]

    async with (
        bridge(transport="channels", resume_timeout=0.5) as b,
        httpx.AsyncClient(base_url=b.url, timeout=30) as client,
    ):
        assert b.connector is not None
        b.session.channels = refusing = Refusing(b.connector)
        refusing.calls = 1
        answers: list[httpx.Response] = []

        async def waiting() -> None:
            answers.append(await client.get("/hang"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting)
            await b.upstream.hang_started.wait()
            assert b.connector.current is not None
            await b.connector.current.aclose()  # the channel dies for good
        (answer,) = answers
        assert answer.status_code == 502 and answer.headers["x-bridge-error"] == "bridge-down"
        assert b.session.failure is not None
        assert "within 0.5 s" in b.session.failure.reason
        assert "the provider refuses the call" in b.session.failure.reason


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["post", "get", "cut"]), st.integers(0, 300_000)),
        min_size=1,
        max_size=12,
    )
)
def test_any_sequence_of_requests_and_cuts(steps: list[tuple[str, int]]) -> None:
    """Requests, one after another or overlapping, with the channel cut between
    or during them: every answer whole, every POST upstream exactly once."""

    async def scenario() -> None:
        async with (
            bridge(transport="channels", host_config=QUICK, sandbox_config=QUICK) as b,
            httpx.AsyncClient(base_url=b.url, timeout=60) as client,
            anyio.create_task_group() as tg,
        ):
            assert b.connector is not None
            sent: list[bytes] = []

            async def post(body: bytes) -> None:
                answer = await client.post("/echo", content=body)
                assert answer.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

            async def get(size: int) -> None:
                answer = await client.get(f"/bytes?size={size}")
                assert answer.content == pattern_bytes(size)

            for index, (kind, size) in enumerate(steps):
                if kind == "cut":
                    if b.connector.current is not None:
                        await b.connector.current.aclose()
                elif kind == "post":
                    body = index.to_bytes(4, "big") * (size // 4 + 1)
                    sent.append(body)
                    tg.start_soon(post, body)
                else:
                    tg.start_soon(get, size)
                await anyio.sleep(0.01 * (size % 3))  # overlap some, not all
        posts = [r["body_sha256"] for r in b.upstream.requests if r["method"] == "POST"]
        assert sorted(posts) == sorted(hashlib.sha256(body).hexdigest() for body in sent)

    anyio.run(scenario)


# ------------------------------------------------------------------ real channel processes

AGENT = """
import hashlib, http.client, json, os, sys, threading
from urllib.parse import urlsplit
url = urlsplit(os.environ['BRIDGEPROTO_URL'])
results, MiB = {}, 1 << 20
PATTERN = bytes(range(256)) * 256

def call(method, path, body=None):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    conn.request(method, url.path + path, body=body)
    return conn, conn.getresponse()

def up():
    body = (PATTERN * (64 * MiB // len(PATTERN)))
    _, answer = call('POST', '/echo', body)
    results['up'] = json.loads(answer.read())['body_sha256'] == hashlib.sha256(body).hexdigest()

def down():
    _, answer = call('GET', f'/bytes?size={64 * MiB}')
    results['down'] = hashlib.sha256(answer.read()).hexdigest()

def sse():
    _, answer = call('GET', '/sse?n=20&gated=1')
    call('GET', '/gate')[1].read()
    events = []
    for line in answer:
        if line.startswith(b'data: '):
            events.append(line.strip().decode())
            call('GET', '/gate')[1].read()  # the next event only now
    results['sse'] = events

def post(i):
    _, answer = call('POST', '/echo', f'post {i}'.encode())
    results[f'post {i}'] = json.loads(answer.read())['body_sha256']

threads = [threading.Thread(target=f) for f in (up, down, sse)]
threads += [threading.Thread(target=post, args=(i,)) for i in range(50)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""


class Wrapped(anyio.abc.ByteStream):
    """A channel that hides its descriptors, so the session reads and writes
    it in its own tasks rather than in the loop's callbacks."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class WrappedChannels:
    """The session's source of channels, each wrapped."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def next_channel(self) -> anyio.abc.ByteStream:
        return Wrapped(await self.inner.next_channel())


async def body_bytes_moved(session: Any, mark: int) -> None:
    """Wait until ``mark`` more body bytes have crossed the session, either
    way (the session's counts, looked at every millisecond)."""
    start = session.stats.body_bytes_sent + session.stats.body_bytes_received
    while session.stats.body_bytes_sent + session.stats.body_bytes_received - start < mark:
        await anyio.sleep(0.001)


@pytest.mark.parametrize("host_channels", ["wrapped", "own descriptors"])
async def test_dropped_live_channels_lose_nothing(
    host_channels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live channels of a real offline sandbox dropped (as a provider
    drops an exec stream) after a random share of the traffic and with bytes
    in flight, and their processes killed now and then for good measure,
    during bulk transfers both ways, an SSE stream the agent paces, and 50 POSTs.
    The host's channels are either wrapped (the session reads and writes them
    in its tasks) or left as they come (the loop's callbacks read and write
    their descriptors, as a bridge runs by default)."""
    need_bwrap()
    drops = 10 if host_channels == "wrapped" else 20
    chance = random.Random(11)
    in_flight: list[int] = []
    callbacks = {"feed": 0, "write_now": 0}  # the host's: the sandbox side runs elsewhere

    def counting(name: str) -> Any:
        method = getattr(Descriptor, name)

        def counted(self: Descriptor, *args: Any, **kwargs: Any) -> Any:
            callbacks[name] += args[0] is not None  # (feed(None) stops a feed)
            return method(self, *args, **kwargs)

        return counted

    for name in callbacks:
        monkeypatch.setattr(Descriptor, name, counting(name))
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, f"{upstream.url}/rollout/k") as bridge,
    ):
        session = bridge.session
        watch = ChannelWatch(session)
        if host_channels == "wrapped":  # from the second channel on
            session.channels = WrappedChannels(session.channels)
        agent = await sandbox.open_process(["python3", "-c", AGENT], env=bridge.env)
        with anyio.fail_after(120):
            for drop in range(drops):
                await watch.resumed(drop)
                await body_bytes_moved(session, chance.randrange(64 << 10, 4 * MiB))
                in_flight.append(await bytes_in_flight(session))
                current = bridge.channels.current
                assert current is not None
                for child in descendants(current.process._process.pid):
                    if is_python(argv(child), b"channel") and chance.random() < 0.5:
                        os.kill(child, signal.SIGKILL)  # harmless: it holds nothing
                await current.aclose()  # the stream drops
            output = b""
            while True:
                try:
                    output += await agent.stream.receive()
                except anyio.EndOfStream:
                    break
            await agent.stop()
            await watch.resumed(drops)  # the last one may still be under way
        reconnects = session.stats.reconnects
    results = json.loads(output)
    assert results["up"] is True
    assert results["down"] == hashlib.sha256(pattern_bytes(64 * MiB)).hexdigest()
    assert results["sse"] == [f"data: event {i}" for i in range(20)]
    for i in range(50):
        assert results[f"post {i}"] == hashlib.sha256(f"post {i}".encode()).hexdigest()
    posts = [r for r in upstream.requests if r["method"] == "POST" and r["body_size"] < 100]
    assert len(posts) == 50  # each exactly once
    assert reconnects == drops
    if host_channels == "wrapped":
        assert callbacks["feed"] == 1, callbacks  # the first channel's only
    else:  # each channel read and written by the loop's callbacks
        assert callbacks["feed"] >= drops + 1 and callbacks["write_now"] > drops, callbacks
    assert len(in_flight) == drops and all(in_flight), in_flight  # every cut lost bytes


async def test_the_example_transport_in_the_docs_works_and_resumes() -> None:
    """docs/adapters.md's TCP transport, run as written, with its channel cut
    in the middle of a streamed response."""
    import functools
    import pathlib

    from bridgeproto_adapters.host_side import run_host_side
    from bridgeproto_adapters.sandbox_side import run_sandbox_side
    from bridgeproto_adapters.settings import SandboxSettings
    from bridgeproto_adapters.transports import Acceptor

    quick_settings = SandboxSettings(config=QUICK, listen=("127.0.0.1", 0))
    text = (pathlib.Path(__file__).parents[2] / "docs" / "adapters.md").read_text()
    example = text.split("A complete transport of your own", 1)[1]
    code = example.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/adapters.md", "exec"), namespace)
    session_id = bytes(range(16))
    async with running_upstream() as upstream, anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        acceptor = Acceptor()
        tg.start_soon(namespace["accept_tcp"], acceptor, listener)
        address = await tg.start(
            functools.partial(run_sandbox_side, acceptor, session_id, quick_settings)
        )
        channels = namespace["TcpChannels"]("127.0.0.1", port)
        session = await tg.start(
            functools.partial(run_host_side, channels, session_id,
                              Upstream("127.0.0.1", upstream.port), config=QUICK)
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as client:
            async with client.stream("GET", "/slow?n=20") as response:
                lines = []
                async for line in response.aiter_lines():
                    lines.append(line)
                    if len(lines) == 5:
                        in_flight = await bytes_in_flight(session)  # the next chunk's
                        assert session.stream is not None
                        await session.stream.aclose()  # cut the TCP channel
            assert lines == [f"chunk {i}" for i in range(20)]
        assert session.stats.reconnects == 1 and in_flight > 0
        await session.close()
        tg.cancel_scope.cancel()


async def test_the_sandbox_side_resumes_on_the_newest_channel_not_one_the_host_left() -> None:
    """The host can give up on a channel before the sandbox side has taken
    it (the mailbox does when an epoch's first calls fail at once), and open
    another. The sandbox side must resume on the newest: one that took the
    abandoned channel would wait there, and every exchange would stall until
    the peer timeout."""
    import functools

    from bridgeproto_adapters.host_side import run_host_side
    from bridgeproto_adapters.sandbox_side import run_sandbox_side
    from bridgeproto_adapters.settings import SandboxSettings
    from bridgeproto_adapters.streams import memory_stream_pair
    from bridgeproto_adapters.transports import Acceptor

    quick_settings = SandboxSettings(config=QUICK, listen=("127.0.0.1", 0))

    acceptor = Acceptor()
    abandoned: list[anyio.abc.ByteStream] = []

    class AbandonsOneEachTime:
        """Each channel after the first comes after one the host gave up on
        at once, so two are offered before the sandbox side takes either."""

        async def next_channel(self) -> anyio.abc.ByteStream:
            if abandoned or self.opened:
                host_end, sandbox_end = memory_stream_pair()
                abandoned.append(host_end)
                await acceptor.offer(sandbox_end)
            self.opened = True
            host_end, sandbox_end = memory_stream_pair()
            await acceptor.offer(sandbox_end)
            return host_end

        opened = False

    session_id = bytes(range(16))
    async with running_upstream() as upstream, anyio.create_task_group() as tg:
        address = await tg.start(
            functools.partial(run_sandbox_side, acceptor, session_id, quick_settings)
        )
        session = await tg.start(
            functools.partial(run_host_side, AbandonsOneEachTime(), session_id,
                              Upstream("127.0.0.1", upstream.port), config=QUICK)
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as client:
            for i in range(3):
                assert session.stream is not None
                await session.stream.aclose()  # the channel breaks; the host opens two
                with anyio.fail_after(10):
                    response = await client.post("/echo", content=b"after break %d" % i)
                assert response.status_code == 200
                assert response.json()["body_size"] == len(b"after break %d" % i)
        assert session.stats.reconnects == 3
        assert len(abandoned) == 3
        for stream in abandoned:  # the sandbox side closed each it was not to use
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        await session.close()
        tg.cancel_scope.cancel()
