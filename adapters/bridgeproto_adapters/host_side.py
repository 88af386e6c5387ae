"""The host side: answer the sandbox's exchanges by forwarding them upstream.

Each request head names an outward route: 0 is the bridge's default upstream,
others were added with ``HostSide.add_route``, each with its own allowlist and
added headers; an unknown route is refused with ``FORBIDDEN``. The same class
serves inward exchanges on the sandbox side (``upstream_for`` then maps a
declared route to a loopback port inside), so both directions forward the
same way.

Each request head the sandbox sends is checked again (the sandbox is not
trusted), cleaned, given the upstream's Host and credentials, and sent over a
pooled keep-alive connection. Bodies stream both ways as they arrive. Upstream
failures are mapped to reset codes in one place (``_reset_for``): no
connection means ``UPSTREAM_UNREACHABLE`` (502), no response head in time
``UPSTREAM_TIMEOUT`` (504), a broken response ``UPSTREAM_FAILED`` (502).

When the upstream accepts an upgrade (101), its connection carries the new
protocol's bytes as they are: the exchange's request body up, its response
body down, and the end of either a half-close.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
from collections.abc import Callable, Iterator

import anyio
import anyio.abc
import attrs
import h11

import bridgeproto as bp
from bridgeproto.http import (
    PlainRequest,
    PlainResponse,
    Refusal,
    Upstream,
    clean_headers,
    h11_connection,
    plain_upstream_request,
    read_plain_response,
    upgrade_token,
    upstream_request,
)

from .errors import STREAM_ERRORS, ExchangeAborted, SessionEnded, UpstreamError
from .h11io import WHOLE_BODY_BYTES, H11Stream
from .session import Exchange, Session, Tracer, first_of
from .settings import RESUME_TIMEOUT
from .streams import SocketFdStream, connect_tcp
from .transports import Channels
from .wakeups import Flag

_REQUEST_TAIL_SECONDS = 5.0
_FIRST_WRITE = 256 << 10  # body bytes at most that go with the head (the rest: the upload task)
_UPSTREAM_IO_ERRORS = (*STREAM_ERRORS, h11.RemoteProtocolError, h11.LocalProtocolError)


@attrs.frozen
class HostOptions:
    """How the host side reaches its upstream.

    ``connect_timeout`` bounds opening a connection; ``response_timeout``
    bounds the wait for the response head (None: the exchange's own idle
    timeout applies); ``max_idle_connections`` caps the keep-alive pool.
    """

    connect_timeout: float = 10.0
    response_timeout: float | None = None
    max_idle_connections: int = 32


class UpstreamConnection(H11Stream):
    """One HTTP/1.1 client connection to the upstream.

    The common request (``plain_upstream_request``) is written here and the
    common response (``read_plain_response``) read here, h11 never seeing
    either (h11's building, writing and reading of them took about a
    quarter of the host's CPU a small request); any other request is
    h11's to write, any other response h11's to read, given all its bytes
    as they came (h11 first told of a request of the same method when it
    did not write it).
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__(stream, h11.CLIENT)
        # The stream when it is our descriptor (else anyio's, on trio): read and
        # closed directly.
        self.own_stream = stream if isinstance(stream, SocketFdStream) else None
        if self.own_stream is not None:
            self._fd = self.own_stream.read_fd
        else:  # anyio's (trio)
            self._fd = stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno()
        self._body_left: int | None = None  # of a response read here
        self._ahead = b""  # its bytes read and not yet taken
        self._sending: PlainRequest | None = None  # a request written here
        self._request_left = 0  # (its body bytes not yet sent)
        self._method = b""  # the request's, which the answer's framing depends on

    def request_head(self, request: PlainRequest | h11.Request) -> bytes:
        self._method = request.method
        if isinstance(request, PlainRequest):
            self._sending, self._request_left = request, request.length
            return request.head
        self._sending = None
        return self.h11.send(request) or b""

    def request_data(self, data: bytes) -> bytes:
        if self._sending is None:
            return self.h11.send(h11.Data(data=data)) or b""
        if len(data) > self._request_left:  # (a sandbox side that sends more than it said)
            raise h11.LocalProtocolError("the request body is longer than its Content-Length")
        self._request_left -= len(data)
        return data

    def request_end(self) -> bytes:
        if self._sending is None:
            if self.h11.our_state is not h11.SEND_BODY:
                return b""  # (switched, or ended)
            return self.h11.send(h11.EndOfMessage()) or b""
        if self._request_left:
            raise h11.LocalProtocolError("the request body is shorter than its Content-Length")
        return b""

    async def response_head(self) -> PlainResponse | h11.Response | h11.InformationalResponse:
        """The next head of the answer to the request sent."""
        told = self.h11.their_state is h11.SEND_RESPONSE
        if not self.h11.trailing_data[0] and (told or self._sending is not None):
            data = await self._receive()
            head = read_plain_response(data, self._method) if data else None
            if head is not None:
                self._body_left, self._ahead = head.length, data[head.size :]
                return head
            if not told:  # h11 reads an answer to a request it wrote: one like it, then
                stand_in = h11.Request(method=self._method, target=b"/", headers=[(b"host", b"-")])
                self.h11.send(stand_in)
                self.h11.send(h11.EndOfMessage())
            self.h11.receive_data(data)  # h11's, as it came
        event = await self.next_event()
        if not isinstance(event, (h11.Response, h11.InformationalResponse)):
            raise h11.RemoteProtocolError(f"expected a response head, got {event!r}")
        return event

    async def body_part(self) -> bytes | None:
        """The next part of the response's body; None at its end."""
        left = self._body_left
        if left is None:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            raise h11.RemoteProtocolError(f"the upstream closed mid-response ({event!r})")
        if not left:
            return None
        data, self._ahead = self._ahead or await self._receive(), b""
        if not data:
            raise h11.RemoteProtocolError(
                f"the upstream closed the connection {left} bytes before the end of the body"
                " its Content-Length declares"
            )
        if len(data) > left:  # bytes past the body: unasked (the connection is not reused)
            data, self._ahead = data[:left], data[left:]
        self._body_left = left - len(data)
        return data

    @property
    def missing_body_bytes(self) -> int:
        """Body bytes of a response read here that have not arrived yet; 0
        once all have, and for a response h11 reads."""
        left = self._body_left
        return 0 if left is None else max(0, left - len(self._ahead))

    async def receive_body(self) -> None:
        """Read the rest of a response body read here, so that the answer
        can cross whole."""
        while self.missing_body_bytes:
            data = await self._receive()
            if not data:
                return  # (``body_part`` says what is missing)
            self._ahead += data

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive(self.read_size)
        except anyio.EndOfStream:
            return b""

    def reusable(self) -> bool:
        """Whether the connection can carry the next request: this one sent
        and its answer read whole, with no bytes past the answer (the next
        request would take them for its own) and not ended by a close."""
        if self._sending is not None:
            sent = not self._request_left
        else:
            sent = self.h11.our_state is h11.DONE
        if self._body_left is not None:
            answered = not self._body_left and not self._ahead
        else:
            ahead, closed = self.h11.trailing_data
            answered = not ahead and not closed and self.h11.their_state is h11.DONE
        if not (sent and answered):
            return False
        if self._sending is None and self._body_left is None:
            self.h11.start_next_cycle()
        elif self.h11.our_state is not h11.IDLE:  # h11 saw the request alone, or a stand-in
            self.h11 = h11_connection(h11.CLIENT)
        self._sending = self._body_left = None
        return True

    def still_open(self) -> bool:
        """An idle connection the server has not closed (checked without waiting).

        Idle, nothing should be readable: readable means the server closed
        it (or sent something unasked), and either way it is not reusable.
        """
        if self.own_stream is not None and self.own_stream.holds_unread:
            return False  # what the server sent (or its end) was read already
        # poll(), not select(): select() cannot take a descriptor past 1023,
        # and a harness host with hundreds of bridges holds thousands.
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return not poller.poll(0)


class UpstreamPool:
    """Keep-alive connections to one upstream: reused, never shared at once."""

    def __init__(self, host: str, port: int, options: HostOptions) -> None:
        self.host = host
        self.port = port
        self.options = options
        self._idle: list[UpstreamConnection] = []
        self.connections_opened = 0

    async def acquire(self) -> UpstreamConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.still_open():
                return conn
            await conn.stream.aclose()
        try:
            with anyio.fail_after(self.options.connect_timeout):
                stream = await connect_tcp(self.host, self.port)
        except TimeoutError:
            raise UpstreamError(
                bp.ErrorCode.UPSTREAM_UNREACHABLE,
                f"connecting to the upstream {self.host}:{self.port} took longer than"
                f" {self.options.connect_timeout:g} s",
            ) from None
        except OSError as exc:
            said = " ".join(filter(None, (errno.errorcode.get(exc.errno or 0), exc.strerror)))
            raise UpstreamError(
                bp.ErrorCode.UPSTREAM_UNREACHABLE,
                f"cannot connect to the upstream {self.host}:{self.port}: {said or exc}",
            ) from None
        self.connections_opened += 1
        return UpstreamConnection(stream)

    def keep(self, conn: UpstreamConnection) -> bool:
        """Put a connection whose exchange completed back in the pool, once
        nothing of that exchange can touch it any more."""
        if conn.reusable() and len(self._idle) < self.options.max_idle_connections:
            self._idle.append(conn)
            return True
        return False

    async def discard(self, conn: UpstreamConnection) -> None:
        with anyio.CancelScope(shield=True):
            await conn.stream.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            for conn in idle:
                await conn.stream.aclose()


UpstreamLookup = Callable[[int], "Upstream | Refusal"]


class HostSide:
    """Forwards each exchange of a session to the upstream of its route.

    ``upstream`` is route 0 (None: a bridge of added routes only); with
    ``lookup``, routes are found by calling it instead. Use ``handle`` as
    the session's ``on_request``.
    """

    def __init__(
        self,
        upstream: Upstream | None,
        options: HostOptions | None = None,
        *,
        lookup: UpstreamLookup | None = None,
    ) -> None:
        self.options = options or HostOptions()
        self.routes: dict[int, Upstream] = {} if upstream is None else {0: upstream}
        self._lookup = lookup
        self._pools: dict[int, UpstreamPool] = {}

    @property
    def pool(self) -> UpstreamPool:
        """Route 0's connection pool."""
        return self._pool(0, self.routes[0])

    def add_route(self, upstream: Upstream) -> int:
        """Add an outward route; returns its number (1, 2, ...). Synchronous,
        and in force for the next request head that arrives."""
        for route, known in self.routes.items():
            if route and known == upstream:  # asked again for the same: the same route
                return route
        route = max(self.routes, default=0) + 1
        self.routes[route] = upstream
        return route

    def upstream_for(self, route: int) -> Upstream | Refusal:
        if self._lookup is not None:
            return self._lookup(route)
        upstream = self.routes.get(route)
        if upstream is not None:
            return upstream
        if route == 0:
            message = "this bridge has no default upstream; use the URLs its routes were given"
        else:
            message = f"this bridge has no route {route}; use the URLs its routes were given"
        return Refusal(bp.ErrorCode.FORBIDDEN, message, cause="route-unknown")

    def _pool(self, route: int, upstream: Upstream) -> UpstreamPool:
        pool = self._pools.get(route)  # (a route never changes its upstream)
        if pool is None:
            pool = self._pools[route] = UpstreamPool(upstream.host, upstream.port, self.options)
        return pool

    async def handle(self, exchange: Exchange, head: bp.RequestHead) -> None:
        upstream = self.upstream_for(head.route)
        if isinstance(upstream, Refusal):
            exchange.reset(upstream.code, upstream.message)
            return
        request = plain_upstream_request(head, upstream) or upstream_request(head, upstream)
        if isinstance(request, Refusal):
            exchange.reset(request.code, request.message)
            return
        await self._forward(exchange, request, self._pool(head.route, upstream))

    async def _forward(
        self, exchange: Exchange, request: PlainRequest | h11.Request, pool: UpstreamPool
    ) -> None:
        try:
            conn = await pool.acquire()
        except UpstreamError as exc:
            exchange.reset(exc.code, exc.reason)
            return
        errors: list[Exception] = []  # child tasks report here, never raise
        completed = kept = False
        request_sent = Flag()
        try:
            if await self._send_request(exchange, conn, request):
                request_sent.set()
                completed = await self._answer(exchange, conn, errors)
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        self._upload, exchange, conn, tg.cancel_scope, errors, request_sent
                    )
                    if await self._download_noting(exchange, conn, errors):
                        # An upstream that knows the body's length may answer
                        # before the bridge's end-of-body is through; the
                        # connection can be reused once it is. A switched one
                        # carries the agent's bytes until it closes its side.
                        switched = conn.h11.our_state is h11.SWITCHED_PROTOCOL
                        with anyio.move_on_after(math.inf if switched else _REQUEST_TAIL_SECONDS):
                            await request_sent.wait()
                        # Not all of the request written (its last write may be
                        # cut short by the cancel below): the connection is not
                        # in step with the upstream, and is never reused.
                        completed = request_sent.is_set()
                    # The response is complete or failed: the upload has nothing left to do.
                    tg.cancel_scope.cancel()
            # Back to the pool only now: until the upload task has ended, it may
            # still act on this connection (a cancelled task runs on to its next
            # checkpoint), and the connection would already be another exchange's.
            kept = completed and not errors and pool.keep(conn)
        except _UPSTREAM_IO_ERRORS as exc:  # sending the request
            errors.append(exc)
        finally:
            if not kept:
                await pool.discard(conn)
        if errors:
            exchange.reset(*self._reset_for(errors[0], exchange.head_sent))

    async def _send_request(
        self, exchange: Exchange, conn: UpstreamConnection, request: PlainRequest | h11.Request
    ) -> bool:
        """Send the head with as much of the body as has arrived, in one
        write; True when that was the whole request (nothing left to upload)."""
        out = [conn.request_head(request)]
        whole = False
        if isinstance(request, PlainRequest) and not request.length:
            whole = True
        elif isinstance(request, h11.Request) and not _has_body(request):
            out.append(conn.request_end())
            # (An upgrade's request is sent when the bridge's body ends:
            # before a 101 that is at once, after one it is a half-close.)
            whole = upgrade_token(request.headers.raw_items()) is None
        else:
            consumed = 0
            while consumed < _FIRST_WRITE and isinstance(
                event := exchange.events.peek(), (bp.Data, bp.EndOfBody)
            ):
                exchange.events.take()
                if isinstance(event, bp.EndOfBody):
                    out.append(conn.request_end())
                    whole = True
                    break
                out.append(conn.request_data(event.data))
                consumed += len(event.data)
            if consumed:
                exchange.consume(consumed)
        await conn.stream.send(b"".join(out))
        return whole

    async def _answer(
        self, exchange: Exchange, conn: UpstreamConnection, errors: list[Exception]
    ) -> bool:
        """The response, once the whole request is sent: in this task alone,
        ended by a reset from the sandbox. True when it completed."""
        with _ended_by_reset(exchange, conn):
            if exchange.ended_by is None and await self._download_noting(exchange, conn, errors):
                return True
        reset = exchange.ended_by
        if reset is not None:  # (the reason the exchange failed, whatever the download saw)
            errors.insert(0, ExchangeAborted(reset.code, reset.reason))
        return False

    async def _download_noting(
        self, exchange: Exchange, conn: UpstreamConnection, errors: list[Exception]
    ) -> bool:
        """``_download``, its failures noted in ``errors``; True when it completed."""
        try:
            await self._download(exchange, conn)
        except (*_UPSTREAM_IO_ERRORS, TimeoutError, ExchangeAborted) as exc:
            errors.append(exc)
        except bp.LocalProtocolError as exc:  # past a limit of the core's: max_body_bytes
            if exc.code is None:
                raise  # the core was misused: a bug, for the session's net
            errors.append(exc)
        else:
            return True
        return False

    def _reset_for(self, error: Exception, head_sent: bool) -> tuple[bp.ErrorCode, str]:
        """The one place upstream failures become reset codes."""
        if isinstance(error, ExchangeAborted):
            return error.code, error.reason
        if isinstance(error, bp.LocalProtocolError) and error.code is not None:
            return error.code, str(error)
        if isinstance(error, TimeoutError):
            return (
                bp.ErrorCode.UPSTREAM_TIMEOUT,
                f"no response head from the upstream within {self.options.response_timeout:g} s",
            )
        if head_sent:
            return bp.ErrorCode.UPSTREAM_FAILED, f"the upstream broke the response: {error!r}"
        return bp.ErrorCode.UPSTREAM_FAILED, f"the upstream failed before answering: {error!r}"

    async def _upload(
        self,
        exchange: Exchange,
        conn: UpstreamConnection,
        scope: anyio.CancelScope,
        errors: list[Exception],
        request_sent: Flag,
    ) -> None:
        """The request body, bridge to upstream; a reset from the sandbox cancels all."""
        try:
            async for event in exchange.events:
                switched = conn.h11.our_state is h11.SWITCHED_PROTOCOL
                if isinstance(event, bp.Data):
                    data = event.data if switched else conn.request_data(event.data)
                    await conn.stream.send(data)
                    exchange.consume(len(event.data))
                elif isinstance(event, bp.EndOfBody):
                    if switched:
                        await conn.stream.send_eof()
                    elif end := conn.request_end():
                        await conn.stream.send(end)
                    request_sent.set()
                elif isinstance(event, bp.ExchangeReset):
                    errors.append(ExchangeAborted(event.code, event.reason))
                    scope.cancel()  # stop reading the upstream; its connection closes
                    return
        except _UPSTREAM_IO_ERRORS as exc:
            errors.append(exc)
            scope.cancel()

    async def _download(self, exchange: Exchange, conn: UpstreamConnection) -> None:
        """The whole response, upstream to bridge."""
        timeout = self.options.response_timeout
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            head = await conn.response_head()
            while isinstance(head, h11.InformationalResponse):
                exchange.send_response(_head(exchange.id, head))
                if head.status_code == 101:  # h11 took it: the request asked for it
                    break
                head = await conn.response_head()
        if isinstance(head, h11.InformationalResponse):  # (the response timeout is over)
            await self._switched(exchange, conn)
            return
        if 0 < conn.missing_body_bytes <= WHOLE_BODY_BYTES:
            # The rest of a small body first (servers write a head and its
            # body apart), for at most the exchange's idle timeout: the
            # answer then crosses whole. A slower one is carried as it comes.
            idle = exchange.conn.config.idle_timeout
            with anyio.move_on_after(math.inf if idle is None else idle):
                await conn.receive_body()
        exchange.send_response(_head(exchange.id, head))
        while (data := await conn.body_part()) is not None:
            await exchange.send_data(data)
        exchange.end()

    async def _switched(self, exchange: Exchange, conn: UpstreamConnection) -> None:
        """The upstream's bytes after a 101, as they come, then its half-close."""
        data = bytes(conn.h11.trailing_data[0])  # read with the 101
        while True:
            if data:
                await exchange.send_data(data)
            try:
                data = await conn.stream.receive(conn.read_size)
            except anyio.EndOfStream:
                break
        exchange.end()

    async def aclose(self) -> None:
        for pool in list(self._pools.values()):
            await pool.aclose()


