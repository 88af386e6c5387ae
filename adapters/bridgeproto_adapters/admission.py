"""Admission: new exchanges wait their turn while the core has no room.

The core refuses an exchange past its limits (exchanges in flight, bytes
awaiting acknowledgement); rather than refuse the agent, a side may queue
it. Waiters are served first come, first served: each freed slot wakes the
first in line, which opens its exchange before anything else runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio


class Admission:
    """The line of senders waiting for the core to take a new exchange.

    ``is_full()`` says whether the core would refuse one now (False once the
    session has ended: the opener then hears why from the session).
    """

    def __init__(self, is_full: Callable[[], bool]) -> None:
        self._is_full = is_full
        self._waiters: deque[anyio.Event] = deque()

    def must_queue(self) -> bool:
        """Whether a new exchange must wait its turn (the core is full, or
        others already wait)."""
        return bool(self._waiters) or self._is_full()

    async def wait_for_slot(self) -> None:
        """Wait, in arrival order, until the core takes a new exchange."""
        turn = anyio.Event()
        self._waiters.append(turn)
        try:
            while True:
                await turn.wait()
                if not self._is_full():
                    return  # the caller opens its exchange before anything else runs
                turn = anyio.Event()  # woken too early: wait again, first in line
                self._waiters.appendleft(turn)
        except BaseException:  # cancelled, or timed out
            if turn.is_set():
                self.wake_next()  # the slot we leave goes to the next in line
            else:
                self._waiters.remove(turn)
            raise

    def wake_next(self) -> None:
        """A slot may have come free: the first in line tries it."""
        if self._waiters and not self._is_full():
            self._waiters.popleft().set()

    def release_all(self) -> None:
        """The session ended: every waiter goes, to hear why."""
        while self._waiters:
            self._waiters.popleft().set()
