"""``check_channels``: the conformance check of a transport (see ``conformance``).

It runs a real bridge over the transport into a real sandbox, with an
upstream of its own on the host and agents inside (the sandbox's Python,
standard library only), and holds the transport to what a session needs of
its channels:

- **cut**: a channel closed while a streamed response crosses it is
  replaced, and the response arrives whole;
- **damage**: a byte flipped in a channel's bytes costs that channel only,
  and a POST across it reaches the upstream exactly once;
- **resume**: after each, the session goes on on the next channel
  (``Session.stats.reconnects`` counts them);
- **final failure**: once the sandbox side is gone, the host end says so
  (``NoChannel(final=True)``) instead of trying until the resume deadline.

Each check raises ``AssertionError`` naming what the transport got wrong.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import h11
from exceptiongroup import BaseExceptionGroup

import bridgeproto as bp

from .errors import found_in
from .h11io import H11Stream
from .launch import Bridge, open_bridge
from .sandbox_start import reap_daemon
from .sandboxes import SandboxClient, check_result
from .session import Session
from .transports import Channels, NoChannel, registry
from .transports.transport import Transport

# Pings often, so that a channel left holding part of a damaged frame is
# given up quickly; the peer itself is not given up for much longer.
_PING = 0.2
_CHUNKS = 20
_BODY = bytes(range(256)) * 1024  # 256 KiB: a POST that spans many frames
_AGENT = """
import hashlib, os, sys, urllib.request
url = os.environ["BRIDGEPROTO_URL"]
if sys.argv[1] == "stream":
    with urllib.request.urlopen(url + "/stream", timeout=120) as answer:
        sys.stdout.write(answer.read().decode())
else:
    body = bytes(range(256)) * 1024
    request = urllib.request.Request(url + "/echo", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        sys.stdout.write(answer.read().decode())
"""


@attrs.define
class _Upstream:
    """The check's upstream: a streamed answer it paces, and an echo of POSTs."""

    port: int = 0
    posts: int = 0
    chunks_sent: int = 0
    chunk_sent: anyio.Event = attrs.field(factory=anyio.Event)
    more: anyio.Event = attrs.field(factory=anyio.Event)  # set: send the rest

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        http = H11Stream(stream, h11.SERVER)
        async with stream:
            try:
                request = await http.next_event()
                if not isinstance(request, h11.Request):
                    return
                body = b""
                while not isinstance(event := await http.next_event(), h11.EndOfMessage):
                    if not isinstance(event, h11.Data):
                        return
                    body += event.data
                if urlsplit(request.target.decode()).path.endswith("/echo"):
                    self.posts += 1
                    digest = hashlib.sha256(body).hexdigest().encode()
                    length = [(b"content-length", b"%d" % len(digest))]
                    await http.send(h11.Response(status_code=200, headers=length))
                    await http.send(h11.Data(data=digest))
                else:
                    await http.send(h11.Response(status_code=200, headers=[]))
                    for i in range(_CHUNKS):
                        if i == 5:  # the check cuts the channel here, then lets the rest go
                            await self.more.wait()
                        await http.send(h11.Data(data=b"chunk %d\n" % i))
                        self.chunks_sent += 1
                        self.chunk_sent.set()
                        self.chunk_sent = anyio.Event()
                await http.send(h11.EndOfMessage())
            except (anyio.BrokenResourceError, OSError, h11.ProtocolError):
                return


class _Damaging(anyio.abc.ByteStream):
    """The host's end of a channel, which flips one byte of a large read when
    armed (the agent's POST body, on its way out of the sandbox)."""

    def __init__(self, inner: anyio.abc.ByteStream, watch: _WatchedChannels) -> None:
        self.inner = inner
        self.watch = watch

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        if self.watch.armed and len(data) >= 4096:
            self.watch.armed = False
            self.watch.damaged += 1
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1 :]
        return data

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _WatchedChannels:
    """The transport's host channels, seen by the check: the final word, and damage."""

    def __init__(self, inner: Channels) -> None:
        self.inner = inner
        self.armed = False
        self.damaged = 0
        self.final: NoChannel | None = None

    async def next_channel(self) -> anyio.abc.ByteStream:
        try:
            stream = await self.inner.next_channel()
        except NoChannel as exc:
            if exc.final:
                self.final = exc
            raise
        return _Damaging(stream, self)


