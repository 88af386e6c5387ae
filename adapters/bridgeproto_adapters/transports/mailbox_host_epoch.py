"""The host's end of one mailbox epoch (see ``mailbox.py``, which says how
the transport works): when to make a call or an upload, making each again
until it gets through, and placing the answers' bytes by offset.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from .mailbox_epoch import _EpochStream, _Outbox, _Reassembly
from .mailbox_options import MailboxOptions, MailboxStats

_SMALL = 64 << 10  # output of this size is a request or two, not a bulk transfer
_FAILURES_TO_END = 5  # calls and uploads failing in a row that end an epoch
_FAULTY = 0.05  # share of recent operations failing above which answers ride in calls


class _CallFailed(Exception):
    """A call or an upload that did not get through. ``final``: the sandbox
    side is gone; ``stale``: the sandbox side moved past this epoch; else it
    may simply be made again."""

    def __init__(
        self, reason: str, *, final: bool = False, stale: bool = False, cut: bool = False
    ) -> None:
        super().__init__(reason)
        self.final = final
        self.stale = stale
        self.cut = cut


class _ControlPlane(Protocol):
    """What an epoch needs of its owner (``MailboxChannels``)."""

    options: MailboxOptions
    stats: MailboxStats

    async def call(
        self, epoch: int, number: int, data: bytes, *, got: int = 0, rewind: bool = False,
        wait: float | None = None, waiting: int = 1,
    ) -> tuple[int, bytes]: ...  # fmt: skip

    async def upload(self, epoch: int, number: int, data: bytes) -> None: ...


class _HostEpoch(_EpochStream):
    inbox: _Reassembly

    def __init__(self, owner: _ControlPlane, epoch: int) -> None:
        super().__init__(epoch)
        self._owner = owner
        self.outbox = _Outbox()
        self.inbox = _Reassembly()
        self._rewind = False  # the next call asks for the output after ``got`` again
        self._gap_before = False  # the last answer left a gap too
        # A rewound answer started here, past what the host held: the output
        # before it is on its way in an overtaken answer, or went elsewhere.
        self._hole_until: int | None = None
        self._failures = 0  # calls and uploads failed in a row
        self._failing = 0.0  # share of recent calls and uploads that failed (moving average)
        self._next_in = 1
        self._in_flight = 0  # calls
        self._uploads = 0  # in flight
        self._streak = 0  # answers in a row that carried data: more is likely
        self._closing = False  # no new calls: the last one is out
        self._request_out = False  # a small answer just came: an answer may follow

    def _wanted(self) -> int:
        """Calls to keep in flight now. Idle: one, waiting in the sandbox.
        While data flows, more: with input in calls, all but one place (kept
        for input); with input uploaded, all, waiting there together, from the
        second answer in a row with data on (a lone request costs no spare)."""
        options = self._owner.options
        most = options.max_calls
        if options.upload_input:
            return most if self._streak >= 2 else 1
        if self.outbox.urgent:
            return most
        return most - 1 if self._streak else 1

    async def pump(self) -> None:
        options = self._owner.options
        async with anyio.create_task_group() as tasks:
            while self.ended is None:
                if self._closing:
                    pass
                elif self._in_flight < self._wanted():
                    if self._request_out and not self.outbox.urgent:
                        # A request has likely just gone upstream: a fast answer
                        # rides in the next call instead of a call of its own.
                        self._request_out = False
                        if await self._urgent_within(options.linger):
                            await self.gathered()  # the answer's head and body together
                        continue
                    # Take the input now, so the next turn sees what is left.
                    self._in_flight += 1
                    tasks.start_soon(self._call, self._wanted(), *self._next_input())
                    continue
                elif (
                    options.upload_input
                    and self.outbox.urgent
                    and self._uploads < options.max_calls
                ):
                    await self.gathered()
                    if self.ended is None and not self._closing and self.outbox.urgent:
                        self._uploads += 1
                        tasks.start_soon(self._upload, *self._next_input())
                    continue
                await self.wait_for_change()
            tasks.cancel_scope.cancel()

    async def _urgent_within(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            while self.ended is None and not self.outbox.urgent:
                await self.wait_for_change()
        return self.outbox.urgent

    def _next_input(self) -> tuple[int, bytes]:
        """The next call's input and its number (0: none)."""
        data = self.outbox.take(self._owner.options.input_bytes)
        if not data:
            return 0, b""
        number, self._next_in = self._next_in, self._next_in + 1
        return number, data

    def queue(self, item: bytes) -> None:
        self.outbox.add(item)

    def _failed(self, exc: _CallFailed) -> bool:
        """Count a failure; whether it ended the epoch (else: make it again).
        Once the epoch is closing, a call that fails was overtaken by the end
        (the sandbox side may be gone already): not made again, not counted."""
        if self._closing:
            return True
        self._owner.stats.failed += 1
        self._owner.stats.last_failure = str(exc)
        self._failures += 1
        self._count_outcome(failed=True)
        if exc.final or exc.stale:
            self.end(str(exc))
        elif self._failures >= _FAILURES_TO_END:
            self.end(f"{self._failures} calls in a row failed (the last: {exc})")
        return self.ended is not None

    async def _call(self, waiting: int, number: int, data: bytes) -> None:
        """One call, made again until it gets through (its input, if any,
        is applied once), unless the epoch ends first."""
        try:
            while self.ended is None:
                rewind, self._rewind = self._rewind, False
                try:
                    start, answer = await self._owner.call(
                        self.epoch, number, data, got=self.inbox.got, rewind=rewind,
                        waiting=waiting,
                    )  # fmt: skip
                except _CallFailed as exc:
                    self._rewind = True  # its answer may have held output: ask again
                    if self._failed(exc):
                        return
                    continue
                self._took(start, answer, rewind)
                return
        finally:
            self._in_flight -= 1
            self.changed()

    def _took(self, start: int, answer: bytes, rewound: bool) -> None:
        """An answer came back whole: place its bytes by offset."""
        self._failures = 0
        self._count_outcome(failed=False)
        held = self.inbox.got
        self.inbox.add(start, answer)
        if self._hole_until is not None and self.inbox.got < self._hole_until:
            # The answer after a rewound one that skipped output did not
            # bring it either: the host never held that output and another
            # caller acknowledged it (code inside, on the call socket). It
            # cannot be had again here.
            self.end("output of this epoch went to another caller")
            return
        # A rewound answer that starts past what the host holds may have
        # overtaken an answer on its way with the output before it (the
        # sandbox side answered that call first): the next answer decides.
        self._hole_until = start if rewound and start > held else None
        # Answers may overtake each other: a gap that outlives the next
        # answer too is output lost on its way, to be asked for again.
        if self.inbox.gap and self._gap_before:
            self._rewind = True
        self._gap_before = self.inbox.gap
        self._streak = self._streak + 1 if answer else 0
        # A request likely went upstream: its answer may ride in the next
        # call rather than in an upload, one operation instead of two, at the
        # price of that call's start in the sandbox on the answer's way. Worth
        # it when operations fail (each is one more chance to), or when input
        # rides in calls anyway. (Bulk does not wait for answers.)
        self._request_out = 0 < len(answer) < _SMALL and (
            not self._owner.options.upload_input or self._failing > _FAULTY
        )

    def _count_outcome(self, *, failed: bool) -> None:
        self._failing = 0.9 * self._failing + (0.1 if failed else 0.0)

    async def _upload(self, number: int, data: bytes) -> None:
        """Upload one input batch, again until it lands (the sandbox side
        applies a batch once), unless the epoch ends first."""
        try:
            while self.ended is None:
                try:
                    await self._owner.upload(self.epoch, number, data)
                except _CallFailed as exc:
                    if self._failed(exc):
                        return
                    continue
                self._failures = 0
                self._count_outcome(failed=False)
                return
        finally:
            self._uploads -= 1
            self.changed()

    async def aclose(self) -> None:
        """End the epoch once what was sent has crossed: a session's final
        frames count as sent when they are in a call. One last call that
        does not wait carries the rest, and tells the sandbox side to answer
        every waiting call now; then the calls and uploads still out are
        waited for."""
        if self.ended is None:
            self._closing = True
            number, data = self._next_input()
            with anyio.move_on_after(self._owner.options.call_timeout):
                for _ in range(_FAILURES_TO_END):
                    try:
                        await self._owner.call(
                            self.epoch, number, data, got=self.inbox.got, wait=0.0, waiting=0
                        )
                        break
                    except _CallFailed as exc:
                        # Not counted as failed: the sandbox side ends as soon
                        # as it has the session's last frames, so this call
                        # may find it gone or be cut off by its exit.
                        if exc.final or exc.stale:
                            break
                while (self._in_flight or self._uploads) and self.ended is None:
                    await self.wait_for_change()
        self.end("the epoch is over")
