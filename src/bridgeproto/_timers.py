"""The earliest of many deadlines that only move later, without a scan.

Every exchange has up to two timers, and an idle one moves later with every
frame: keeping a sorted structure exact on each frame would cost more than
the frame. Instead each timer has one entry in a min-heap holding a time no
later than its deadline. A frame only records the new time; the entry is
corrected when it reaches the top of the heap (pushed back to the real
deadline, or dropped if the timer is gone). So reading the earliest deadline
costs O(1) plus O(log n) per timer that moved since it was last looked at.

Dropped timers leave their entries behind until they surface; when the heap
holds more than twice the entries it had after the last clean-up, it is
rebuilt from the live ones, so it stays within a constant factor of them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

# A timer: (owner, kind), e.g. (exchange id, which of its timers).
Key = tuple[int, int]
_SLACK = 64  # entries tolerated beyond twice the live ones


class LazyDeadlines:
    """Timers whose deadlines ``deadline_of`` tells (None: the timer is gone).

    The owner must ``arm`` a timer when it starts and whenever its deadline
    moves earlier; a deadline that moves later needs nothing.
    """

    def __init__(self, deadline_of: Callable[[Key], float | None]) -> None:
        self._deadline_of = deadline_of
        self._heap: list[tuple[float, Key]] = []
        self._rebuild_above = _SLACK

    def __len__(self) -> int:
        """Entries held, live or not (what the clean-up bounds)."""
        return len(self._heap)

    def arm(self, key: Key, when: float) -> None:
        heapq.heappush(self._heap, (when, key))
        if len(self._heap) > self._rebuild_above:
            self._rebuild()

    def earliest(self) -> float | None:
        """The earliest live deadline, or None."""
        heap = self._heap
        while heap:
            when, key = heap[0]
            deadline = self._deadline_of(key)
            if deadline is None:
                heapq.heappop(heap)
            elif deadline > when:
                heapq.heapreplace(heap, (deadline, key))
            else:
                return when
        return None

    def pop_due(self, now: float) -> list[Key]:
        """Every live timer due at ``now``, earliest first. They are taken
        off the heap: one that is to fire again must be armed again."""
        when = self.earliest()
        if when is None or when > now:
            return []  # (the common case, made cheap)
        due: dict[Key, None] = {}  # (a timer armed twice surfaces twice)
        while (when := self.earliest()) is not None and when <= now:
            due[heapq.heappop(self._heap)[1]] = None
        return list(due)

    def _rebuild(self) -> None:
        live: dict[Key, float] = {}
        for _, key in self._heap:
            deadline = self._deadline_of(key)
            if deadline is not None:
                live[key] = deadline
        self._heap = [(deadline, key) for key, deadline in live.items()]
        heapq.heapify(self._heap)
        self._rebuild_above = 2 * len(self._heap) + _SLACK
