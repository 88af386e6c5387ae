"""The session's request handlers: each request head the peer sends is
handled in a task of its own, and a task that has handled one takes the
next instead of a new task being started. Two real sessions over an
in-memory channel, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import anyio
import pytest

import bridgeproto as bp
from bridgeproto_adapters.session import Exchange, RequestHandler, Session
from bridgeproto_adapters.streams import memory_stream_pair

pytestmark = pytest.mark.anyio
SID = bytes(range(16))
_TASK: ContextVar[object] = ContextVar("task")


def this_task() -> object:
    """A mark of the running task (its context; a task's id may be reused
    once it has ended)."""
    mark = _TASK.get(None)
    if mark is None:
        mark = object()
        _TASK.set(mark)
    return mark


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def sessions(on_request: RequestHandler) -> AsyncIterator[Session]:
    """A sandbox side's session whose requests ``on_request`` answers."""
    a, b = memory_stream_pair()
    sandbox = Session(bp.Connection(bp.Role.SANDBOX, SID), a)
    host = Session(bp.Connection(bp.Role.HOST, SID), b, on_request)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sandbox.run)
        tg.start_soon(host.run)
        with anyio.fail_after(10):
            await sandbox.ready.wait()
            yield sandbox
        tg.cancel_scope.cancel()


async def ask(sandbox: Session, target: bytes) -> bp.ResponseHead | bp.ExchangeReset:
    """Send a request without a body; the response head, or the reset."""
    exchange = await sandbox.open_exchange(b"GET", target, [])
    exchange.end()
    with anyio.fail_after(10):
        while True:
            event = await exchange.events.receive()
            if isinstance(event, (bp.ResponseHead, bp.ExchangeReset)):
                exchange.close()
                return event


def answer(exchange: Exchange, status: int) -> None:
    exchange.send_response(bp.ResponseHead(exchange.id, status, b"", ()))
    exchange.end()


async def test_requests_one_after_another_are_handled_by_one_task() -> None:
    tasks: list[object] = []

    async def on_request(exchange: Exchange, head: bp.RequestHead) -> None:
        tasks.append(this_task())
        answer(exchange, 200)

    async with sessions(on_request) as sandbox:
        for _ in range(5):
            assert (await ask(sandbox, b"/")).status == 200  # type: ignore[union-attr]
    assert len(tasks) == 5 and all(task is tasks[0] for task in tasks)


async def test_requests_at_once_each_get_a_task_of_their_own() -> None:
    """Three handlers that each wait for all three to have started: they
    finish only if each runs in a task of its own."""
    started = 0
    all_in = anyio.Event()
    tasks: set[object] = set()

    async def on_request(exchange: Exchange, head: bp.RequestHead) -> None:
        nonlocal started
        tasks.add(this_task())
        started += 1
        if started == 3:
            all_in.set()
        await all_in.wait()
        answer(exchange, 200)

    async with sessions(on_request) as sandbox:
        answers: list[bp.ResponseHead | bp.ExchangeReset] = []

        async def one() -> None:
            answers.append(await ask(sandbox, b"/"))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        assert [a.status for a in answers] == [200] * 3  # type: ignore[union-attr]
        assert len(tasks) == 3
        # Three idle handlers now: the next requests take them, none is started.
        before = set(tasks)
        for _ in range(3):
            assert (await ask(sandbox, b"/")).status == 200  # type: ignore[union-attr]
        assert tasks == before


async def test_a_handler_that_fails_resets_its_exchange_and_handles_the_next() -> None:
    tasks: list[object] = []

    async def on_request(exchange: Exchange, head: bp.RequestHead) -> None:
        tasks.append(this_task())
        if head.target == b"/bug":
            raise RuntimeError("a bug in the handler")
        answer(exchange, 200)

    async with sessions(on_request) as sandbox:
        failed = await ask(sandbox, b"/bug")
        assert isinstance(failed, bp.ExchangeReset)
        assert failed.code is bp.ErrorCode.INTERNAL_ERROR
        assert "a bug in the handler" in failed.reason
        assert (await ask(sandbox, b"/")).status == 200  # type: ignore[union-attr]
    assert len(tasks) == 2 and tasks[0] is tasks[1]
