"""The hot path's own primitives, on asyncio and on trio: the flag and the
clock (wakeups.py), the hand-off from an agent's pump, an exchange's record
buffer, a descriptor's wait and its close, a socket read and written as a
descriptor, and the accept loop that hands agents' connections over as
such sockets."""

from __future__ import annotations

import fcntl
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
import pytest
from anyio.streams.stapled import StapledByteStream

import bridgeproto as bp
from bridgeproto.http import AgentConnection, AgentRequest, HttpPolicy
from bridgeproto_adapters.agents import Agent, Handoff, serve
from bridgeproto_adapters.exchange import EventBuffer
from bridgeproto_adapters.streams import Descriptor, SocketFdStream, connect_tcp
from bridgeproto_adapters.wakeups import Flag, clock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_flag_wakes_every_waiter_and_one_cancelled_leaves_the_others() -> None:
    flag = Flag()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await flag.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 1)
        tg.start_soon(waiter, 2)
        async with anyio.create_task_group() as inner:
            inner.start_soon(waiter, 3)
            await anyio.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()  # waiter 3 gives up
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        flag.set()
    assert sorted(woken) == [1, 2]
    assert flag._waiters == []  # the cancelled waiter left no future behind


async def test_a_set_flag_does_not_wait_and_a_cleared_one_does() -> None:
    flag = Flag()
    flag.set()
    assert flag.is_set() and await flag.wait() is True
    flag.clear()
    assert not flag.is_set()
    with anyio.move_on_after(0.05) as scope:
        await flag.wait()
    assert scope.cancelled_caught


async def test_a_flag_wait_with_a_timeout_says_whether_it_was_set() -> None:
    flag = Flag()
    started = anyio.current_time()
    assert await flag.wait(0.05) is False
    assert anyio.current_time() - started >= 0.04
    assert flag._waiters == []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _set_later(flag))
        assert await flag.wait(5) is True


async def _set_later(flag: Flag) -> None:
    await anyio.sleep(0.01)
    flag.set()


async def test_the_clock_is_the_loops() -> None:
    now = clock()
    assert math.isclose(now(), anyio.current_time(), abs_tol=0.01)


def test_outside_a_loop_the_clock_is_anyios() -> None:
    assert clock() is anyio.current_time


async def test_the_handoff_gives_chunks_in_order_then_the_end() -> None:
    handoff = Handoff()
    given: list[bool] = []

    async def pump() -> None:
        for chunk in (b"one", b"two", b""):
            given.append(await handoff.send(chunk))
        handoff.end()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        await anyio.wait_all_tasks_blocked()
        assert given == []  # the pump waits until its chunk is taken
        assert await handoff.receive() == b"one"
        assert await handoff.receive() == b"two"
        assert await handoff.receive() == b""
        with pytest.raises(anyio.EndOfStream):
            await handoff.receive()
    assert given == [True, True, True]


