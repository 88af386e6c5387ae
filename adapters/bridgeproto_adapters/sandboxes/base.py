"""What every sandbox client is, and the base of those entered by a host command.

``SandboxClient`` is the small interface every backend implements (the
conformance checks in ``conformance.py`` hold each one to it);
``HostCommandSandbox`` is the base of the backends that enter the sandbox by
running a host command (bwrap, nsenter, an ``exec -i`` prefix). Backend
failures become the errors below in each backend's ``run`` (or the harness
wrapper's one ``except``), so callers see only these.
"""

from __future__ import annotations

import abc
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio
import anyio.abc
import attrs
from anyio.streams.stapled import StapledByteStream

from ..errors import BridgeError

Command = Sequence[str] | str  # an argv list, or a shell string run with sh -c


class SandboxError(BridgeError):
    """A sandbox operation failed; the message says what and how to fix it."""


class SandboxUnavailable(SandboxError):
    """The backend cannot run on this machine (a tool is missing, no permission)."""


class CommandTimeout(SandboxError):
    """A command did not finish within its timeout."""


class NotSupported(SandboxError):
    """The backend cannot do this (for example, no live processes)."""


@attrs.frozen
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class LiveProcess:
    """A process in the sandbox whose stdin and stdout are a byte stream."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self.stream: anyio.abc.ByteStream = StapledByteStream(process.stdin, process.stdout)

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    async def stop(self, grace: float = 2.0) -> int:
        """Terminate (then kill after ``grace`` seconds); idempotent."""
        if self._process.returncode is None:
            self._process.terminate()
            with anyio.move_on_after(grace):
                await self._process.wait()
            if self._process.returncode is None:
                self._process.kill()
        code = await self._process.wait()
        with anyio.CancelScope(shield=True):
            await self._process.aclose()
        return code


class SandboxClient(Protocol):
    """What the bridge needs from a sandbox."""

    name: str
    live_processes: bool  # whether open_process works (else the mailbox transport serves)

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def read_file(self, path: str) -> bytes: ...

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        """Start a live process; raises ``NotSupported`` where the sandbox cannot."""
        ...

    async def aclose(self) -> None: ...


def _argv(command: Command) -> list[str]:
    return ["sh", "-c", command] if isinstance(command, str) else list(command)


def _env_argv(env: Mapping[str, str] | None) -> list[str]:
    """``env -i`` with exactly these variables: nothing of the host leaks in."""
    variables = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return ["env", "-i", *[f"{k}={v}" for k, v in variables.items()]]


class HostCommandSandbox(abc.ABC):
    """A sandbox entered by running a host command (bwrap, nsenter, a prefix).

    Subclasses say how to wrap an argv (``wrap``) and where files live.
    """

    name = "sandbox"
    workdir = "/tmp"
    live_processes = True

    @abc.abstractmethod
    def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
        """The host argv that runs ``argv`` inside the sandbox."""

    def command_line(
        self, command: Command, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> list[str]:
        return self.wrap([*_env_argv(env), *_argv(command)], cwd)

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        argv = self.command_line(command, env=env, cwd=cwd)
        try:
            with anyio.fail_after(timeout):
                result = await anyio.run_process(
                    argv,
                    input=stdin,
                    stdin=subprocess.DEVNULL if stdin is None else None,
                    check=False,
                )
        except TimeoutError:
            raise CommandTimeout(
                f"{self.name}: {_short(command)} did not finish within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise SandboxUnavailable(f"{self.name}: cannot start {argv[0]}: {exc}") from None
        return CommandResult(result.returncode, result.stdout, result.stderr)

    async def write_file(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path) or "/"
        script = f"mkdir -p {shlex.quote(directory)} && cat > {shlex.quote(path)}"
        result = await self.run(script, stdin=data)
        if result.exit_code != 0:
            raise SandboxError(f"{self.name}: cannot write {path}: {_text(result.stderr)}")

    async def read_file(self, path: str) -> bytes:
        result = await self.run(["cat", path])
        if result.exit_code != 0:
            raise SandboxError(f"{self.name}: cannot read {path}: {_text(result.stderr)}")
        return result.stdout

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        argv = self.command_line(list(command), env=env)
        try:
            process = await anyio.open_process(argv, stderr=None)
        except OSError as exc:
            raise SandboxUnavailable(f"{self.name}: cannot start {argv[0]}: {exc}") from None
        return LiveProcess(process)

    async def aclose(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release what the sandbox holds."""

    def kill(self) -> None:  # noqa: B027 - most backends hold nothing to kill
        """Kill everything running in the sandbox now, where the backend can."""


def _text(data: bytes) -> str:
    return data.decode(errors="replace").strip()


def _shell(command: Command) -> str:
    """The command as one shell string."""
    return command if isinstance(command, str) else shlex.join(command)


def _short(command: Command) -> str:
    text = _shell(command)
    return text if len(text) < 80 else text[:77] + "..."