async def _agent(bridge: Bridge, python: str, env: Mapping[str, str] | None, what: str) -> str:
    result = check_result(
        await bridge.sandbox.run(
            [python, "-c", _AGENT, what], env={**(env or {}), **bridge.env}, timeout=120
        )
    )
    said = result.stderr.decode(errors="replace")[-500:]
    assert result.exit_code == 0, f"the agent's {what} request failed inside: {said}"
    return result.stdout.decode(errors="replace")


async def _cut(session: Session) -> None:
    assert session.stream is not None, "the session has no channel to cut"
    await session.stream.aclose()


async def _reconnects(session: Session, count: int) -> None:
    while session.stats.reconnects < count:
        await anyio.sleep(0.01)


async def check_cut(
    bridge: Bridge, upstream: _Upstream, python: str, env: Mapping[str, str] | None
) -> None:
    session = bridge.session
    before = session.stats.reconnects
    answers: list[str] = []
    async with anyio.create_task_group() as tg:

        async def agent() -> None:
            answers.append(await _agent(bridge, python, env, "stream"))

        tg.start_soon(agent)
        while upstream.chunks_sent < 5:
            await upstream.chunk_sent.wait()
        await _cut(session)  # with the response part way across
        with anyio.fail_after(60):
            await _reconnects(session, before + 1)
        upstream.more.set()
    expected = "".join(f"chunk {i}\n" for i in range(_CHUNKS))
    assert answers == [expected], f"a streamed response across a cut arrived as {answers!r}"


async def check_damage(
    bridge: Bridge,
    watch: _WatchedChannels,
    upstream: _Upstream,
    python: str,
    env: Mapping[str, str] | None,
) -> None:
    session = bridge.session
    before, posts = session.stats.reconnects, upstream.posts
    watch.armed = True
    said = await _agent(bridge, python, env, "post")
    assert watch.damaged == 1, "the POST's body never crossed the channel in a large read"
    assert said == hashlib.sha256(_BODY).hexdigest(), f"a POST across damage was answered {said!r}"
    times = upstream.posts - posts
    assert times == 1, f"a POST across damage reached the upstream {times} times, not once"
    assert session.stats.reconnects > before, "damaged bytes did not cost their channel"
    assert session.failure is None, f"damage ended the session: {session.failure}"


async def check_final_failure(bridge: Bridge, watch: _WatchedChannels) -> None:
    session = bridge.session
    await reap_daemon(bridge.sandbox, session.conn.session_id, patience=0)  # the sandbox side dies
    if session.stream is not None:
        await _cut(session)
    with anyio.fail_after(session.resume_timeout + 5):
        await session.finished.wait()
    assert watch.final is not None, (
        "with the sandbox side gone, the host end never said so (NoChannel(final=True));"
        f" the session ended with: {session.failure}"
    )


async def check_channels(
    sandbox: SandboxClient,
    transport: str | Transport = "auto",
    *,
    python: str = "python3",
    env: Mapping[str, str] | None = None,
    listen: tuple[str, int] = ("127.0.0.1", 13131),
    resume_timeout: float = 30.0,
) -> None:
    """Hold ``transport`` (a name of the registry, or the object) to what a
    session needs of its channels, over a real bridge into ``sandbox``."""
    try:
        await _check_channels(sandbox, transport, python, env, listen, resume_timeout)
    except BaseExceptionGroup as group:  # (the bridge's task groups): the check's own word
        failed = found_in(group, AssertionError)
        if failed is None:
            raise
        raise failed from None


async def _check_channels(
    sandbox: SandboxClient,
    transport: str | Transport,
    python: str,
    env: Mapping[str, str] | None,
    listen: tuple[str, int],
    resume_timeout: float,
) -> None:
    chosen = registry.choose(transport, live_processes=getattr(sandbox, "live_processes", True))
    config = bp.Config(limits=chosen.limits, ping_interval=_PING, peer_timeout=20)
    upstream = _Upstream()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    upstream.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(listener.serve, upstream.serve))
        async with open_bridge(
            sandbox, f"http://127.0.0.1:{upstream.port}", transport=chosen, config=config,
            python=python, env=env, listen=listen, resume_timeout=resume_timeout,
        ) as bridge:  # fmt: skip
            watch = _WatchedChannels(bridge.session.channels)
            bridge.session.channels = watch
            await check_cut(bridge, upstream, python, env)
            await check_damage(bridge, watch, upstream, python, env)
            await check_final_failure(bridge, watch)
        tg.cancel_scope.cancel()
