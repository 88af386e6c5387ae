"""The mailbox transport: a bridge over control planes that only run commands.

Some sandbox providers offer no live process: only "run this command and
give me its output" and "write this file". Over those, a channel is an
**epoch** of calls. Each call runs ``mailbox_call.py`` in the sandbox, which
hands the host's input batch to the sandbox side (over a private Unix
socket, as the live transport does) and prints what the sandbox side has for
the host, armored as one line of text.

* **Long-poll.** A call waits in the sandbox until there is output worth
  returning (or ``wait`` seconds). An idle bridge keeps one call waiting and
  costs one call per ``wait``. Acknowledgements, pings and pongs alone do
  not end a wait: they ride with the next call either way.
* **Input in the same calls.** Frames for the sandbox ride in the next call
  (on its stdin when small, in a file uploaded just before when large).
  Every call that arrives takes the place of the one waiting, which returns
  at once with what there is: one call waits in the sandbox at a time, so
  the host's other places are always free for input.
* **Several calls in flight** (``max_calls``) while data flows, so a stream
  of server-sent events is not held to one call at a time. Batches are
  numbered both ways and put back in order.
* **Exactly once.** When a call fails (before it ran, or after, with its
  answer lost) or its answer is cut or damaged (the armor's length and CRC
  tell), the epoch ends: the session opens the next one and resumes, which
  resends everything unacknowledged, and the receiving core drops what it
  already has. A half batch is never applied.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import struct
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc
import attrs

from bridgeproto.wire import END_OF_INPUT, ArmorDecoder, FrameType, armor

from .. import mailbox_call
from ..errors import STREAM_ERRORS
from ..mailbox_call import EXIT_NO_DAEMON, channel_dir
from ..sandboxes import SandboxClient, SandboxError
from . import Acceptor, NoChannel

_NUMBER = struct.Struct(">Q")  # an answer's batch number, before its bytes
_QUIET = frozenset({FrameType.ACK, FrameType.PING, FrameType.PONG})
_MAX_INPUT = 256 << 20  # what one call may hand the sandbox side, at most
_SMALL = 64 << 10  # output of this size is a request or two, not a bulk transfer


def _urgent(data: bytes) -> bool:
    """Whether whole frames ``data`` hold anything worth ending a wait for:
    anything but acknowledgements, pings and pongs (or bytes that do not
    parse as frames, to be safe). Frames: 2 magic, version, type, 4-byte
    length, 8-byte sequence number, payload, 4-byte CRC."""
    pos = 0
    while pos + 8 <= len(data):
        if data[pos + 3] not in _QUIET:
            return True
        pos += 20 + int.from_bytes(data[pos + 4 : pos + 8], "big")
    return pos != len(data)


class _Outbox:
    """Bytes waiting for the next call, and whether any of them is urgent."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.urgent = False

    def __len__(self) -> int:
        return len(self._data)

    def add(self, data: bytes) -> None:
        self._data += data
        self.urgent = self.urgent or _urgent(data)

    def take(self, limit: int) -> bytes:
        taken = bytes(self._data[:limit])
        del self._data[:limit]
        if not self._data:
            self.urgent = False
        return taken


class _Reorder:
    """Numbered batches in, bytes out in order; numbers seen before are dropped."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._next = 1
        self._early: dict[int, bytes] = {}

    def add(self, number: int, data: bytes) -> None:
        if number < self._next:
            return
        self._early[number] = data
        while self._next in self._early:
            self.data += self._early.pop(self._next)
            self._next += 1

    def take(self, limit: int) -> bytes:
        taken = bytes(self.data[:limit])
        del self.data[:limit]
        return taken


class _EpochStream(anyio.abc.ByteStream):
    """What both ends share: an outbox, an inbox and one wake-up for changes."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.outbox = _Outbox()
        self.inbox = _Reorder()
        self.ended: str | None = None  # why no more bytes will cross
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_change(self) -> None:
        await self._changed.wait()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self.inbox.data:
            if self.ended is not None:
                raise anyio.BrokenResourceError(self.ended)
            await self.wait_for_change()
        return self.inbox.take(max_bytes)

    async def send(self, item: bytes) -> None:
        if self.ended is not None:
            raise anyio.BrokenResourceError(self.ended)
        self.outbox.add(item)
        self.changed()

    async def send_eof(self) -> None:
        pass

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            self.changed()

    async def aclose(self) -> None:
        self.end("the epoch is over")


