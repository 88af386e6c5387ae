"""The sandbox side of the mailbox transport (see ``mailbox.py``): the
private socket the host's calls reach, the spool its uploads land in, and
the epoch's output kept by offset until the host holds it. The daemon
imports this half only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from bridgeproto.wire import armor

from .. import sandbox_calls
from ..errors import STREAM_ERRORS
from ..streams import FdStream, accept
from . import Acceptor
from .mailbox_epoch import _OFFSET, _UPLOAD, _EpochStream, _Reorder, _urgent, spool_dir

_MAX_INPUT = 256 << 20  # what one call may hand the sandbox side, at most
_SPOOL_POLL = 1.0  # seconds between looks at the spool, besides inotify's word (0.05 without)
_RESEND_AFTER = 2.0  # seconds output may go unacknowledged before a waiting call takes it again


class _SandboxEpoch(_EpochStream):
    """The sandbox side's end: output kept by offset until the host holds it."""

    inbox: _Reorder

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.inbox = _Reorder()
        self.kept = bytearray()  # output from ``acked`` on
        self.acked = 0  # the host said it holds everything before this
        self.sent = 0  # where the next answer starts
        self.handed = 0  # the furthest any answer reached
        self._urgent_until = 0  # output up to here holds something urgent
        self._unacked_since: float | None = None  # when output went out unacknowledged
        self._tickets = 0  # one per call that waits here
        self._released_below = 0  # calls with a lower ticket answer now

    def queue(self, item: bytes) -> None:
        self.kept += item
        if _urgent(item):
            self._urgent_until = self.acked + len(self.kept)

    def answer_all_now(self) -> None:
        """The host is closing this epoch: no call waits here any more."""
        self._released_below = 1 << 62
        self.changed()

    def take_input(self, number: int, data: bytes) -> None:
        if number:
            self.inbox.add(number, data)
            self.changed()

    def acknowledge(self, got: int, rewind: bool) -> None:
        """The host holds the output before ``got``; with ``rewind`` it lost
        what it was handed after that, so the next answer starts again where
        the host stands (or the furthest a call of the host's said it stood:
        a lower ``got`` comes from a call that was overtaken)."""
        got = min(got, self.handed)  # never beyond what was handed out
        if got > self.acked:
            del self.kept[: got - self.acked]
            self.acked = got
            self.sent = max(self.sent, got)
            self._unacked_since = time.monotonic() if self.handed > got else None
        if rewind:
            self.sent = self.acked
        self.changed()

    def call_arrived(self, waiting: int) -> None:
        """A call arrived that may wait with ``waiting - 1`` others: the calls
        waiting before those answer now. The host asks for one call waiting
        while input rides in calls (its other places stay free for input),
        and for a spare while data flows and input is uploaded (output that
        comes while one call is on its way back finds the next one here)."""
        self._released_below = max(self._released_below, self._tickets - max(waiting, 1) + 1)
        self.changed()

    def _resend_at(self) -> float | None:
        """When output handed out but not acknowledged is handed out again."""
        if self._unacked_since is None:
            return None
        return self._unacked_since + _RESEND_AFTER

    async def answer(self, wait: float, max_out: int) -> bytes:
        """Wait for urgent output (or ``wait`` seconds, or the next call's
        arrival, or output to hand out again); the armored answer line, or
        ``STALE`` if the epoch ended."""
        ticket, self._tickets = self._tickets, self._tickets + 1
        deadline = time.monotonic() + wait
        while self.ended is None and ticket >= self._released_below:
            if self._urgent_until > self.sent:
                await self.gathered()
                break
            now, resend_at = time.monotonic(), self._resend_at()
            if resend_at is not None and now >= resend_at:
                self.sent = self.acked  # lost on its way, or taken by another
                self._unacked_since = now
                break
            until = deadline if resend_at is None else min(deadline, resend_at)
            if now >= until:
                break
            with anyio.move_on_after(until - now):
                await self.wait_for_change()
        if self.ended is not None:
            return sandbox_calls.STALE  # the host resumes on a new epoch
        start = self.sent
        data = bytes(self.kept[start - self.acked : start - self.acked + max_out])
        if data:
            self.sent += len(data)
            if self.handed <= self.acked:
                self._unacked_since = time.monotonic()
            self.handed = max(self.handed, self.sent)
        return armor(_OFFSET.pack(start) + data).encode("ascii")


async def _receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive(min(size - len(data), 1 << 20))
    return bytes(data)


# The calls' socket is served with a plain non-blocking socket, and each call
# as a descriptor (``streams.accept``), rather than with anyio's Unix socket
# streams: a wait of those that is cancelled just as its socket turns ready
# fails inside the event loop, and this socket's waits are cancelled
# whenever an epoch or the bridge ends.


async def serve_mailbox(
    acceptor: Acceptor,
    session_id: bytes,
    options: Mapping[str, Any] | None = None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Take calls on the session's mailbox socket and uploads in its spool.
    A newer epoch starts a new channel (the session resumes on it); a call
    of an older or ended one is told it is stale. (The mailbox transport's
    sandbox end, ``registry.MAILBOX``: its options are the host's only.)"""
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
                head = await _receive_exactly(conn, sandbox_calls.REQUEST.size)
                fields = sandbox_calls.REQUEST.unpack(head)
                epoch, number, got, wait_ms, max_out, waiting, rewind, length = fields
                if length > _MAX_INPUT or max_out < 1:
                    return
                data = await _receive_exactly(conn, length)
            except STREAM_ERRORS:
                return  # not a call, or one that gave up: nothing was applied
            epoch_stream = await enter(epoch)
            if epoch_stream is None:
                line = sandbox_calls.STALE
            else:
                epoch_stream.take_input(number, data)
                epoch_stream.acknowledge(got, bool(rewind))
                if waiting == 0:
                    epoch_stream.answer_all_now()
                else:
                    epoch_stream.call_arrived(waiting)
                line = await epoch_stream.answer(wait_ms / 1000, max_out)
            # A call stopped meanwhile: the host sees it failed, and resumes.
            with contextlib.suppress(*STREAM_ERRORS):
                await conn.send(line)

    path = sandbox_calls.mailbox_socket(session_id)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.setblocking(False)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(128)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_spool, spool, enter)
            task_status.started()
            while True:
                tg.start_soon(take_call, await accept(listener))


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
            try:
                names = os.listdir(spool)
            except FileNotFoundError:
                return  # the bridge is stopping and took its directory away
            for name in names:
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