@contextlib.contextmanager
def _ended_by_reset(exchange: Exchange, conn: UpstreamConnection) -> Iterator[None]:
    """Within it, a reset from the sandbox ends the answer's waits.

    A wait for credit ends on the reset itself; a read from the upstream
    ends when the reset closes the connection (which is discarded anyway),
    a plain call where the stream is a descriptor of ours. anyio's stream
    (on trio) cannot be closed at once: its read is cancelled instead. (A
    cancel scope a request cost the host a few per cent of its CPU.)
    """
    if conn.own_stream is not None:
        exchange.on_reset = conn.own_stream.close
        try:
            yield
        finally:
            exchange.on_reset = None
        return
    with anyio.CancelScope() as scope:
        exchange.on_reset = scope.cancel
        try:
            yield
        finally:
            exchange.on_reset = None


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _head(
    exchange_id: int, head: PlainResponse | h11.Response | h11.InformationalResponse
) -> bp.ResponseHead:
    if isinstance(head, PlainResponse):
        return bp.ResponseHead(exchange_id, head.status, head.reason, clean_headers(head.headers))
    return bp.ResponseHead(
        exchange_id,
        head.status_code,
        bytes(head.reason),
        clean_headers(head.headers.raw_items(), upgrade=head.status_code == 101),
    )


async def run_host_side(
    channels: Channels | anyio.abc.ByteStream,
    session_id: bytes,
    upstream: Upstream | HostSide | None,
    *,
    config: bp.Config | None = None,
    options: HostOptions | None = None,
    tracer: Tracer | None = None,
    resume_timeout: float = RESUME_TIMEOUT,
    on_channel: Callable[[str], None] | None = None,
    task_status: anyio.abc.TaskStatus[Session] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the host side of a session until it ends.

    ``upstream`` is route 0's upstream (None: none), or a ``HostSide`` the
    caller made, to add routes to it later.

    With ``task_group.start``, returns the ``Session`` once the handshake has
    completed (so the sandbox side is listening).
    """
    host = upstream if isinstance(upstream, HostSide) else HostSide(upstream, options)
    conn = bp.Connection(bp.Role.HOST, session_id, config)
    session = Session(
        conn, channels, host.handle, tracer, resume_timeout=resume_timeout, on_channel=on_channel
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            with anyio.fail_after(session.conn.config.handshake_timeout + 1):
                await first_of(session.ready, session.finished)
            if session.failure is not None:
                raise SessionEnded(session.failure.reason)
            task_status.started(session)
    finally:
        await host.aclose()