# ---------------------------------------------------------------- in the sandbox


class _SandboxEpoch(_EpochStream):
    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self._next_out = 1
        self._tickets = 0  # one per call that waits here
        self._released_below = 0  # calls with a lower ticket answer now

    def answer_all_now(self) -> None:
        """The host is closing this epoch: no call waits here any more."""
        self._released_below = 1 << 62
        self.changed()

    def arrived(self, number: int, data: bytes) -> None:
        """A call arrived, perhaps with input. It will wait in turn, so the
        calls already waiting are answered now: at most one call waits here,
        and the host's other places stay free for its input."""
        if number:
            self.inbox.add(number, data)
        self._released_below = max(self._released_below, self._tickets)
        self.changed()

    async def answer(self, wait: float, max_out: int) -> bytes:
        """Wait for urgent output (or ``wait`` seconds, or the next call's
        arrival); the armored answer line."""
        ticket, self._tickets = self._tickets, self._tickets + 1
        with anyio.move_on_after(wait):
            while self.ended is None and not self.outbox.urgent and ticket >= self._released_below:
                await self.wait_for_change()
        data = self.outbox.take(max_out)
        number = 0
        if data:
            number, self._next_out = self._next_out, self._next_out + 1
        return armor(_NUMBER.pack(number) + data).encode("ascii")


async def _receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive(min(size - len(data), 1 << 20))
    return bytes(data)


