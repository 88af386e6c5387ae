"""The request's half of an exchange on the sandbox side: the agent's body
into the bridge.

A body already read with its head is sent at once (``body_at_hand``): a
small request then needs no task beyond the one answering it, which hears
of a hang-up from the agent (``hung_up``). A body still arriving is
streamed by a task of its own (``upload``) while the answer goes back.
``Outcome`` is what that task tells the answering one when it stops early.
"""

from __future__ import annotations

import anyio
import attrs

import bridgeproto as bp
from bridgeproto.http import AgentBody, AgentEnd, AgentEvent, AgentRefused

from .agents import Agent
from .errors import STREAM_ERRORS, ExchangeAborted
from .exchange import Exchange
from .wakeups import Flag


@attrs.define
class Outcome:
    """What the body task tells the connection task when it stops early."""

    abort: bool = False
    reply: bytes | None = None
    request_read: Flag = attrs.field(factory=Flag)
    answered: Flag = attrs.field(factory=Flag)  # a final head went out


async def body_at_hand(
    agent: Agent, exchange: Exchange, outcome: Outcome
) -> tuple[bool, AgentEvent | None]:
    """Send the body bytes already read, as far as the credit allows them
    at once, and end the request if its end was read too: (True, None).
    Otherwise (False, the event taken but not handled, if any): the
    upload task goes on from there. A reset meanwhile is the answer's to
    give: (True, None) too."""
    try:
        while True:
            event = agent.http.next_event()
            if isinstance(event, AgentBody) and len(event.data) <= exchange.send_credit:
                await exchange.send_data(event.data)
            elif isinstance(event, AgentEnd):
                exchange.end()
                return True, None
            else:
                return False, event
    except ExchangeAborted:
        return True, None
    except bp.LocalProtocolError as exc:  # a limit of the core's: the exchange ends here
        if exc.code is None:
            raise  # the core was misused: a bug
        exchange.reset(exc.code, str(exc))
        outcome.abort = True
        return False, None


async def upload(
    agent: Agent,
    exchange: Exchange,
    scope: anyio.CancelScope,
    outcome: Outcome,
    upgrade: bool,
    first: AgentEvent | None = None,
) -> None:
    try:
        while True:
            event = first if first is not None else await agent.next_event()
            first = None
            if isinstance(event, AgentBody):
                await exchange.send_data(event.data)
            elif isinstance(event, AgentEnd):
                outcome.request_read.set()
                if upgrade:  # (no body) the answer tells what the agent's next bytes are
                    await outcome.answered.wait()
                    if agent.http.switched:
                        await _switched_upload(agent, exchange)
                    return  # declined: the answer's side ended the request
                exchange.end()
                break
            elif isinstance(event, AgentRefused):
                exchange.reset(event.refusal.code, event.refusal.message)
                outcome.reply = event.reply
                outcome.abort = event.reply is None
                scope.cancel()
                return
            else:
                raise anyio.EndOfStream
        # The request is in; an agent that hangs up now cancels the exchange.
        data = await agent.receive()
        if not data:
            raise anyio.EndOfStream
        agent.http.receive_data(data)  # a pipelined request, kept for the next cycle
    except STREAM_ERRORS:
        exchange.reset(bp.ErrorCode.CANCELLED, "the agent closed its connection")
        outcome.abort = True
        scope.cancel()
    except bp.LocalProtocolError as exc:
        # A limit of the core's (max_body_bytes on a switched connection;
        # an ordinary body is refused before): the exchange ends here.
        if exc.code is None:
            raise  # the core was misused: a bug
        exchange.reset(exc.code, str(exc))
        outcome.abort = True
        scope.cancel()
    except ExchangeAborted:
        pass  # the answer task sees the reset and answers it


async def _switched_upload(agent: Agent, exchange: Exchange) -> None:
    """After a 101: the agent's bytes as they come (those read ahead
    first), then its half-close."""
    data = agent.http.upgraded_data()
    while True:
        if data:
            await exchange.send_data(data)
        data = await agent.receive()
        if not data:
            break
    exchange.end()


def hung_up(exchange: Exchange, outcome: Outcome) -> None:
    """The agent hung up on a request it sent whole: cancel the exchange
    (the answer's task, waiting on its records, finds them ended)."""
    exchange.reset(bp.ErrorCode.CANCELLED, "the agent closed its connection")
    outcome.abort = True
