"""The mailbox transport: a bridge over control planes that only run commands.

Some sandbox providers offer no live process: only "run this command and
give me its output" and "write this file". Over those, a channel is an
**epoch** of calls. Each call runs ``sandbox_calls.py``'s ``mailbox`` in the sandbox, which
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
  ``upload_input`` off, all of it does. While operations fail, a small
  request's response rides in the call that goes to wait next instead of
  an upload of its own (``linger``): each operation saved is a failure
  avoided.
* **Calls in flight** (``max_calls``). Each call says how many calls may
  wait in the sandbox at once; one that arrives makes the older ones
  beyond that return at once with what there is. Idle, one waits. While
  data flows, with uploads, all of them wait together (output that comes
  while one is on its way back finds the next); with input in calls, one
  waits and the others carry input. Batches are numbered both ways and put
  back in order.
* **Repair within the epoch.** The sandbox side numbers its output by byte
  offset and keeps it until a call of the host says it holds it (``--got``);
  a call whose answer was lost, cut or damaged (lengths and CRCs tell) is
  made again, asking for the output from the last offset the host holds
  (``--rewind``). Input batches are numbered, so one sent twice (its call
  ran, its answer was lost) is applied once; a failed upload is made again.
  So every call that gets an answer through makes progress, and what the
  host holds only grows. Output the host was never given back (code inside
  took it with a call of its own) is handed out again to the next waiting
  call once it has gone unacknowledged for ``_RESEND_AFTER`` seconds.
* **Exactly once across epochs.** Only repeated failures (``_FAILURES_TO_END``
  in a row), a stale epoch or output that cannot be had again end an epoch:
  the session then opens the next one and resumes, which resends
  everything unacknowledged, and the receiving core drops what it already
  has. A half batch is never applied.
* **Batches that fit.** An answer that comes back cut halves the output
  batch; full answers that come back whole grow it again, more slowly each
  time growing led straight to a cut (a provider's fixed output limit).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc

from bridgeproto.wire import END_OF_INPUT, ArmorDecoder

from .. import sandbox_calls
from ..sandbox_calls import EXIT_NO_DAEMON, EXIT_STALE, channel_dir
from ..sandboxes import SandboxClient, SandboxError, check_result
from . import NoChannel
from .mailbox_epoch import _OFFSET, _UPLOAD, spool_dir
from .mailbox_host_epoch import _CallFailed, _HostEpoch
from .mailbox_options import MailboxOptions as MailboxOptions
from .mailbox_options import MailboxStats as MailboxStats
from .transport import ChannelPlace

_MIN_BATCH = 4096  # the smallest output batch cut answers shrink it to
_GROW_AFTER = 4  # full answers in a row before the batch grows again (at first)
_CLOSING_WAIT = 3.0  # seconds a stopping bridge gives the session to close its epoch


def call_command(python: str = "python3") -> list[str]:
    """The argv of a call (``sandbox_calls.py``'s ``mailbox``)."""
    return sandbox_calls.command_line(python, "mailbox")


def host_channels(place: ChannelPlace, options: MailboxOptions | None) -> MailboxChannels:
    """The mailbox transport's host end (see ``registry.MAILBOX``)."""
    command = call_command(place.python)
    return MailboxChannels(place.sandbox, command, place.session_id, place.env, options)


class MailboxChannels:
    """The host's channels over calls; each ``next_channel`` starts an epoch.

    Its ``run`` method must be running (it owns the tasks that make calls).
    ``command`` runs a call in the sandbox (``call_command``).
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
        batch = self.options.batch_bytes
        self.stats = MailboxStats(batch_bytes=batch, smallest_batch_bytes=batch)
        self._session_hex = session_id.hex()
        self._upload_dir = channel_dir(session_id)
        self._spool = spool_dir(session_id)
        self._batch_bytes = self.options.batch_bytes
        self._grow_after = _GROW_AFTER  # full answers in a row before the batch doubles
        self._full_in_row = 0
        self._grew = False  # the batch's size came from growing
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
        """Stop making calls (from any task); idempotent. The session closes
        its epoch itself as it ends, with one last call that carries its
        final frames and answers every call waiting in the sandbox: that is
        given a moment first, so a stop neither waits out a long-poll nor
        breaks the channel under the session."""
        current = self._current
        if current is not None:
            with anyio.move_on_after(_CLOSING_WAIT):
                while current.ended is None:
                    await current.wait_for_change()
            current.end("the bridge is stopping")
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
                    start, answer = await self.call(self._epoch, 0, b"", wait=0.0)
                except _CallFailed as exc:
                    self.stats.failed += 1
                    self.stats.last_failure = str(exc)
                    raise NoChannel(str(exc), final=exc.final) from None
                epoch.inbox.add(start, answer)
        self._current = epoch
        self._task_group.start_soon(epoch.pump)
        return epoch

    async def call(
        self, epoch: int, number: int, data: bytes, *, got: int = 0, rewind: bool = False,
        wait: float | None = None, waiting: int = 1,
    ) -> tuple[int, bytes]:  # fmt: skip
        """One control-plane call: hand over ``data``, say the output before
        ``got`` arrived (``rewind``: and what came after it was lost), get the
        sandbox's answer: where its bytes start, and the bytes. ``waiting``:
        calls that may wait in the sandbox at once, this one too; 0: none,
        the host is closing the epoch."""
        options = self.options
        wait = options.wait if wait is None else wait
        max_out = self._batch_bytes
        argv = [
            *self.command, "--session", self._session_hex, "--epoch", str(epoch),
            "--in", str(number), "--got", str(got), "--wait", str(math.ceil(wait * 1000)),
            "--max-out", str(max_out), "--waiting", str(waiting),
        ]  # fmt: skip
        if rewind:
            argv.append("--rewind")
        stdin = data if number else None
        try:
            if len(data) > options.inline_bytes:
                path = f"{self._upload_dir}/in-{epoch}-{number}"
                self.stats.uploads += 1
                await self.sandbox.write_file(path, data)
                argv += ["--input", path]
                stdin = None
            self.stats.calls += 1
            result = check_result(
                await self.sandbox.run(
                    argv, stdin=stdin, env=self.env, timeout=wait + options.call_timeout
                )
            )
        except SandboxError as exc:
            raise _CallFailed(f"a call failed: {exc}") from None
        except TypeError as exc:  # the client returned the wrong types: no call will do
            self._final = str(exc)
            raise _CallFailed(self._final, final=True) from None
        if result.exit_code != 0:
            said = result.stderr.decode(errors="replace").strip()[-300:]
            if result.exit_code == EXIT_NO_DAEMON:
                self._final = f"the sandbox side is not running ({said})"
                raise _CallFailed(self._final, final=True)
            raise _CallFailed(
                f"a call ended with status {result.exit_code}: {said}",
                stale=result.exit_code == EXIT_STALE,
            )
        try:
            answer = self._parse(result.stdout, max_out)
        except _CallFailed as exc:
            if exc.cut:
                self._shrink_batch(max_out)
            raise
        self._answered_epoch = epoch
        if len(answer[1]) >= max_out:
            self._full_answer(max_out)
        return answer

    def _shrink_batch(self, size: int) -> None:
        """An answer of ``size`` bytes at most came back cut: halve the batch.
        If it had just grown to that size, wait longer before growing again."""
        if size < self._batch_bytes:
            return  # a smaller batch is in use already
        if self._grew:
            self._grow_after = min(self._grow_after * 2, 64)
        self.stats.cut += 1
        self._batch_bytes = self.stats.batch_bytes = max(_MIN_BATCH, size // 2)
        self.stats.smallest_batch_bytes = min(self.stats.smallest_batch_bytes, self._batch_bytes)
        self._grew = False
        self._full_in_row = 0

    def _full_answer(self, size: int) -> None:
        """A full batch came back whole: after enough in a row, grow it again."""
        if size < self._batch_bytes:
            return  # asked for before the batch grew
        self._full_in_row += 1
        if self._grew:
            self._grow_after = _GROW_AFTER  # the size it grew to holds
            self._grew = False
        if self._full_in_row >= self._grow_after and self._batch_bytes < self.options.batch_bytes:
            self._batch_bytes = min(self.options.batch_bytes, self._batch_bytes * 2)
            self.stats.batch_bytes = self._batch_bytes
            self._grew = True
            self._full_in_row = 0

    async def upload(self, epoch: int, number: int, data: bytes) -> None:
        """Upload input batch ``number`` to the sandbox side's spool."""
        blob = _UPLOAD.pack(epoch, number, len(data), zlib.crc32(data)) + data
        self.stats.uploads += 1
        try:
            with anyio.fail_after(self.options.call_timeout):
                await self.sandbox.write_file(f"{self._spool}/{epoch}-{number}", blob)
        except (SandboxError, TimeoutError) as exc:
            raise _CallFailed(f"an upload failed: {str(exc) or 'it took too long'}") from None

    def _parse(self, stdout: bytes, max_out: int) -> tuple[int, bytes]:
        decoder = ArmorDecoder(max_out + _OFFSET.size)
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
        (start,) = _OFFSET.unpack_from(batch)
        return start, batch[_OFFSET.size :]
