"""Harness clients with ``execute_command`` / ``read_file`` / ``upload_bytes``."""

from __future__ import annotations

import base64
import math
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from .base import (
    Command,
    CommandResult,
    CommandTimeout,
    LiveProcess,
    NotSupported,
    SandboxError,
    _shell,
    _text,
)

T = TypeVar("T")


class CommandOutput(Protocol):
    """What a harness client's ``execute_command`` answers (text or bytes)."""

    @property
    def exit_code(self) -> int | None: ...

    @property
    def stdout(self) -> str | bytes | None: ...

    @property
    def stderr(self) -> str | bytes | None: ...


class HarnessClient(Protocol):
    """The shape of harness sandbox clients this project wraps (called by name)."""

    async def execute_command(
        self, sandbox_id: str, command: str, timeout: float | None = ...
    ) -> CommandOutput: ...

    async def read_file(self, sandbox_id: str, file_path: str) -> object: ...

    async def upload_bytes(
        self, sandbox_id: str, file_path: str, file_bytes: bytes, filename: str
    ) -> object: ...


class HarnessSandbox:
    """Wraps a harness client (``execute_command`` / ``read_file`` / ``upload_bytes``).

    Commands become one shell string; stdin travels base64-encoded inside it,
    since such clients take no input stream. No live process: the mailbox
    transport serves these. Every call passes its arguments by name
    (``sandbox_id``, ``command``, ``timeout``; ``file_path``, ``file_bytes``,
    ``filename``), and results may be ``str`` or ``bytes``.
    """

    live_processes = False

    def __init__(self, client: HarnessClient, sandbox_id: str, workdir: str = "/tmp") -> None:
        self.client = client
        self.sandbox_id = sandbox_id
        self.workdir = workdir
        self.name = f"harness sandbox {sandbox_id}"

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        line = shlex.join(["cd", cwd or self.workdir]) + " && "
        if env:
            line += shlex.join(["export", *[f"{k}={v}" for k, v in env.items()]]) + " && "
        body = _shell(command)
        if stdin is not None:
            encoded = base64.b64encode(stdin).decode()
            line += f"printf %s {encoded} | base64 -d | ( {body} )"
        else:
            line += f"( {body} )"
        result = await self._call(
            "execute_command",
            lambda: self.client.execute_command(
                sandbox_id=self.sandbox_id,
                command=line,
                # Whole seconds, as such clients take them (prime-sandboxes: int).
                timeout=None if timeout is None else math.ceil(timeout),
            ),
        )
        status = getattr(result, "exit_code", None)
        if status is None:  # not a success: nothing says the command ran at all
            raise SandboxError(
                f"{self.name}: execute_command answered no exit_code ({type(result).__name__});"
                " the client must report the command's exit status"
            )
        return CommandResult(
            int(status),
            _as_bytes(getattr(result, "stdout", b"")),
            _as_bytes(getattr(result, "stderr", b"")),
        )

    async def write_file(self, path: str, data: bytes) -> None:
        await self._call(
            "upload_bytes",
            lambda: self.client.upload_bytes(
                sandbox_id=self.sandbox_id,
                file_path=path,
                file_bytes=data,
                filename=os.path.basename(path),
            ),
        )

    async def read_file(self, path: str) -> bytes:
        """The file's exact bytes, through ``base64`` in a command rather than
        the client's ``read_file``: clients answer text (decoded one way or
        another, sometimes cut short), which cannot carry arbitrary bytes."""
        result = await self.run(["base64", path])
        if result.exit_code != 0:
            raise SandboxError(f"{self.name}: cannot read {path}: {_text(result.stderr)}")
        try:
            return base64.b64decode(b"".join(result.stdout.split()), validate=True)
        except ValueError:
            raise SandboxError(f"{self.name}: reading {path} gave no base64 back") from None

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        raise NotSupported(f"{self.name} has no live processes; use the mailbox transport")

    async def aclose(self) -> None:
        pass

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """The one place a harness client's own exceptions become ours. The
        arguments go by name, the names the common clients use."""
        try:
            return await call()
        except Exception as exc:
            # Clients name their timeouts differently; all of them mean this.
            if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
                raise CommandTimeout(f"{self.name}: {method} timed out ({exc})") from None
            raise SandboxError(f"{self.name}: {method} failed: {exc!r}") from exc


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise SandboxError(f"expected str or bytes from the harness client, got {type(value).__name__}")
