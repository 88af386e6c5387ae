"""The hot path's two primitives, made cheap on asyncio: the loop's clock
and a flag a task waits on.

anyio finds the running backend anew on every ``anyio.Event()`` and every
``anyio.current_time()``; a small request made about nine events and eight
clock readings on each side, a tenth of its CPU. ``clock()`` binds the
loop's own clock once; ``Flag`` waits on a bare asyncio future, and is
cleared and set again instead of being made anew. On trio both fall back
to anyio's own.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import anyio
import sniffio


def on_asyncio() -> bool:
    """Whether the running loop is asyncio's (or uvloop's): the hot path's
    own primitives work there, anyio's are used elsewhere (trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def clock() -> Callable[[], float]:
    """The running event loop's clock, as ``anyio.current_time`` reads it,
    bound once (called outside a loop: ``anyio.current_time`` itself)."""
    try:
        if sniffio.current_async_library() == "asyncio":
            return asyncio.get_running_loop().time
    except (sniffio.AsyncLibraryNotFoundError, RuntimeError):
        pass
    return anyio.current_time


class Flag:
    """Set, cleared, waited on: an event that can be used again.

    ``wait`` returns at once while the flag is set (it is not a checkpoint);
    any number of tasks may wait, and one cancelled leaves the others
    waiting.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None] | anyio.Event] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(waiter, anyio.Event):
                waiter.set()
            elif not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the flag is set, or ``timeout`` seconds have passed; whether it is set."""
        if self._set:
            return True
        waiter: asyncio.Future[None] | anyio.Event
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio: trio, through anyio
            waiter = anyio.Event()
        else:
            waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            if isinstance(waiter, anyio.Event):
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    await waiter.wait()
            elif timeout is None:
                await waiter
            else:
                timer = loop.call_later(timeout, resolve, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
        finally:
            if not self._set and waiter in self._waiters:  # cancelled, or out of time
                self._waiters.remove(waiter)
        return self._set


def resolve(future: asyncio.Future[None]) -> None:
    """Wake the task awaiting ``future`` (once; a cancelled one stays so)."""
    if not future.done():
        future.set_result(None)
