"""The sandbox side: an HTTP/1.1 listener whose requests cross the bridge.

One task per agent connection. For each request, one task streams the body
from the agent into the bridge and then watches for the agent hanging up,
while the connection's task streams the answer back. Whatever ends first
decides: a complete response keeps the connection alive; a reset before the
response head becomes a JSON error answer; a reset after it, or an agent that
hangs up, aborts the connection and resets the exchange.
"""

from __future__ import annotations

import anyio
import anyio.abc
import attrs
import h11

import bridgeproto as bp

from .errors import ExchangeAborted, SessionEnded
from .session import Exchange, Session

DEFAULT_LISTEN = ("127.0.0.1", 13131)
_AGENT_IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_CAUSE_BY_STATUS = {431: "headers-too-large", 413: "body-too-large"}


@attrs.define
class _Outcome:
    """What the body task tells the connection task when it stops early."""

    abort: bool = False
    reply: bytes | None = None


class SandboxSide:
    """Serves agent connections for one session."""

    def __init__(self, session: Session, policy: bp.HttpPolicy | None = None) -> None:
        self.session = session
        self.policy = policy or bp.HttpPolicy()

    async def handle_agent(self, stream: anyio.abc.ByteStream) -> None:
        _stop_eager_reading(stream)
        agent = bp.AgentConnection(self.policy)
        async with stream:
            try:
                while await self._one_request(agent, stream) and agent.next_cycle():
                    pass
            except (*_AGENT_IO_ERRORS, h11.LocalProtocolError):
                pass  # the agent went away or the connection is unusable: close it

    async def _one_request(self, agent: bp.AgentConnection, stream: anyio.abc.ByteStream) -> bool:
        event = await _read_event(agent, stream)
        if isinstance(event, bp.AgentRefused):
            if event.reply is not None:
                await stream.send(event.reply)
            return False
        if not isinstance(event, bp.AgentRequest):
            return False  # the agent closed the connection between requests
        try:
            exchange = await self._open(event)
        except bp.LocalProtocolError as exc:
            status = exc.status_hint or 503
            cause = _CAUSE_BY_STATUS.get(status, "bridge-busy")
            await stream.send(agent.reply_error(status, cause, str(exc)))
            return False
        except SessionEnded as exc:
            await stream.send(agent.reply_error(502, "bridge-down", f"the bridge is down: {exc}"))
            return False
        try:
            if event.interim:
                await stream.send(event.interim)
            return await self._carry(agent, stream, exchange)
        finally:
            exchange.close()

    async def _open(self, request: bp.AgentRequest) -> Exchange:
        with anyio.move_on_after(self.session.conn.config.handshake_timeout):
            await self.session.ready.wait()
        return await self.session.open_exchange(request.method, request.target, request.headers)

    async def _carry(
        self, agent: bp.AgentConnection, stream: anyio.abc.ByteStream, exchange: Exchange
    ) -> bool:
        outcome = _Outcome()
        complete = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._upload, agent, stream, exchange, tg.cancel_scope, outcome)
            complete = await self._download(agent, stream, exchange)
            tg.cancel_scope.cancel()
        if outcome.reply is not None:
            await stream.send(outcome.reply)
            return False
        return complete and not outcome.abort

    async def _upload(
        self,
        agent: bp.AgentConnection,
        stream: anyio.abc.ByteStream,
        exchange: Exchange,
        scope: anyio.CancelScope,
        outcome: _Outcome,
    ) -> None:
        try:
            while True:
                event = await _read_event(agent, stream)
                if isinstance(event, bp.AgentBody):
                    await exchange.send_data(event.data)
                elif isinstance(event, bp.AgentEnd):
                    exchange.end()
                    break
                elif isinstance(event, bp.AgentRefused):
                    code = (
                        bp.ErrorCode.BODY_TOO_LARGE
                        if event.refusal.status == 413
                        else bp.ErrorCode.BAD_REQUEST
                    )
                    exchange.reset(code, event.refusal.message)
                    outcome.reply = event.reply
                    outcome.abort = event.reply is None
                    scope.cancel()
                    return
                else:
                    raise anyio.EndOfStream
            # The request is in; an agent that hangs up now cancels the exchange.
            data = await stream.receive()
            agent.receive_data(data)  # a pipelined request, kept for the next cycle
        except (anyio.EndOfStream, *_AGENT_IO_ERRORS):
            exchange.reset(bp.ErrorCode.CANCELLED, "the agent closed its connection")
            outcome.abort = True
            scope.cancel()
        except ExchangeAborted:
            pass  # the answer task sees the reset and answers it

    async def _download(
        self, agent: bp.AgentConnection, stream: anyio.abc.ByteStream, exchange: Exchange
    ) -> bool:
        """Stream the answer to the agent; True when it completed."""
        try:
            async for event in exchange.events:
                if isinstance(event, bp.ResponseHead):
                    await stream.send(agent.respond_head(event))
                elif isinstance(event, bp.Data):
                    await stream.send(agent.respond_data(event.data))
                    exchange.consume(len(event.data))
                elif isinstance(event, bp.EndOfBody):
                    await stream.send(agent.respond_end())
                    return True
                elif isinstance(event, bp.ExchangeReset):
                    reply = agent.respond_failure(event.code, event.reason)
                    if reply is not None:
                        await stream.send(reply)
                    return False
            reply = agent.respond_failure(bp.ErrorCode.PEER_UNRESPONSIVE, "the bridge went down")
            if reply is not None:
                await stream.send(reply)
            return False
        except (*_AGENT_IO_ERRORS, h11.LocalProtocolError):
            exchange.reset(bp.ErrorCode.CANCELLED, "the agent closed its connection")
            return False


