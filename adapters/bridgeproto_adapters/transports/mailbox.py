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
* **Input as uploads, or in calls.** Frames for the sandbox that cannot
  wait (anything but acknowledgements, pings and pongs) are uploaded as a
  file to the sandbox side's spool while a call waits there; the sandbox
  side watches the spool (inotify, else polling) and applies each upload
  once it is whole. An upload starts no process in the sandbox, so it lands
  sooner than a call would. Other input rides in the next call (on its
  stdin when small, in a file uploaded just before when large); with
  ``upload_input`` off, all of it does.
* **Calls in flight** (``max_calls``). Each call says how many calls may
  wait in the sandbox at once; one that arrives makes the older ones
  beyond that return at once with what there is. Idle, one waits. While
  data flows, with uploads, all of them wait together (output that comes
  while one is on its way back finds the next); with input in calls, one
  waits and the others carry input. Batches are numbered both ways and put
  back in order.
* **Exactly once.** When a call or an upload fails (before it ran, or
  after, with its answer lost) or an answer or an upload is cut or damaged
  (lengths and CRCs tell), the epoch ends: the session opens the next one
  and resumes, which resends everything unacknowledged, and the receiving
  core drops what it already has. A half batch is never applied.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pathlib
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import anyio.abc
import attrs

from bridgeproto.wire import END_OF_INPUT, ArmorDecoder, FrameType, armor

from .. import mailbox_call
from ..errors import STREAM_ERRORS
from ..mailbox_call import EXIT_NO_DAEMON, channel_dir
from ..sandboxes import SandboxClient, SandboxError
from ..streams import FdStream
from . import Acceptor, NoChannel

_NUMBER = struct.Struct(">Q")  # an answer's batch number, before its bytes
_QUIET = frozenset({FrameType.ACK, FrameType.PING, FrameType.PONG})
_MAX_INPUT = 256 << 20  # what one call may hand the sandbox side, at most
_SMALL = 64 << 10  # output of this size is a request or two, not a bulk transfer
# An uploaded input batch: epoch, batch number, length and CRC-32 of the bytes after it.
_UPLOAD = struct.Struct(">QQQI")
_GATHER = 0.001  # seconds without new output before an upload goes
_SPOOL_POLL = 1.0  # seconds between looks at the spool, besides inotify's word (0.05 without)


def spool_dir(session_id: bytes) -> str:
    """Where the host uploads input batches for the sandbox side."""
    return os.path.join(channel_dir(session_id), "spool")


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

    def take_input(self, number: int, data: bytes) -> None:
        if number:
            self.inbox.add(number, data)
            self.changed()

    def call_arrived(self, waiting: int) -> None:
        """A call arrived that may wait with ``waiting - 1`` others: the calls
        waiting before those answer now. The host asks for one call waiting
        while input rides in calls (its other places stay free for input),
        and for a spare while data flows and input is uploaded (output that
        comes while one call is on its way back finds the next one here)."""
        self._released_below = max(self._released_below, self._tickets - max(waiting, 1) + 1)
        self.changed()

    async def answer(self, wait: float, max_out: int) -> bytes:
        """Wait for urgent output (or ``wait`` seconds, or the next call's
        arrival); the armored answer line, or ``STALE`` if the epoch ended."""
        ticket, self._tickets = self._tickets, self._tickets + 1
        with anyio.move_on_after(wait):
            while self.ended is None and not self.outbox.urgent and ticket >= self._released_below:
                await self.wait_for_change()
        if self.ended is not None:
            return mailbox_call.STALE  # the host resumes on a new epoch
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


# The calls' socket is served with a plain non-blocking socket, and each call
# as an FdStream (anyio's wait_readable/wait_writable), rather than with
# anyio's Unix socket streams: a wait of those that is cancelled just as its
# socket turns ready fails inside the event loop, and this socket's waits
# are cancelled whenever an epoch or the bridge ends.


async def _accept(listener: socket.socket) -> FdStream:
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            await anyio.wait_readable(listener)
            continue
        fd = conn.detach()
        return FdStream(fd, fd, owned=True)


