"""What a request costs in hand-offs: writes on the channel and to the
upstream, counted on real sockets through a whole bridge (in-memory
channels, so each side's writes can be counted at the host's end), and
the session tasks a request wakes over pipes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections import Counter

import anyio
import anyio.abc
import httpx
import pytest

import bridge as bridge_module
import bridgeproto as bp
from bridge import bridge
from bridgeproto.wire import FrameDecoder
from bridgeproto_adapters import host_side
from bridgeproto_adapters.channel_writer import ChannelWriter
from bridgeproto_adapters.errors import found_in
from bridgeproto_adapters.launch import open_bridge
from bridgeproto_adapters.session import Session
from bridgeproto_adapters.session_stats import SessionStats
from bridgeproto_adapters.streams import FdStream
from bridgeproto_adapters.transports import live
from processes import is_python, minor_faults, started_by
from sandbox_kinds import make_sandbox, need_bwrap
from upstream import pattern_bytes, running_upstream

pytestmark = pytest.mark.anyio
REQUESTS = 20


def records_in(write: bytes) -> list[bp.Record]:
    """The records of the frames in one write."""
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(write)
    records = []
    while isinstance(frame := decoder.next_frame(), bp.wire.Frame):
        records.append(frame.record)
    return records


def only_acks(write: bytes) -> bool:
    """Whether a write carries nothing but acknowledgements."""
    return all(isinstance(record, bp.Ack) for record in records_in(write))


class CountingStream(anyio.abc.ByteStream):
    """The host's end of a channel, counting each side's writes, and those
    that carry only acknowledgements: a send is the host's, a receive the
    sandbox side's (an in-memory channel hands over each write whole)."""

    def __init__(self, inner: anyio.abc.ByteStream, counts: dict[str, int]) -> None:
        self.inner = inner
        self.counts = counts

    def count(self, side: str, write: bytes) -> None:
        self.counts[side] += 1
        if only_acks(write):
            self.counts[side + " acks alone"] += 1

    async def send(self, item: bytes) -> None:
        self.count("host", item)
        await self.inner.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        self.count("sandbox", data)
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_acknowledgements_ride_with_the_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acknowledgement of a request rides with its answer, and that of
    the answer with the next request, instead of each waking the peer with a
    write of its own. (Held up to 5 s here, so that a loaded machine's slow
    client cannot outwait the hold; the bridge's own is 10 ms.)"""
    monkeypatch.setattr(ChannelWriter, "ack_delay", 5.0)
    counts = dict.fromkeys(("host", "sandbox", "host acks alone", "sandbox acks alone"), 0)
    async with (
        bridge(transport="channels", wrap=lambda s: CountingStream(s, counts)) as b,
        httpx.AsyncClient(base_url=b.url) as client,
    ):
        for _ in range(3):  # the connections are open and the pool warm
            assert (await client.post("/echo", content=b"x" * 100)).status_code == 200
        before = dict(counts)
        for _ in range(REQUESTS):
            assert (await client.post("/echo", content=b"x" * 100)).status_code == 200
        alone = {side: counts[side] - before[side] for side in counts if "alone" in side}
    # The last answer's acknowledgement goes alone (nothing followed it),
    # and one more of margin: an acknowledgement written at once, as each
    # side did before, makes 20 writes of acknowledgements alone.
    assert alone["host acks alone"] <= 2, counts
    assert alone["sandbox acks alone"] <= 2, counts


class CountingUpstreamConnection(host_side.UpstreamConnection):
    """The host side's connection to the upstream, counting its writes."""

    writes = 0

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        super().__init__(stream)
        inner_send = stream.send

        async def send(item: bytes) -> None:
            CountingUpstreamConnection.writes += 1
            await inner_send(item)

        self.stream.send = send  # type: ignore[method-assign]


async def test_a_small_request_reaches_the_upstream_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Head, body and end of a small request that crossed together leave
    for the upstream in one write, not one for the head and one for the body."""
    monkeypatch.setattr(host_side, "UpstreamConnection", CountingUpstreamConnection)
    body = b"x" * 100
    request = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + body
    async with bridge() as b:
        host, port = b.url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as agent:
            for number in range(REQUESTS):
                if number == 1:  # the first opened the upstream connection
                    CountingUpstreamConnection.writes = 0
                await agent.send(request)  # one write: it crosses as one
                assert b'"body_size": 100' in await read_answer(agent)
    assert CountingUpstreamConnection.writes == REQUESTS - 1


class RecordingStream(CountingStream):
    """The host's end of a channel, keeping the kinds of record each of a
    side's writes carried (``writes["sandbox"]``, ``writes["host"]``)."""

    def __init__(self, inner: anyio.abc.ByteStream, writes: dict[str, list[set[str]]]) -> None:
        super().__init__(inner, {})
        self.writes = writes

    def count(self, side: str, write: bytes) -> None:
        kinds = {type(record).__name__ for record in records_in(write)}
        self.writes.setdefault(side, []).append(kinds)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_small_body_written_apart_from_its_head_crosses_with_it() -> None:
    """Peers write a head and its body apart (clients such as http.client
    and httpx, and servers), and the head is often read alone. A small body
    is waited for, so that head, body and end cross in one write: requests
    on the sandbox side, answers on the host (before: the head crossed first,
    and the body in a write of its own; on the sandbox side, carried by a
    task started for it)."""
    writes: dict[str, list[set[str]]] = {}
    body = b"x" * 100
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
    async with bridge(transport="channels", wrap=lambda s: RecordingStream(s, writes)) as b:
        host, port = b.url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as agent:
            for _ in range(5):
                await agent.send(head)
                await anyio.sleep(0.05)  # the body comes a moment after the head
                await agent.send(body)
                assert b'"body_size": 100' in await read_answer(agent)
        requests = [kinds for kinds in writes["sandbox"] if kinds & {"RequestHead", "Data"}]
        assert len(requests) == 5, requests
        assert all({"RequestHead", "Data", "EndOfBody"} <= kinds for kinds in requests)
        async with httpx.AsyncClient(base_url=b.url) as client:
            for _ in range(5):  # the upstream writes the body a moment after the head
                assert (await client.get("/late-body")).json() == {"late": True}
    answers = [kinds for kinds in writes["host"] if kinds & {"ResponseHead", "Data"}]
    assert len(answers) == 10, answers
    assert all({"ResponseHead", "Data", "EndOfBody"} <= kinds for kinds in answers)


async def read_answer(stream: anyio.abc.ByteStream) -> bytes:
    """One whole answer with a Content-Length, read off a keep-alive connection."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await stream.receive()
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += await stream.receive()
    return body


TASK_CALLS: Counter[str] = Counter()


class CountedFdStream(FdStream):
    """A channel's end over pipes, counting the reads and writes a task makes
    on it (the session's reader and writer tasks; callbacks that read and
    write its descriptors directly are not counted)."""

    async def receive(self, max_bytes: int = 1 << 20, deadline: float | None = None) -> bytes:
        TASK_CALLS["receive"] += 1
        return await super().receive(max_bytes, deadline)

    async def send(self, item: bytes) -> None:
        TASK_CALLS["send"] += 1
        await super().send(item)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_over_descriptors_a_request_wakes_no_session_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On asyncio, over descriptors of its own, a session reads its channel
    in the loop's callback and writes it from another: small requests wake
    neither side's reader or writer task (before, each request woke each
    side's reader once and its writer twice). The answers are whole."""
    monkeypatch.setattr(bridge_module, "FdStream", CountedFdStream)
    async with bridge(transport="pipes") as b, httpx.AsyncClient(base_url=b.url) as client:
        for _ in range(3):  # the connections are open and the pool warm
            assert (await client.post("/echo", content=b"x" * 100)).status_code == 200
        TASK_CALLS.clear()
        for number in range(REQUESTS):
            answer = await client.post("/echo", content=b"%d" % number)
            assert answer.json()["body_size"] == len(b"%d" % number)
        calls = dict(TASK_CALLS)
    assert calls == {}, calls


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("where", ["reading", "writing"])
async def test_an_error_in_a_channel_callback_ends_the_session_loudly(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A bug met in the loop's callback that feeds the core, or in the one
    that writes the channel, is raised by the session, as it was by its
    reading or writing task, rather than logged by the loop while the
    session goes on without the chunk (or stalls, its writer never woken)."""
    armed = False  # set once the bridge is up: the request's bytes meet the bug
    if where == "reading":
        received = Session._received

        def failing(session: Session, data: bytes) -> bool:
            if armed and session.conn.role is bp.Role.HOST:
                raise RuntimeError("a bug in handling the channel's bytes")
            return received(session, data)

        monkeypatch.setattr(Session, "_received", failing)
    else:
        next_piece = ChannelWriter._next_piece

        def failing_piece(writer: ChannelWriter) -> bytes:
            if armed and writer.conn.role is bp.Role.HOST and writer.conn.unsent_bytes:
                raise RuntimeError("a bug in writing the channel")
            return next_piece(writer)

        monkeypatch.setattr(ChannelWriter, "_next_piece", failing_piece)
    with pytest.raises(BaseException) as raised:  # (a group, found below)
        async with bridge(transport="pipes") as b, httpx.AsyncClient(base_url=b.url) as client:
            armed = True
            with anyio.fail_after(10):
                await client.post("/echo", content=b"x")
    assert found_in(raised.value, RuntimeError) is not None, raised.value


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_full_channel_hands_its_bytes_to_the_writer_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pipes of one page: a callback's write finds the channel full, the
    writer task sends the rest as the peer reads, and every byte of a large
    upload and a large answer arrives, in order."""
    handed: list[int] = []
    hand_over = ChannelWriter._hand_over

    def counted(writer: ChannelWriter) -> None:
        handed.append(len(writer._leftover))
        hand_over(writer)

    monkeypatch.setattr(ChannelWriter, "_hand_over", counted)

    class SmallPipes(FdStream):
        def __init__(self, read_fd: int, write_fd: int, *, owned: bool = False) -> None:
            super().__init__(read_fd, write_fd, owned=owned)
            for fd in (read_fd, write_fd):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)

    monkeypatch.setattr(bridge_module, "FdStream", SmallPipes)
    body = pattern_bytes(3 << 20)
    async with bridge(transport="pipes") as b, httpx.AsyncClient(base_url=b.url) as client:
        sent = await client.post("/echo", content=body)
        assert sent.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        got = await client.get("/bytes", params={"size": len(body)})
        assert got.content == body
    assert any(handed), "no write found the channel full"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_new_channel_never_gets_the_last_ones_unsent_tail() -> None:
    """What a callback's write left for the task when the channel broke is
    a frame's tail: the next channel starts with the session's own frames
    (they are all sent again on resuming), not with those bytes."""
    conn = bp.Connection(bp.Role.HOST, b"s" * bp.SESSION_ID_BYTES, bp.Config())
    conn.start(0.0)
    writer = ChannelWriter(conn, SessionStats(), anyio.Event(), lambda reason: None)
    writer._leftover = b"the tail of a frame from the last channel"
    unused, (read_fd, write_fd) = os.pipe(), os.pipe()
    os.set_blocking(read_fd, False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run, FdStream(unused[0], write_fd, owned=True))
        decoder = FrameDecoder(1 << 20)
        while not isinstance(frame := decoder.next_frame(), bp.wire.Frame):
            await anyio.sleep(0.01)
            with contextlib.suppress(BlockingIOError):
                decoder.receive_data(os.read(read_fd, 1 << 16))
        assert isinstance(frame.record, bp.Hello)
        tg.cancel_scope.cancel()
    for fd in (unused[1], read_fd):
        os.close(fd)


FETCH = """
import http.client, os, sys
url = os.environ["BRIDGEPROTO_URL"].removeprefix("http://")
connection = http.client.HTTPConnection(url.split("/")[0], timeout=20)
for _ in range(int(sys.argv[1])):
    connection.request("POST", "/rollout/k/echo", body=b"x" * 100)
    answer = connection.getresponse()
    answer.read()
    print(answer.status)
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_real_bridges_host_takes_each_request_in_a_chunk_or_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through a real bwrap sandbox (the host's channel a process that says
    READY before the session reads it), the host's session takes a small
    request's bytes in a chunk or two, as they were written, whatever that
    first read asked for. (The first channel is started after the sandbox
    side here, so that the host waits for its READY, as under load.)"""

    async def not_early(channels: live.ProcessChannels, wait: float) -> None:
        pass

    monkeypatch.setattr(live.ProcessChannels, "start_early", not_early)
    taken: list[int] = []
    received = Session._received

    def counted(session: Session, data: bytes) -> bool:
        taken.append(len(data))
        return received(session, data)

    monkeypatch.setattr(Session, "_received", counted)
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, upstream.url + "/rollout/k") as opened,
    ):
        before = len(taken)
        with anyio.fail_after(60):
            fetched = await sandbox.run(["python3", "-c", FETCH, str(REQUESTS)], env=opened.env)
        assert fetched.stdout.split() == [b"200"] * REQUESTS, fetched
        chunks = len(taken) - before
    assert chunks <= 3 * REQUESTS, taken[before:]


