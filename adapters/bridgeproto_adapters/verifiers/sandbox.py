"""``RuntimeSandbox``: any verifiers runtime as a bridgeproto ``SandboxClient``.

For harnesses that provision boxes with verifiers' runtimes (Docker, Podman,
Apptainer, Prime, Modal, E2B, subprocess) and want a bridge into one without
verifiers' rollout machinery. The runtime's contract is narrower than a
sandbox client's, so three things are made here: a working directory (``cd``
in a shell), input (base64 in the command line: the bridge passes at most
48 KiB this way, the mailbox's ``inline_bytes``) and a timeout (the call is
cancelled, which verifiers' runtimes take as "kill it"). A runtime answers
text, so stdout and stderr come back as its text re-encoded: exact for text
(the bridge's mailbox answers are ASCII armor), not for arbitrary bytes;
files move as bytes both ways.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence

import anyio
import anyio.abc

from ..sandboxes import (
    Command,
    CommandResult,
    CommandTimeout,
    LiveProcess,
    NotSupported,
    SandboxError,
)
from ..sandboxes.base import _argv
from .contract import RuntimeLike, RuntimeProcessLike


class RuntimeSandbox:
    """A verifiers runtime (started, not yet stopped) as a ``SandboxClient``.

    Starting and stopping the runtime stay its owner's business: ``aclose``
    releases nothing.
    """

    def __init__(self, runtime: RuntimeLike) -> None:
        self.runtime = runtime
        self.name = f"verifiers runtime {runtime.name}"
        self.live_processes = runtime.supports_live_processes

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        argv = _argv(command)
        if cwd is not None or stdin is not None:
            script = 'cd "$1" && shift && ' if cwd is not None else "shift && "
            if stdin is not None:
                encoded = base64.b64encode(stdin).decode()
                script += f"printf %s {encoded} | base64 -d | "
            argv = ["sh", "-c", script + 'exec "$@"', "sh", cwd or "", *argv]
        try:
            with anyio.fail_after(timeout):
                result = await self.runtime.run(argv, dict(env or {}))
        except TimeoutError:
            raise CommandTimeout(
                f"{self.name}: {shlex.join(argv)[:80]} did not finish within {timeout:g} s"
            ) from None
        except Exception as exc:  # the runtime's own errors, whatever its provider
            raise SandboxError(f"{self.name}: run failed: {exc!r}") from exc
        return CommandResult(
            result.exit_code,
            result.stdout.encode("utf-8", "surrogateescape"),
            result.stderr.encode("utf-8", "surrogateescape"),
        )

    async def write_file(self, path: str, data: bytes) -> None:
        try:
            await self.runtime.write(path, data)
        except Exception as exc:
            raise SandboxError(f"{self.name}: cannot write {path}: {exc}") from exc

    async def read_file(self, path: str) -> bytes:
        try:
            return await self.runtime.read(path)
        except Exception as exc:
            raise SandboxError(f"{self.name}: cannot read {path}: {exc}") from exc

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        if not self.live_processes:
            raise NotSupported(f"{self.name} has no live processes; use the mailbox transport")
        try:
            process = await self.runtime.open_process(list(command), dict(env or {}))
        except Exception as exc:
            raise SandboxError(f"{self.name}: cannot start {command[0]}: {exc}") from exc
        return RuntimeLiveProcess(process)

    async def aclose(self) -> None:
        pass


class RuntimeLiveProcess:
    """A verifiers ``RuntimeProcess`` as the bridge's ``LiveProcess``.

    A runtime process has no way to close its pipes, and the bridge's relay
    hands them on (the process may end while they carry on), so ``close``
    wakes a read waiting here itself, and ends input only where the process
    offers ``close_stdin`` (an ``OfflineRuntime``'s).
    """

    def __init__(self, process: RuntimeProcessLike) -> None:
        self._process = process
        self._stdout: AsyncIterator[bytes] = aiter(process.stdout)
        self._pending = b""
        self._closed = False
        self._reading: anyio.CancelScope | None = None
        self._code: int | None = None

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        await self._process.write(data)

    async def read(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            if self._closed:
                return b""
            with anyio.CancelScope() as self._reading:
                try:
                    self._pending = await anext(self._stdout)
                except StopAsyncIteration:
                    return b""
            if self._reading.cancelled_caught:  # closed under the reader
                return b""
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reading is not None:
            self._reading.cancel()
        close_stdin = getattr(self._process, "close_stdin", None)
        if close_stdin is not None and await self._process.poll() is None:
            await close_stdin()

    async def wait(self) -> int:
        if self._code is None:
            self._code = await self._process.wait()
        return self._code

    async def kill(self) -> None:
        if self._code is None and await self._process.poll() is None:
            await self._process.kill()