def _stop_eager_reading(stream: anyio.abc.ByteStream) -> None:
    """Make an accepted asyncio socket read only when asked to.

    anyio's asyncio backend starts accepted connections with reading on, and
    turns it off only after a receive that had to wait. An agent that uploads
    faster than the bridge's credit allows would then be buffered whole in
    memory. Pausing up front restores the backpressure (trio needs nothing).
    """
    transport = getattr(stream, "_transport", None)
    pause = getattr(transport, "pause_reading", None)
    if pause is not None and transport is not None and not transport.is_closing():
        pause()


async def _read_event(agent: bp.AgentConnection, stream: anyio.abc.ByteStream) -> bp.AgentEvent:
    while True:
        event = agent.next_event()
        if event is not None:
            return event
        try:
            data = await stream.receive()
        except anyio.EndOfStream:
            data = b""
        agent.receive_data(data)


Listen = tuple[str, int] | str  # (host, port) or a Unix socket path


async def open_listener(listen: Listen) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    if isinstance(listen, str):
        return await anyio.create_unix_listener(listen)
    host, port = listen
    return await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)


def listener_address(listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> Listen:
    address = listener.extra(anyio.abc.SocketAttribute.local_address)
    if isinstance(address, str):
        return address
    return (str(address[0]), int(address[1]))


async def run_sandbox_side(
    stream: anyio.abc.ByteStream,
    session_id: bytes,
    *,
    listen: Listen = DEFAULT_LISTEN,
    policy: bp.HttpPolicy | None = None,
    config: bp.Config | None = None,
    task_status: anyio.abc.TaskStatus[Listen] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the sandbox side of a session until it ends.

    The listener is bound before the hello goes out, so once the host side
    sees the handshake complete, agents can connect. With
    ``task_group.start`` it returns the bound address.
    """
    listener = await open_listener(listen)
    session = Session(bp.Connection(bp.Role.SANDBOX, session_id, config), stream)
    side = SandboxSide(session, policy)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(session.run)
        tg.start_soon(listener.serve, side.handle_agent)
        task_status.started(listener_address(listener))
        await session.finished.wait()
        tg.cancel_scope.cancel()