UPLOAD = """
import http.client, os, sys
from urllib.parse import urlsplit
url = urlsplit(os.environ['BRIDGEPROTO_URL'])
size = int(sys.argv[1]) << 20
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
conn.putrequest('POST', url.path + '/echo')
conn.putheader('content-length', str(size))
conn.endheaders()
chunk = bytes(range(256)) * 4096
for _ in range(size // len(chunk)):
    conn.send(chunk)
print(conn.getresponse().status)
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_sandbox_side_moves_bulk_in_memory_it_already_has() -> None:
    """A bulk upload through a real daemon in a bwrap sandbox: the sandbox
    side's allocator keeps the buffers it frees for the next ones, so the
    transfer maps (and faults in) hardly any fresh memory (without it, 120
    to 210 page faults a MiB, each a few microseconds on a virtual machine;
    the allocator's setting is glibc's, which the sandboxes here use)."""
    need_bwrap()
    mib = 64
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, upstream.url + "/rollout/k") as opened,
    ):
        daemons = started_by(sandbox.holder_pid, lambda argv: is_python(argv, b"--daemon"))
        assert len(daemons) == 1, daemons
        with anyio.fail_after(60):
            warm = await sandbox.run(["python3", "-c", UPLOAD, "8"], env=opened.env)
            assert warm.stdout.split() == [b"200"], warm
            before = minor_faults(daemons[0])
            sent = await sandbox.run(["python3", "-c", UPLOAD, str(mib)], env=opened.env)
            assert sent.stdout.split() == [b"200"], sent
            faults = minor_faults(daemons[0]) - before
    assert faults < 16 * mib, f"{faults / mib:.1f} page faults a MiB"
