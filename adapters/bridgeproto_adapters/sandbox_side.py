"""The sandbox side: an HTTP/1.1 listener whose requests cross the bridge.

One task per agent connection answers its requests one after another
(where its socket is not read as a descriptor, on trio or over another
stream an embedder hands to ``handle_agent``, a second, the pump, reads
it: ``agents.py``). A request whose body came with its head, or soon
after it (up to ``WHOLE_BODY_BYTES`` are waited for, as clients write a
head and its body apart), is sent whole and answered in that task alone;
one whose body is still arriving gets a task of its own that streams the
rest into the bridge while the answer streams back (``agent_upload.py``).
Whatever ends first decides: a complete response keeps the connection
alive; a reset before the response head becomes a JSON error answer; a
reset after it, or an agent that hangs up, aborts the connection and
resets the exchange.

Agents are bounded before they cost the bridge anything (``AgentLimits``): a
request head must arrive within ``head_timeout``, at most
``max_pending_connections`` connections may wait for one, and requests beyond
the session's exchange limit queue (``max_queued``, ``queue_timeout``)
instead of being refused.

Outward routes: a target under ``/_routes/N/`` crosses on route N, without
that prefix (``split_route``); any other on route 0. The same class also
serves the host's listener for an inward route (``route`` fixed): there the
"agent" is a client on the host and every request crosses on that route.
Inward exchanges arriving here are forwarded by a ``HostSide`` whose
upstreams are the declared loopback ports (``inward_upstream``).

An agent's upgrade request (WebSocket, say) waits for the upstream's
answer: after a 101, the connection's bytes cross as they are, each way,
until both sides have closed theirs (a half-close crosses as one); any
other answer is an ordinary response.
"""

from __future__ import annotations

import contextlib
import functools

import anyio
import anyio.abc
import attrs
import h11

import bridgeproto as bp
from bridgeproto.http import (
    ROUTES_PREFIX,
    AgentConnection,
    AgentEvent,
    AgentRefused,
    AgentRequest,
    HttpPolicy,
    Refusal,
    Upstream,
    split_route,
)

from .agent_upload import Outcome, body_at_hand, hung_up, upload
from .agents import Agent, _stop_eager_reading, listener_address, open_listener, serve
from .errors import STREAM_ERRORS, ExchangeAborted, SessionEnded
from .h11io import WHOLE_BODY_BYTES
from .host_side import HostSide
from .session import Exchange, Session
from .settings import AgentLimits, Listen, SandboxSettings
from .transports import Channels

_ANSWER_GRACE_SECONDS = 2.0
_REQUEST_TAIL_SECONDS = 5.0


