"""The user's command in a sandbox, with its output on ours (``run``, ``demo``).

Any ``SandboxClient`` will do. One entered by a host command runs it as a
host process in a session of its own, on this terminal's streams, so its
output shows as it comes and a signal reaches it through its process
group. Any other client runs it with one ``run`` call: its output shows
when the call returns (a control plane answers whole), and stopping it
cancels the call; what it started inside ends with the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio

from .processes import HostProcess
from .sandboxes import HostCommandSandbox, SandboxClient, SandboxError, check_result

__all__ = [
    "Foreground",
    "start_foreground",
]


class Foreground(Protocol):
    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int:
        """Its exit status, once it has exited."""
        ...

    def signal(self, signum: int) -> None:
        """Pass a signal on, where the sandbox can."""

    async def stop(self) -> None:
        """Make sure it has ended (after ``wait`` was cancelled, say)."""


def start_foreground(
    sandbox: SandboxClient, argv: Sequence[str], env: Mapping[str, str], cwd: str | None
) -> Foreground:
    if isinstance(sandbox, HostCommandSandbox):
        process = sandbox.start(
            list(argv), env=env, cwd=cwd, stdin=None, stdout=None, stderr=None,
            start_new_session=True,  # the terminal's signals come to us, not to it
        )  # fmt: skip
        return _HostProcessCommand(process)
    return _CalledCommand(sandbox, argv, env, cwd)


class _HostProcessCommand:
    def __init__(self, process: HostProcess) -> None:
        self.process = process

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    async def stop(self) -> None:
        """TERM to its process group, KILL two seconds later (a sandbox's own
        processes die with the sandbox)."""
        self.signal(signal.SIGTERM)
        with anyio.move_on_after(2):
            await self.process.wait()
        self.signal(signal.SIGKILL)
        await self.process.wait()
        await self.process.aclose()


class _CalledCommand:
    def __init__(
        self, sandbox: SandboxClient, argv: Sequence[str], env: Mapping[str, str], cwd: str | None
    ) -> None:
        self.sandbox = sandbox
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self._code: int | None = None
        self._called = False
        self._ended = anyio.Event()

    @property
    def returncode(self) -> int | None:
        return self._code

    async def wait(self) -> int:
        if self._called:  # one call only: the command must not run twice
            await self._ended.wait()
            if self._code is None:
                raise SandboxError(f"{self.sandbox.name}: the command's call was cancelled")
            return self._code
        self._called = True
        try:
            result = check_result(
                await self.sandbox.run(self.argv, env=self.env, cwd=self.cwd, timeout=None)
            )
            for stream, data in ((sys.stdout, result.stdout), (sys.stderr, result.stderr)):
                stream.flush()
                stream.buffer.write(data)
                stream.buffer.flush()
            self._code = result.exit_code
        finally:
            self._ended.set()
        return self._code

    def signal(self, signum: int) -> None:
        """Nothing: a call cannot be signalled; ``stop`` (the caller's cancel) ends it."""

    async def stop(self) -> None:
        """Nothing more: the call was cancelled, or it returned."""