async def serve_mailbox(
    acceptor: Acceptor,
    path: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Take calls on ``path``. A call of a newer epoch starts a new channel
    (the session resumes on it); a call of an older one is told it is stale."""
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)
    current: _SandboxEpoch | None = None

    async def take_call(conn: anyio.abc.ByteStream) -> None:
        nonlocal current
        async with conn:
            try:
                head = await _receive_exactly(conn, mailbox_call.REQUEST.size)
                epoch, number, wait_ms, max_out, length = mailbox_call.REQUEST.unpack(head)
                if length > _MAX_INPUT or max_out < 1:
                    return
                data = await _receive_exactly(conn, length)
            except STREAM_ERRORS:
                return  # not a call, or one that gave up: nothing was applied
            if current is not None and epoch < current.epoch:
                await conn.send(mailbox_call.STALE)
                return
            if current is None or epoch > current.epoch:
                current = _SandboxEpoch(epoch)
                await acceptor.offer(current)  # the old epoch's waiting calls return now
            epoch_stream = current
            epoch_stream.arrived(number, data)
            if wait_ms == 0:
                epoch_stream.answer_all_now()
            line = await epoch_stream.answer(wait_ms / 1000, max_out)
            # A call stopped meanwhile: the host sees it failed, and resumes.
            with contextlib.suppress(*STREAM_ERRORS):
                await conn.send(line)

    async with listener, anyio.create_task_group() as tg:
        task_status.started()
        while True:
            conn = await listener.accept()
            tg.start_soon(take_call, conn)


# ---------------------------------------------------------------- on the host


@attrs.frozen
class MailboxOptions:
    """How the host side uses the control plane.

    ``wait``: seconds a call may wait in the sandbox for output (an idle
    bridge costs one call per ``wait``). ``batch_bytes``: the most bytes one
    call brings back; keep its armored size (4/3 of it) under the provider's
    output limit. ``input_bytes``: the most one call takes in (uploads are
    not cut as output is). ``max_calls``: calls in flight at once, at least
    2 (one waits for output while another carries input).
    ``inline_bytes``: input up to this size rides in the call itself;
    larger input is uploaded as a file first (one more call). ``linger``:
    when output came back and no call waits, how long to hold the next call
    for input (a fast upstream's answer then costs no call of its own).
    """

    wait: float = 15.0
    batch_bytes: int = 1 << 20
    input_bytes: int = 8 << 20
    max_calls: int = 2
    inline_bytes: int = 48 << 10
    linger: float = 0.02  # after output came back, how long input may take to join the next call
    call_timeout: float = 30.0  # on top of ``wait``

    def __attrs_post_init__(self) -> None:
        if (
            not self.wait > 0
            or self.max_calls < 2
            or min(self.batch_bytes, self.input_bytes) < 1024
        ):
            raise ValueError(
                "MailboxOptions needs wait > 0, max_calls >= 2 (one call waits for output"
                " while another carries input), and batch_bytes and input_bytes >= 1024"
            )


@attrs.define
class MailboxStats:
    """Control-plane calls the transport made, for accounting and the benchmark."""

    calls: int = 0
    uploads: int = 0
    failed: int = 0  # calls that failed or came back cut or damaged
    epochs: int = 0


class _CallFailed(Exception):
    def __init__(self, reason: str, *, final: bool = False, cut: bool = False) -> None:
        super().__init__(reason)
        self.final = final
        self.cut = cut


class _HostEpoch(_EpochStream):
    def __init__(self, owner: MailboxChannels, epoch: int) -> None:
        super().__init__(epoch)
        self._owner = owner
        self._next_in = 1
        self._in_flight = 0
        self._flowing = False  # the last answer carried data: more is likely
        self._closing = False  # no new calls: the last one is out
        self._request_out = False  # a small answer just came: an answer may follow

    def _wanted(self) -> int:
        """Calls to keep in flight now: one waits in the sandbox, and the other
        places are for input (and, while output flows, for more waiting)."""
        most = self._owner.options.max_calls
        if self.outbox.urgent:
            return most
        return most - 1 if self._flowing else 1

    async def pump(self) -> None:
        linger = self._owner.options.linger
        async with anyio.create_task_group() as calls:
            while self.ended is None:
                if not self._closing and self._in_flight < self._wanted():
                    if self._request_out and not self._in_flight and not self.outbox.urgent:
                        # A request has likely just gone upstream: a fast answer
                        # rides in the next call instead of a call of its own.
                        self._request_out = False
                        with anyio.move_on_after(linger):
                            while self.ended is None and not self.outbox.urgent:
                                await self.wait_for_change()
                        continue
                    # Take the input now, so the next turn sees what is left.
                    self._in_flight += 1
                    calls.start_soon(self._call, *self._next_input())
                    continue
                await self.wait_for_change()
            calls.cancel_scope.cancel()

    def _next_input(self) -> tuple[int, bytes]:
        """The next call's input and its number (0: none)."""
        data = self.outbox.take(self._owner.options.input_bytes)
        if not data:
            return 0, b""
        number, self._next_in = self._next_in, self._next_in + 1
        return number, data

    async def _call(self, number: int, data: bytes) -> None:
        try:
            answer_number, answer = await self._owner.call(self.epoch, number, data)
        except _CallFailed as exc:
            self.end(str(exc))
            return
        finally:
            self._in_flight -= 1
        self._flowing = bool(answer)
        self._request_out = 0 < len(answer) < _SMALL  # (bulk does not wait for answers)
        if answer_number:
            self.inbox.add(answer_number, answer)
        self.changed()

    async def aclose(self) -> None:
        """End the epoch once what was sent has crossed: a session's final
        frames count as sent when they are in a call. One last call that
        does not wait carries the rest, and tells the sandbox side to answer
        every waiting call now; then the calls still out are waited for."""
        if self.ended is None:
            self._closing = True
            number, data = self._next_input()
            with anyio.move_on_after(self._owner.options.call_timeout):
                with contextlib.suppress(_CallFailed):
                    self._in_flight += 1
                    try:
                        await self._owner.call(self.epoch, number, data, wait=0.0)
                    finally:
                        self._in_flight -= 1
                while self._in_flight and self.ended is None:
                    await self.wait_for_change()
        self.end("the epoch is over")


def call_command(python: str = "python3") -> list[str]:
    """The argv of a call: ``mailbox_call.py``'s own source, run by the
    sandbox's Python in isolated mode without ``site`` (it needs only the
    standard library, and starts in about a third of the zipapp's time)."""
    source = pathlib.Path(mailbox_call.__file__).read_text()
    return [python, "-I", "-S", "-c", source]


class MailboxChannels:
    """The host's channels over calls; each ``next_channel`` starts an epoch.

    Its ``run`` method must be running (it owns the tasks that make calls).
    ``command`` runs ``mailbox_call.py`` in the sandbox (``call_command``).
    """

    def __init__(
        self,
        sandbox: SandboxClient,
        command: Sequence[str],
        session_id: bytes,
        env: Mapping[str, str] | None = None,
        options: MailboxOptions | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.command = list(command)
        self.env = env
        self.options = options or MailboxOptions()
        self.stats = MailboxStats()
        self._session_hex = session_id.hex()
        self._upload_dir = channel_dir(session_id)
        self._batch_bytes = self.options.batch_bytes
        self._epoch = 0
        self._answered_epoch = 0  # the last epoch a call came back from
        self._current: _HostEpoch | None = None
        self._final: str | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Make calls until ``aclose``; start it in a task group before the session."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            task_status.started()
            await self._closed.wait()
            tg.cancel_scope.cancel()
        self._task_group = None

    async def aclose(self) -> None:
        """Stop making calls (from any task); idempotent."""
        if self._current is not None:
            self._current.end("the bridge is stopping")
        self._closed.set()

    async def next_channel(self) -> anyio.abc.ByteStream:
        if self._final is not None:
            raise NoChannel(self._final, final=True)
        if self._task_group is None or self._closed.is_set():
            raise NoChannel("the mailbox transport is not running", final=True)
        self._epoch += 1
        self.stats.epochs += 1
        if self._current is not None:
            self._current.end("a newer epoch replaced it")
            if self._answered_epoch != self._current.epoch:
                # Not one call of the last epoch came back: try one before
                # offering another, so the session's resume deadline counts.
                try:
                    await self.call(self._epoch, 0, b"", wait=0.0)
                except _CallFailed as exc:
                    raise NoChannel(str(exc), final=exc.final) from None
        self._current = _HostEpoch(self, self._epoch)
        self._task_group.start_soon(self._current.pump)
        return self._current

    async def call(
        self, epoch: int, number: int, data: bytes, wait: float | None = None
    ) -> tuple[int, bytes]:
        """One control-plane call: hand over ``data``, get the sandbox's answer."""
        options = self.options
        wait = options.wait if wait is None else wait
        argv = [
            *self.command, "--session", self._session_hex, "--epoch", str(epoch),
            "--in", str(number), "--wait", str(math.ceil(wait * 1000)),
            "--max-out", str(self._batch_bytes),
        ]  # fmt: skip
        stdin = data if number else None
        try:
            if len(data) > options.inline_bytes:
                path = f"{self._upload_dir}/in-{epoch}-{number}"
                self.stats.uploads += 1
                await self.sandbox.write_file(path, data)
                argv += ["--input", path]
                stdin = None
            self.stats.calls += 1
            result = await self.sandbox.run(
                argv, stdin=stdin, env=self.env, timeout=wait + options.call_timeout
            )
        except SandboxError as exc:
            self.stats.failed += 1
            raise _CallFailed(f"a call failed: {exc}") from None
        if result.exit_code != 0:
            self.stats.failed += 1
            said = result.stderr.decode(errors="replace").strip()[-300:]
            if result.exit_code == EXIT_NO_DAEMON:
                self._final = f"the sandbox side is not running ({said})"
                raise _CallFailed(self._final, final=True)
            raise _CallFailed(f"a call ended with status {result.exit_code}: {said}")
        try:
            answer = self._parse(result.stdout)
        except _CallFailed as exc:
            self.stats.failed += 1
            if exc.cut and self._batch_bytes > 4096:
                # The provider cuts output shorter than our batches: use smaller ones.
                self._batch_bytes //= 2
            raise
        self._answered_epoch = epoch
        return answer

    def _parse(self, stdout: bytes) -> tuple[int, bytes]:
        decoder = ArmorDecoder(self._batch_bytes + _NUMBER.size)
        try:
            decoder.receive_data(stdout.decode("ascii"))
            decoder.receive_data("")
            batch = decoder.next_batch()
            rest = decoder.next_batch()
        except UnicodeDecodeError:
            raise _CallFailed("a call's answer was not text: damaged in transit") from None
        except Exception as exc:  # the armor's RemoteProtocolError: cut or damaged
            cut = not stdout.endswith(b"\n")
            raise _CallFailed(
                f"a call's answer ({len(stdout)} bytes) was {'cut short' if cut else 'damaged'}:"
                f" {exc}",
                cut=cut,
            ) from None
        if not isinstance(batch, bytes) or rest is not END_OF_INPUT or len(batch) < 8:
            raise _CallFailed("a call answered with no batch, or more than one")
        (number,) = _NUMBER.unpack_from(batch)
        return number, batch[_NUMBER.size :]