class SandboxSide:
    """Serves agent connections for one session.

    With ``route`` None, targets choose their outward route (``/_routes/N/``);
    with a route number, every request crosses on that route.
    """

    def __init__(
        self,
        session: Session,
        policy: HttpPolicy | None = None,
        limits: AgentLimits | None = None,
        *,
        route: int | None = None,
    ) -> None:
        self.session = session
        policy = policy or HttpPolicy()
        if route is None:  # each route's own allowlist is checked on the host side
            policy = attrs.evolve(
                policy, allowed_prefixes=(*policy.allowed_prefixes, ROUTES_PREFIX)
            )
        self.policy = policy
        self.route = route
        self.limits = limits or AgentLimits()
        self._active = 0  # exchanges being carried
        self._pending = 0  # connections waiting for a request head
        self._queued = 0  # requests waiting for a free exchange
        self._idle = anyio.Event()

    async def until_idle(self) -> None:
        """Wait until no exchange is being answered."""
        while self._active:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def handle_agent(self, stream: anyio.abc.ByteStream) -> None:
        _stop_eager_reading(stream)
        agent = Agent(AgentConnection(self.policy), stream)
        if self._pending >= self.limits.max_pending_connections:
            with contextlib.suppress(*STREAM_ERRORS):
                await stream.send(
                    agent.http.reply_error(
                        503,
                        "too-many-connections",
                        f"{self._pending} connections are waiting to send a request; the"
                        f" limit is {self.limits.max_pending_connections}",
                    )
                )
            await stream.aclose()
            return
        async with anyio.create_task_group() as tg:
            if agent.pumped:
                tg.start_soon(agent.pump)
            try:
                while await self._one_request(agent) and agent.http.next_cycle():
                    pass
            except (*STREAM_ERRORS, h11.LocalProtocolError):
                pass  # the agent went away or the connection is unusable: close it
            finally:
                await agent.close()

    async def _next_head(self, agent: Agent) -> AgentEvent | None:
        """The next request (or refusal) within the head timeout, and with it
        the rest of its body when that is small; None: close."""
        self._pending += 1
        deadline = self.session.now() + self.limits.head_timeout
        try:
            event = await agent.next_event(deadline)
            if 0 < agent.http.missing_body_bytes <= WHOLE_BODY_BYTES:
                await self._small_body(agent, deadline)
            return event
        except TimeoutError:
            pass
        finally:
            self._pending -= 1
        if agent.http.request_started:
            timeout = self.limits.head_timeout
            await agent.refuse(
                agent.http.reply_error(
                    408, "request-timeout", f"no complete request head within {timeout:g} s"
                )
            )
        return None  # an idle connection is closed quietly

    async def _small_body(self, agent: Agent, deadline: float) -> None:
        """Wait for the rest of a small body (clients write a head and its
        body apart, and the head is often read alone) before the exchange
        opens, by the head's deadline and for at most the exchange's idle
        timeout: the request then crosses whole. A body slower than that is
        carried as it comes, once the exchange is open, as any other."""
        idle = self.session.conn.config.idle_timeout
        if idle is not None:
            deadline = min(deadline, self.session.now() + idle)
        with contextlib.suppress(TimeoutError):
            await agent.receive_body(deadline)

    async def _one_request(self, agent: Agent) -> bool:
        event = await self._next_head(agent)
        if isinstance(event, AgentRefused):
            if event.reply is not None:
                await agent.refuse(event.reply)
            return False
        if not isinstance(event, AgentRequest):
            return False  # the agent closed the connection between requests
        if self.route is None:
            routed = split_route(event.target)
            if isinstance(routed, Refusal):
                await agent.refuse(
                    agent.http.reply_error(routed.status, routed.cause, routed.message)
                )
                return False
            route, target = routed
        else:
            route, target = self.route, event.target
        try:
            exchange = await self._open(event, route, target)
        except (bp.LocalProtocolError, SessionEnded) as exc:
            await agent.stream.send(agent.http.reply_error(*self._refusal_for(exc)))
            return False
        self._active += 1
        try:
            if event.interim:
                await agent.stream.send(event.interim)
            return await self._carry(agent, exchange, event.upgrade)
        finally:
            exchange.close()
            self._active -= 1
            self._idle.set()

    def _refusal_for(self, error: bp.LocalProtocolError | SessionEnded) -> tuple[int, str, str]:
        """Status, X-Bridge-Error and message for a request the session did not take."""
        if isinstance(error, SessionEnded) or not self.session.usable:
            return _bridge_down(str(error))
        code = error.code or bp.ErrorCode.TOO_MANY_EXCHANGES
        if code.http_status == 503 and self.session.conn.state is not bp.SessionState.OPEN:
            code = bp.ErrorCode.SHUTTING_DOWN
        return code.http_status, code.cause, str(error)

    async def _open(self, request: AgentRequest, route: int, target: bytes) -> Exchange:
        if not self.session.ready.is_set():
            with anyio.move_on_after(self.session.conn.config.handshake_timeout):
                await self.session.ready.wait()
        if self.session.must_queue():
            await self._queue_for_exchange()
        return await self.session.open_exchange(
            request.method, target, request.headers, route=route
        )

    async def _queue_for_exchange(self) -> None:
        limits = self.limits
        if self._queued >= limits.max_queued:
            raise bp.LocalProtocolError(
                f"{self._queued} requests already wait for a free exchange (the limit is"
                f" {limits.max_queued}); retry later",
                code=bp.ErrorCode.TOO_MANY_EXCHANGES,
            )
        self._queued += 1
        try:
            with anyio.fail_after(limits.queue_timeout):
                await self.session.wait_for_exchange_slot()
        except TimeoutError:
            raise bp.LocalProtocolError(
                f"no exchange came free within {limits.queue_timeout:g} s; retry later",
                code=bp.ErrorCode.TOO_MANY_EXCHANGES,
            ) from None
        finally:
            self._queued -= 1

    async def _carry(self, agent: Agent, exchange: Exchange, upgrade: bool) -> bool:
        outcome = Outcome()
        complete = False
        whole, first = False, None
        if not upgrade:
            whole, first = await body_at_hand(agent, exchange, outcome)
        if outcome.abort:
            return False
        if whole:
            # The request is in: answer it in this task alone; an agent that
            # hangs up now cancels the exchange (and its connection closes).
            outcome.request_read.set()
            agent.on_hangup = functools.partial(hung_up, exchange, outcome)
            try:
                complete = await self._download(agent, exchange, outcome, upgrade)
            finally:
                agent.on_hangup = None
            return complete and not outcome.abort
        async with anyio.create_task_group() as tg:
            tg.start_soon(upload, agent, exchange, tg.cancel_scope, outcome, upgrade, first)
            complete = await self._download(agent, exchange, outcome, upgrade)
            if complete:
                # The upstream may answer before the agent's last request
                # bytes were read here (it knows the length); read them, so
                # the connection can serve the next request.
                with anyio.move_on_after(_REQUEST_TAIL_SECONDS):
                    await outcome.request_read.wait()
            tg.cancel_scope.cancel()
        if outcome.reply is not None:
            await agent.refuse(outcome.reply)
            return False
        return complete and not outcome.abort

    async def _download(
        self, agent: Agent, exchange: Exchange, outcome: Outcome, upgrade: bool
    ) -> bool:
        """Stream the answer to the agent; True when it completed (a switched
        connection is never reused: False).

        Events that are already waiting go out in one write.
        """
        http = agent.http
        try:
            while True:
                try:
                    events = [await exchange.events.receive()]
                except anyio.EndOfStream:
                    if outcome.abort:  # the agent hung up: nobody to answer
                        return False
                    gone = bp.ExchangeReset(
                        exchange.id, bp.ErrorCode.PEER_UNRESPONSIVE, "the bridge went down", False
                    )
                    events = [gone]
                while len(events) < 64 and (waiting := exchange.events.take()) is not None:
                    events.append(waiting)
                out, done, consumed = [], None, 0
                for event in events:
                    if isinstance(event, bp.ResponseHead):
                        out.append(http.respond_head(event))
                        if event.status >= 200 or http.switched:
                            outcome.answered.set()
                            if upgrade and not http.switched:
                                # Declined: the request had no body. (A reset
                                # already in, later in this batch, is answered.)
                                with contextlib.suppress(ExchangeAborted):
                                    exchange.end()
                    elif isinstance(event, bp.Data):
                        out.append(http.respond_data(event.data))
                        consumed += len(event.data)
                    elif isinstance(event, bp.EndOfBody):
                        out.append(http.respond_end())
                        done = True
                    elif isinstance(event, bp.ExchangeReset):
                        if self.session.usable:
                            reply = http.respond_failure(event.code, event.reason)
                        else:  # the whole session is gone, not just this exchange
                            reply = http.answer_error(*_bridge_down(event.reason))
                        out.append(reply or b"")
                        done = False
                    if done is not None:
                        break
                if data := b"".join(out):  # (an end may have no bytes of its own)
                    await agent.stream.send(data)
                if consumed:
                    exchange.consume(consumed)
                if done and http.switched:
                    await self._switched_end(agent, exchange)
                    return False
                if done is not None:
                    return done
        except (*STREAM_ERRORS, h11.LocalProtocolError):
            exchange.reset(bp.ErrorCode.CANCELLED, "the agent closed its connection")
            return False

    async def _switched_end(self, agent: Agent, exchange: Exchange) -> None:
        """The upstream closed its side of a switched connection: so does the
        agent's. The agent may send on until it closes its own, or until the
        exchange is reset (its idle timeout, say)."""
        with contextlib.suppress(*STREAM_ERRORS):
            await agent.stream.send_eof()
        async for event in exchange.events:  # ends once the agent's side has ended too
            if isinstance(event, bp.ExchangeReset):
                return