async def serve_mailbox(
    acceptor: Acceptor,
    session_id: bytes,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Take calls on the session's mailbox socket and uploads in its spool.
    A newer epoch starts a new channel (the session resumes on it); a call
    of an older or ended one is told it is stale."""
    spool = spool_dir(session_id)
    os.makedirs(spool, 0o700, exist_ok=True)
    current: _SandboxEpoch | None = None

    async def enter(epoch: int) -> _SandboxEpoch | None:
        """The stream of ``epoch``, started if it is new; None if it is over."""
        nonlocal current
        if current is None or epoch > current.epoch:
            current = _SandboxEpoch(epoch)
            await acceptor.offer(current)  # the old epoch's waiting calls return now
        if epoch < current.epoch or current.ended is not None:
            return None
        return current

    async def take_call(conn: FdStream) -> None:
        async with conn:
            try:
                head = await _receive_exactly(conn, mailbox_call.REQUEST.size)
                fields = mailbox_call.REQUEST.unpack(head)
                epoch, number, wait_ms, max_out, waiting, length = fields
                if length > _MAX_INPUT or max_out < 1:
                    return
                data = await _receive_exactly(conn, length)
            except STREAM_ERRORS:
                return  # not a call, or one that gave up: nothing was applied
            epoch_stream = await enter(epoch)
            if epoch_stream is None:
                line = mailbox_call.STALE
            else:
                epoch_stream.take_input(number, data)
                if waiting == 0:
                    epoch_stream.answer_all_now()
                else:
                    epoch_stream.call_arrived(waiting)
                line = await epoch_stream.answer(wait_ms / 1000, max_out)
            # A call stopped meanwhile: the host sees it failed, and resumes.
            with contextlib.suppress(*STREAM_ERRORS):
                await conn.send(line)

    path = mailbox_call.mailbox_socket(session_id)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.setblocking(False)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(128)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_spool, spool, enter)
            task_status.started()
            while True:
                tg.start_soon(take_call, await _accept(listener))


def _inotify(directory: str) -> int | None:
    """A descriptor that turns readable when a file in ``directory`` is
    written and closed, or moved in; None where the system offers none."""
    in_close_write, in_moved_to = 0x8, 0x80
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(directory), in_close_write | in_moved_to) < 0:
        os.close(fd)
        return None
    return int(fd)


async def _watch_spool(spool: str, enter: Callable[[int], Awaitable[_SandboxEpoch | None]]) -> None:
    """Apply the host's uploads as they land. inotify says when; a look now
    and then besides catches what it cannot see (a provider writing from
    outside this kernel's view of the file)."""
    fd = _inotify(spool)
    try:
        while True:
            for name in os.listdir(spool):
                if not name.startswith("."):  # a name being written, to be renamed
                    await _take_upload(os.path.join(spool, name), enter)
            if fd is None:
                await anyio.sleep(0.05)
                continue
            with anyio.move_on_after(_SPOOL_POLL):
                await anyio.wait_readable(fd)
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 1 << 16):  # drain: the names are read from the spool
                        pass
    finally:
        if fd is not None:
            os.close(fd)


async def _take_upload(path: str, enter: Callable[[int], Awaitable[_SandboxEpoch | None]]) -> None:
    """Apply one uploaded batch once it is whole; drop it if its epoch is over."""
    try:
        with open(path, "rb") as file:
            blob = file.read(_UPLOAD.size + _MAX_INPUT + 1)
    except OSError:
        return
    if len(blob) < _UPLOAD.size:
        return  # still being written
    epoch, number, length, crc = _UPLOAD.unpack_from(blob)
    data = blob[_UPLOAD.size :]
    epoch_stream = await enter(epoch)
    if epoch_stream is not None and len(data) < length:
        return  # still being written
    with contextlib.suppress(OSError):
        os.unlink(path)
    if epoch_stream is None:
        return
    if len(data) > length or zlib.crc32(data) != crc:
        print(f"bridgeproto mailbox: {path} arrived damaged; ending epoch {epoch}", flush=True)
        epoch_stream.end("an upload arrived damaged")  # its calls answer stale: the host resumes
        return
    epoch_stream.take_input(number, data)


# ---------------------------------------------------------------- on the host


@attrs.frozen
class MailboxOptions:
    """How the host side uses the control plane.

    ``wait``: seconds a call may wait in the sandbox for output (an idle
    bridge costs one call per ``wait``). ``batch_bytes``: the most bytes one
    call brings back; keep its armored size (4/3 of it) under the provider's
    output limit. ``input_bytes``: the most one call takes in (uploads are
    not cut as output is). ``max_calls``: calls in flight at once, at least
    2 (one waits for output while another carries input or waits beside
    it), and uploads in flight at once.
    ``upload_input``: while a call waits in the sandbox, upload input that
    cannot wait to the sandbox side's spool instead of making another call
    (it lands sooner: an upload starts no process); off, all input rides in
    calls, which costs fewer operations per request and more latency.
    ``inline_bytes``: input up to this size rides in a call itself;
    larger input is uploaded as a file first (one more operation).
    ``linger`` (without ``upload_input``): when output came back and no call
    waits, how long to hold the next call for input (a fast upstream's
    answer then costs no call of its own).
    """

    wait: float = 15.0
    batch_bytes: int = 1 << 20
    input_bytes: int = 8 << 20
    max_calls: int = 2
    upload_input: bool = True
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
    uploads: int = 0  # input uploaded, to the spool or for a call
    failed: int = 0  # calls and uploads that failed, or came back cut or damaged
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
                    if self._request_out and not self._in_flight and not self.outbox.urgent:
                        # A request has likely just gone upstream: a fast answer
                        # rides in the next call instead of a call of its own.
                        self._request_out = False
                        with anyio.move_on_after(options.linger):
                            while self.ended is None and not self.outbox.urgent:
                                await self.wait_for_change()
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
                    await self._gathered()
                    if self.ended is None and not self._closing and self.outbox.urgent:
                        self._uploads += 1
                        tasks.start_soon(self._upload, *self._next_input())
                    continue
                await self.wait_for_change()
            tasks.cancel_scope.cancel()

    async def _gathered(self) -> None:
        """Let output that belongs together (a response's head and body, sent
        one after the other) gather into one upload: wait until none came for
        a millisecond, five at most."""
        for _ in range(5):
            with anyio.move_on_after(_GATHER) as quiet:
                await self.wait_for_change()
            if quiet.cancelled_caught:
                return

    def _next_input(self) -> tuple[int, bytes]:
        """The next call's input and its number (0: none)."""
        data = self.outbox.take(self._owner.options.input_bytes)
        if not data:
            return 0, b""
        number, self._next_in = self._next_in, self._next_in + 1
        return number, data

    async def _call(self, waiting: int, number: int, data: bytes) -> None:
        try:
            answer_number, answer = await self._owner.call(
                self.epoch, number, data, waiting=waiting
            )
        except _CallFailed as exc:
            self.end(str(exc))
            return
        finally:
            self._in_flight -= 1
        self._streak = self._streak + 1 if answer else 0
        # (Bulk does not wait for answers; uploads carry them without waiting.)
        self._request_out = 0 < len(answer) < _SMALL and not self._owner.options.upload_input
        if answer_number:
            self.inbox.add(answer_number, answer)
        self.changed()

    async def _upload(self, number: int, data: bytes) -> None:
        try:
            await self._owner.upload(self.epoch, number, data)
        except _CallFailed as exc:
            self.end(str(exc))
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
                with contextlib.suppress(_CallFailed):
                    self._in_flight += 1
                    try:
                        await self._owner.call(self.epoch, number, data, wait=0.0, waiting=0)
                    finally:
                        self._in_flight -= 1
                while (self._in_flight or self._uploads) and self.ended is None:
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
        self._spool = spool_dir(session_id)
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
        last, epoch = self._current, _HostEpoch(self, self._epoch)
        if last is not None:
            last.end("a newer epoch replaced it")
            if self._answered_epoch != last.epoch:
                # Not one call of the last epoch came back: try one of the
                # new epoch before offering it, so the session's resume
                # deadline counts. Its answer is the epoch's first.
                try:
                    number, answer = await self.call(self._epoch, 0, b"", wait=0.0)
                except _CallFailed as exc:
                    raise NoChannel(str(exc), final=exc.final) from None
                if number:
                    epoch.inbox.add(number, answer)
        self._current = epoch
        self._task_group.start_soon(epoch.pump)
        return epoch

    async def call(
        self, epoch: int, number: int, data: bytes, wait: float | None = None, waiting: int = 1
    ) -> tuple[int, bytes]:
        """One control-plane call: hand over ``data``, get the sandbox's answer
        (``waiting``: calls that may wait in the sandbox at once, this one
        too; 0: none, the host is closing the epoch)."""
        options = self.options
        wait = options.wait if wait is None else wait
        argv = [
            *self.command, "--session", self._session_hex, "--epoch", str(epoch),
            "--in", str(number), "--wait", str(math.ceil(wait * 1000)),
            "--max-out", str(self._batch_bytes), "--waiting", str(waiting),
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

    async def upload(self, epoch: int, number: int, data: bytes) -> None:
        """Upload input batch ``number`` to the sandbox side's spool."""
        blob = _UPLOAD.pack(epoch, number, len(data), zlib.crc32(data)) + data
        self.stats.uploads += 1
        try:
            with anyio.fail_after(self.options.call_timeout):
                await self.sandbox.write_file(f"{self._spool}/{epoch}-{number}", blob)
        except (SandboxError, TimeoutError) as exc:
            self.stats.failed += 1
            raise _CallFailed(f"an upload failed: {str(exc) or 'it took too long'}") from None

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
