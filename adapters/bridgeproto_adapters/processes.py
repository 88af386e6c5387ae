"""Host processes the bridge starts, with nothing of the host they were not given.

Every process that enters a sandbox starts here: holders, commands, channel
processes, mailbox calls. The event loops' own launchers are not used,
because they differ in what a child inherits (uvloop's leaves it every
descriptor this process holds that is not close-on-exec, and the pipes of
other children started at the same moment), and asyncio's keeps a thread
per live child. Here:

- the child gets descriptors 0-2 and ``pass_fds``, nothing else, on every
  event loop;
- its environment is exactly ``env`` when one is given (a program name
  without a slash is still looked up on this process's ``PATH``, since it is
  a host program);
- its end is awaited on a pidfd (Linux 5.3 and later), with no thread and
  no process-wide child watcher.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc
import anyio.lowlevel

from .streams import Descriptor

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL


class _PipeReader(anyio.abc.ByteReceiveStream):
    def __init__(self, fd: int) -> None:
        self.descriptor = Descriptor(fd)

    @property
    def read_descriptor(self) -> Descriptor:
        return self.descriptor

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.descriptor.read(max_bytes)

    async def aclose(self) -> None:
        self.descriptor.close()
        await anyio.lowlevel.checkpoint()


class _PipeWriter(anyio.abc.ByteSendStream):
    def __init__(self, fd: int) -> None:
        self.descriptor = Descriptor(fd)

    @property
    def write_descriptor(self) -> Descriptor:
        return self.descriptor

    async def send(self, item: bytes) -> None:
        await self.descriptor.write(item)

    async def aclose(self) -> None:
        self.descriptor.close()
        await anyio.lowlevel.checkpoint()


class HostProcess(anyio.abc.Process):
    """A child of this process, as anyio's ``Process``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._stdin = None if popen.stdin is None else _PipeWriter(_take(popen.stdin))
        self._stdout = None if popen.stdout is None else _PipeReader(_take(popen.stdout))
        self._stderr = None if popen.stderr is None else _PipeReader(_take(popen.stderr))
        try:
            self._pidfd: Descriptor | None = Descriptor(os.pidfd_open(popen.pid))
        except (AttributeError, OSError):  # an older kernel: a thread waits instead
            self._pidfd = None
        self._waiting: anyio.Event | None = None  # set when the waiting task stops

    async def wait(self) -> int:
        while (code := self._popen.poll()) is None:
            if self._waiting is not None:  # another task waits: wait for it
                await self._waiting.wait()
                continue
            self._waiting = anyio.Event()
            try:
                if self._pidfd is not None:
                    with contextlib.suppress(anyio.ClosedResourceError):  # another saw the end
                        await self._pidfd.wait(readable=True)
                else:
                    await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
            finally:
                waiting, self._waiting = self._waiting, None
                waiting.set()
        self._close_pidfd()
        return code

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._pidfd.close()

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:  # never a reaped pid, which may be another's now
            self._popen.send_signal(sig)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def stdin(self) -> anyio.abc.ByteSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stderr

    async def aclose(self) -> None:
        """Close the pipes and wait for the end (killing it if cancelled)."""
        for pipe in (self._stdin, self._stdout, self._stderr):
            if pipe is not None:
                pipe.descriptor.close()
        try:
            await self.wait()
        except BaseException:
            self.kill()
            with anyio.CancelScope(shield=True):
                await self.wait()
            raise


def _take(file: object) -> int:
    """The descriptor of one of Popen's pipe files, which lets go of it."""
    fd = os.dup(file.fileno())  # type: ignore[attr-defined]
    file.close()  # type: ignore[attr-defined]
    return fd


def start_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    stdin: int | None = PIPE,
    stdout: int | None = PIPE,
    stderr: int | None = PIPE,
    pass_fds: Sequence[int] = (),
    start_new_session: bool = False,
) -> HostProcess:
    """Start ``argv`` with exactly ``env`` (None: this process's own) and no
    descriptor but 0-2 and ``pass_fds``. ``stdin``/``stdout``/``stderr``:
    ``PIPE``, ``DEVNULL``, a descriptor, or None for this process's own."""
    program = argv[0]
    if env is not None and os.sep not in program:
        program = shutil.which(program) or program  # a host program: the host's PATH
    popen = subprocess.Popen(
        [program, *argv[1:]], env=env, stdin=stdin, stdout=stdout, stderr=stderr,
        close_fds=True, pass_fds=tuple(pass_fds), start_new_session=start_new_session,
    )  # fmt: skip
    return HostProcess(popen)


async def run_process(
    argv: Sequence[str], *, env: Mapping[str, str] | None, input: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to its end with ``input`` on its stdin (else none):
    ``(exit status, stdout, stderr)``. Cancelled, it kills the process."""
    process = start_process(argv, env=env, stdin=DEVNULL if input is None else PIPE)
    output = {1: bytearray(), 2: bytearray()}

    async def drain(number: int, stream: anyio.abc.ByteReceiveStream | None) -> None:
        assert stream is not None
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                output[number] += await stream.receive()

    async def feed() -> None:
        assert process.stdin is not None and input is not None
        with contextlib.suppress(anyio.BrokenResourceError):
            await process.stdin.send(input)
        await process.stdin.aclose()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, 1, process.stdout)
            tg.start_soon(drain, 2, process.stderr)
            if input is not None:
                tg.start_soon(feed)
            code = await process.wait()
    finally:
        await process.aclose()
    return code, bytes(output[1]), bytes(output[2])