def _bridge_down(reason: str) -> tuple[int, str, str]:
    """The answer for an agent whose bridge is gone: status, cause, message."""
    return 502, "bridge-down", f"the bridge is down: {reason}"


def inward_upstream(conn: bp.Connection, route: int) -> Upstream | Refusal:
    """Where an inward exchange goes: the loopback port its route was declared
    for, and nothing else (the core already refused undeclared routes)."""
    port = conn.routes.get(route)
    if port is None:
        return Refusal(bp.ErrorCode.FORBIDDEN, f"route {route} was never declared")
    return Upstream("127.0.0.1", port, HttpPolicy())


async def run_sandbox_side(
    channels: Channels | anyio.abc.ByteStream,
    session_id: bytes,
    settings: SandboxSettings | None = None,
    *,
    task_status: anyio.abc.TaskStatus[Listen] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the sandbox side of a session until it ends.

    The listener is bound before the hello goes out, so once the host side
    sees the handshake complete, agents can connect. With
    ``task_group.start`` it returns the bound address. ``settings`` is the
    record the host made (``SandboxSettings``; its defaults without one).
    """
    settings = settings or SandboxSettings()
    listener = await open_listener(settings.listen)
    conn = bp.Connection(bp.Role.SANDBOX, session_id, settings.config)
    inward = HostSide(None, lookup=functools.partial(inward_upstream, conn))
    session = Session(conn, channels, inward.handle, resume_timeout=settings.resume_timeout)
    side = SandboxSide(session, settings.policy, settings.limits)
    try:
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(session.run)
            tg.start_soon(serve, listener, side.handle_agent)
            task_status.started(listener_address(listener))
            await session.finished.wait()
            # Every exchange has ended; let their agents get the answer first,
            # and the host its last acknowledgement (cut, the host's session
            # would wait for it, see the channel end and look for another).
            with anyio.move_on_after(_ANSWER_GRACE_SECONDS):
                await side.until_idle()
            await session.wait_final_flush()
            tg.cancel_scope.cancel()
    finally:
        await inward.aclose()