async def test_closing_the_handoff_stops_a_waiting_pump() -> None:
    handoff = Handoff()
    results: list[bool] = []

    async def pump() -> None:
        results.append(await handoff.send(b"unread"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        await anyio.wait_all_tasks_blocked()
        handoff.close()
    assert results == [False]
    assert await handoff.send(b"more") is False
    with pytest.raises(anyio.ClosedResourceError):
        await handoff.receive()


async def test_an_exchanges_records_wait_in_order_and_end_once_closed() -> None:
    buffer = EventBuffer()
    assert buffer.take() is None
    got: list[object] = []

    async def reader() -> None:
        while True:
            try:
                got.append(await buffer.receive())
            except anyio.EndOfStream:
                got.append("end")
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        assert got == []  # nothing buffered: the reader waits
        assert buffer.put(bp.Data(1, b"a"))
        await anyio.wait_all_tasks_blocked()
        assert got == [bp.Data(1, b"a")]
        assert buffer.put(bp.Data(1, b"b"))
        assert buffer.put(bp.EndOfBody(1))
        buffer.close()  # what is buffered is still read, then the end
    assert got == [bp.Data(1, b"a"), bp.Data(1, b"b"), bp.EndOfBody(1), "end"]
    assert buffer.put(bp.Data(1, b"late")) is False
    assert buffer.take() is None
    closed = EventBuffer()
    closed.put(bp.EndOfBody(3))
    closed.close()
    assert closed.take() == bp.EndOfBody(3)
    assert closed.take() is None
    with pytest.raises(anyio.EndOfStream):
        await closed.receive()


async def test_closing_a_descriptor_wakes_its_reader_then_closes_it() -> None:
    read_fd, write_fd = os.pipe()
    descriptor = Descriptor(read_fd)
    failures: list[BaseException] = []

    async def reader() -> None:
        try:
            await descriptor.read()
        except anyio.ClosedResourceError as exc:
            failures.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            descriptor.close()
            os.fstat(read_fd)  # still open: the waiter has not left yet
        assert len(failures) == 1
        with pytest.raises(OSError):
            os.fstat(read_fd)  # the last waiter to leave closed it
    finally:
        os.close(write_fd)


async def test_a_descriptor_reads_what_arrives_while_it_waits() -> None:
    read_fd, write_fd = os.pipe()
    descriptor = Descriptor(read_fd)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _write_later(write_fd, b"late"))
            assert await descriptor.read() == b"late"
        os.close(write_fd)
        write_fd = -1
        with pytest.raises(anyio.EndOfStream):
            await descriptor.read()
    finally:
        descriptor.close()
        if write_fd >= 0:
            os.close(write_fd)


@contextmanager
def _piped(kind: type[Descriptor] = Descriptor) -> Iterator[tuple[Descriptor, int]]:
    """A descriptor over a pipe's reading end, and the writing end."""
    read_fd, write_fd = os.pipe()
    descriptor = kind(read_fd)
    try:
        yield descriptor, write_fd
    finally:
        descriptor.close()
        os.close(write_fd)


async def _write_later(fd: int, data: bytes) -> None:
    await anyio.sleep(0.01)
    os.write(fd, data)


class _CountingDescriptor(Descriptor):
    woken = 0

    def _on_readable(self) -> None:
        self.woken += 1
        super()._on_readable()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_descriptor_keeps_watching_between_reads_and_holds_one_chunk() -> None:
    """The loop's callback stays registered from one read to the next and
    reads what arrives itself; while a chunk it read waits to be taken, it
    stops watching (it neither reads on nor wakes the loop every turn)."""
    with _piped(_CountingDescriptor) as (descriptor, write_fd):
        assert isinstance(descriptor, _CountingDescriptor)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write_later, write_fd, b"one")
            assert await descriptor.read() == b"one"
        assert descriptor._watching is not None  # kept for the next read
        woken = descriptor.woken
        os.write(write_fd, b"two")  # nobody reads: the callback takes it and holds it
        for _ in range(10):
            await anyio.sleep(0)
        assert (descriptor.woken, descriptor._watching is not None) == (woken + 1, True)
        os.write(write_fd, b"three")  # still held: the callback stops watching
        for _ in range(10):
            await anyio.sleep(0)
        assert (descriptor.woken, descriptor._watching) == (woken + 2, None)
        assert await descriptor.read() == b"two"
        assert await descriptor.read() == b"three"
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write_later, write_fd, b"four")
            assert await descriptor.read() == b"four"  # watched again
        assert descriptor._watching is not None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_fed_descriptor_hands_each_chunk_to_its_consumer_then_the_end() -> None:
    """``feed``: a chunk the read ahead already holds goes first, then each
    as it arrives, in the loop's callback; then b"" at the end."""
    read_fd, write_fd = os.pipe()
    descriptor = Descriptor(read_fd)
    got: list[bytes | Exception] = []

    async def until(count: int) -> None:
        while len(got) < count:
            await anyio.sleep(0)

    try:
        descriptor.watch_while_unread(lambda chunk: None)
        os.write(write_fd, b"held")
        while not descriptor.holds_unread:
            await anyio.sleep(0)
        descriptor.watch_while_unread(None)
        descriptor.feed(got.append)
        assert got == [b"held"]
        os.write(write_fd, b"one")
        await until(2)
        os.write(write_fd, b"two")
        await until(3)
        os.close(write_fd)
        await until(4)
        assert got == [b"held", b"one", b"two", b""]
        assert descriptor._watching is None  # the end: nothing more to watch for
    finally:
        descriptor.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_descriptor_fed_after_a_short_read_reads_what_arrives_whole() -> None:
    """A channel's first read asks for a few bytes (its READY word); fed
    afterwards, the descriptor reads each chunk whole, not a few bytes at
    a time."""
    with _piped() as (descriptor, write_fd):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write_later, write_fd, b"READY\n")
            assert await descriptor.read(6) == b"READY\n"
        got: list[bytes | Exception] = []
        descriptor.feed(got.append)
        os.write(write_fd, b"x" * 1000)
        while not got:
            await anyio.sleep(0)
        assert got == [b"x" * 1000]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_fed_descriptor_stops_when_told_and_hears_its_close() -> None:
    with _piped() as (descriptor, write_fd):
        got: list[bytes | Exception] = []
        descriptor.feed(got.append)
        descriptor.feed(None)
        os.write(write_fd, b"unheard")
        for _ in range(10):
            await anyio.sleep(0)
        assert got == []
        descriptor.feed(got.append)
        while not got:
            await anyio.sleep(0)
        descriptor.close()
        assert got[0] == b"unheard"
        assert [type(error) for error in got[1:]] == [anyio.ClosedResourceError]


async def test_write_now_writes_what_fits_and_leaves_the_rest_to_write() -> None:
    """Fewer bytes than given when the pipe is full, none once its reader is
    gone (``write`` then says so)."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    descriptor = Descriptor(write_fd)
    try:
        assert descriptor.write_now(b"x" * 10_000) == 4096
        assert descriptor.write_now(b"y") == 0
        assert os.read(read_fd, 10_000) == b"x" * 4096
        os.close(read_fd)
        assert descriptor.write_now(b"z") == 0
        with pytest.raises(anyio.BrokenResourceError):
            await descriptor.write(b"z")
    finally:
        descriptor.close()


async def test_a_descriptor_asks_for_little_until_reads_fill_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read asks for 64 KiB first, four times as much after one that
    filled it (up to the caller's size), and 64 KiB again after a small
    one: a megabyte asked for is a megabyte allocated."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    descriptor = Descriptor(read_fd)
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, size: int) -> bytes:
        if fd == read_fd:
            asked.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", read)
    try:
        os.write(write_fd, b"a" * 300)
        assert await descriptor.read() == b"a" * 300
        os.write(write_fd, b"b" * (1 << 20))
        got = b""
        while len(got) < 1 << 20:
            got += await descriptor.read()
        for small in (b"c", b"d"):
            os.write(write_fd, small * 300)
            assert await descriptor.read() == small * 300
    finally:
        descriptor.close()
        os.close(write_fd)
    assert asked == [1 << 16, 1 << 16, 1 << 18, 1 << 20, 1 << 20, 1 << 16]


async def test_a_closed_descriptors_number_serves_the_next_descriptor() -> None:
    """Closing a descriptor the loop still watches (between reads) stops the
    watch first: the next pipe given the same number is waited on afresh."""
    read_fd, write_fd = os.pipe()
    first = Descriptor(read_fd)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_write_later, write_fd, b"first")
        assert await first.read() == b"first"
    first.close()
    os.close(write_fd)
    again, write_again = os.pipe()
    assert again == read_fd  # the lowest free number: the same one
    second = Descriptor(again)
    try:
        with anyio.fail_after(5):  # a watch left on the old one loses the wake-up
            async with anyio.create_task_group() as tg:
                tg.start_soon(_write_later, write_again, b"second")
                assert await second.read() == b"second"
    finally:
        second.close()
        os.close(write_again)


async def test_a_read_with_a_deadline_times_out_and_loses_nothing() -> None:
    now = clock()
    with _piped() as (descriptor, write_fd):
        with pytest.raises(TimeoutError):
            await descriptor.read(deadline=now() + 0.05)
        os.write(write_fd, b"late")
        assert await descriptor.read(deadline=now() + 5) == b"late"
        os.write(write_fd, b"at once")  # a deadline already past: what is there is read
        assert await descriptor.read(deadline=now() - 1) == b"at once"


@pytest.mark.parametrize("kind", ["socket", "stream"])
async def test_an_agent_waits_for_its_next_request_until_a_deadline(
    kind: str, anyio_backend: str
) -> None:
    """Read directly (a socket as a descriptor, on asyncio) or through the
    pump (any other stream): nothing by the deadline is ``TimeoutError``,
    and a request sent after it is still read whole."""
    ours, theirs = socket.socketpair()
    socket_stream = SocketFdStream(ours)
    # (stapled: a stream that is not a descriptor stream, as an embedder's may be)
    stream = socket_stream if kind == "socket" else StapledByteStream(socket_stream, socket_stream)
    agent = Agent(AgentConnection(HttpPolicy()), stream)
    assert agent.pumped == (kind == "stream" or anyio_backend == "trio")
    now = clock()
    try:
        async with anyio.create_task_group() as tg:
            if agent.pumped:
                tg.start_soon(agent.pump)
            with pytest.raises(TimeoutError):
                await agent.next_event(now() + 0.05)
            theirs.sendall(b"GET /late HTTP/1.1\r\nhost: x\r\n\r\n")
            request = await agent.next_event(now() + 5)
            assert isinstance(request, AgentRequest) and request.target == b"/late"
            await agent.close()
    finally:
        theirs.close()


async def test_a_second_reader_of_one_descriptor_is_refused() -> None:
    with _piped() as (descriptor, write_fd):
        async with anyio.create_task_group() as tg:
            tg.start_soon(descriptor.read)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                await descriptor.read()
            os.write(write_fd, b"x")  # the first reader takes it and returns


async def test_a_socket_as_a_descriptor_half_closes_and_closes() -> None:
    ours, theirs = socket.socketpair()
    stream = SocketFdStream(ours)
    fd = stream.read_fd
    try:
        await stream.send(b"ping")
        await stream.send_eof()
        assert theirs.recv(100) == b"ping"
        assert theirs.recv(100) == b""  # our half is closed...
        theirs.sendall(b"still")
        assert await stream.receive() == b"still"  # ...theirs is not
        theirs.close()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
    finally:
        await stream.aclose()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(anyio.ClosedResourceError):
        await stream.send_eof()


@pytest.mark.parametrize("family", ["tcp", "unix"])
async def test_serve_hands_each_connection_to_the_handler(
    family: str, anyio_backend: str, tmp_path: os.PathLike[str]
) -> None:
    if family == "tcp":
        listener: anyio.abc.Listener[anyio.abc.SocketStream] = await anyio.create_tcp_listener(
            local_host="127.0.0.1"
        )
    else:
        listener = await anyio.create_unix_listener(os.path.join(tmp_path, "agents.sock"))
    address = listener.extra(anyio.abc.SocketAttribute.local_address)
    kinds: list[str] = []

    async def echo(stream: anyio.abc.ByteStream) -> None:
        kinds.append(type(stream).__name__)
        async with stream:
            await stream.send(await stream.receive())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(serve, listener, echo)
        for n in range(3):
            if family == "tcp":
                assert isinstance(address, tuple)
                client = await anyio.connect_tcp(*address[:2])
            else:
                client = await anyio.connect_unix(str(address))
            async with client:
                await client.send(b"hello %d" % n)
                assert await client.receive() == b"hello %d" % n
        tg.cancel_scope.cancel()
    if anyio_backend == "asyncio":
        assert kinds == ["SocketFdStream"] * 3
    else:  # anyio's own streams, as listener.serve gives them
        assert len(kinds) == 3 and "SocketFdStream" not in kinds


async def test_connect_tcp_reaches_a_listener_by_address_and_by_name(anyio_backend: str) -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def echo(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.send(await stream.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            for host in ("127.0.0.1", "localhost"):
                stream = await connect_tcp(host, port)
                async with stream:
                    expected = (
                        SocketFdStream if anyio_backend == "asyncio" else anyio.abc.SocketStream
                    )
                    assert isinstance(stream, expected)
                    await stream.send(host.encode())
                    assert await stream.receive() == host.encode()
            tg.cancel_scope.cancel()


async def test_connect_tcp_to_a_closed_port_says_refused(anyio_backend: str) -> None:
    """(anyio's own, on trio, says only that every attempt failed.)"""
    if anyio_backend != "asyncio":
        pytest.skip("the direct connect is asyncio's")

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError) as caught:
        await connect_tcp("127.0.0.1", port)
    assert isinstance(caught.value, ConnectionRefusedError), caught.value
