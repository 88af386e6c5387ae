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
import contextlib
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio
import anyio.abc
import attrs
from anyio.streams.stapled import StapledByteStream

from ..errors import BridgeError
from ..processes import PIPE, HostProcess, run_process, start_process
from ..streams import Descriptor, read_descriptor, write_descriptor

Command = Sequence[str] | str  # an argv list, or a shell string run with sh -c
# The PATH of every command in a sandbox unless the caller gives one: the
# system's, never the host user's (whose directories need not exist inside).
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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


def check_result(result: object, method: str = "run") -> CommandResult:
    """``result`` if it is what a client's ``method`` must return; else a
    ``TypeError`` naming the method, the field and what it held instead."""
    for name, kind in (("exit_code", int), ("stdout", bytes), ("stderr", bytes)):
        value = getattr(result, name, None)
        if not isinstance(value, kind):
            held = f"{type(value).__name__} {value!r:.40}" if hasattr(result, name) else "nothing"
            raise TypeError(
                f"the sandbox client's {method}() returned {name} as {held}; it must return"
                f" a CommandResult with {name} as {kind.__name__}"
            )
    return result  # type: ignore[return-value]  # (any object with these fields will do)


class LiveProcess(Protocol):
    """A process in the sandbox that the bridge holds: bytes to its stdin,
    bytes from its stdout. This is all the bridge calls; errors from ``write``
    and ``read`` may be of any type (the bridge takes any as a broken stream)."""

    async def write(self, data: bytes) -> None:
        """All of ``data`` to its stdin."""
        ...

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of its stdout, as soon as there are any; ``b""``
        at the end of its output, and once ``close`` was called."""
        ...

    async def close(self) -> None:
        """The bridge is done with its streams: a ``read`` waiting wakes with
        ``b""`` (even if the process holds on), and its stdin ends where the
        provider can end it (the bridge kills it next anyway). Idempotent."""
        ...

    async def wait(self) -> int:
        """Its exit status, once it has exited."""
        ...

    async def kill(self) -> None:
        """Kill it at once; nothing if it has exited."""
        ...


async def stop_process(process: LiveProcess) -> int:
    """Close a live process's streams, kill it and return its status; the
    whole stop runs even in a cancelled scope, so nothing is left behind."""
    with anyio.CancelScope(shield=True):
        await process.close()
        await process.kill()
        code = await process.wait()
    return code


class PipedProcess:
    """A host process's pipes as a ``LiveProcess`` (the backends here start
    one per live process). ``stream`` offers the same pipes as one anyio byte
    stream, for code on the host that wants one."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self.stream: anyio.abc.ByteStream = StapledByteStream(process.stdin, process.stdout)

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def read_descriptor(self) -> Descriptor | None:
        """Its stdout's descriptor, where it is a pipe of ours (``streams.read_descriptor``)."""
        return read_descriptor(self._process.stdout)

    @property
    def write_descriptor(self) -> Descriptor | None:
        """Its stdin's descriptor, where it is a pipe of ours (``streams.write_descriptor``)."""
        return write_descriptor(self._process.stdin)

    async def write(self, data: bytes) -> None:
        await self.stream.send(data)

    async def read(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self.stream.receive(max_bytes)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""

    async def close(self) -> None:
        await self.stream.aclose()

    async def wait(self) -> int:
        return await self._process.wait()

    async def kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

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


class FilesThroughRun:
    """``write_file`` and ``read_file`` through ``run`` (``sh``, ``mkdir``, ``cat``
    and ``mv`` inside), for a client whose provider has only a command call."""

    name: str

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        raise NotImplementedError

    async def write_file(self, path: str, data: bytes) -> None:
        # Written under another name and renamed: nobody inside sees a part of it.
        directory = os.path.dirname(path) or "/"
        partial = shlex.quote(f"{directory.rstrip('/')}/.{os.path.basename(path)}.partial")
        script = (
            f"mkdir -p {shlex.quote(directory)} && cat > {partial} && mv -f {partial}"
            f" {shlex.quote(path)}"
        )
        result = await self.run(script, stdin=data)
        if result.exit_code != 0:
            raise SandboxError(f"{self.name}: cannot write {path}: {_text(result.stderr)}")

    async def read_file(self, path: str) -> bytes:
        result = await self.run(["cat", path])
        if result.exit_code != 0:
            raise SandboxError(f"{self.name}: cannot read {path}: {_text(result.stderr)}")
        return result.stdout


def _argv(command: Command) -> list[str]:
    return ["sh", "-c", command] if isinstance(command, str) else list(command)


@attrs.frozen
class Launch:
    """How to start a command in a sandbox: a host ``argv`` and the
    environment to start it with (None: the host's own, for a tool such as
    ``docker exec`` whose environment stays on the host)."""

    argv: list[str]
    env: Mapping[str, str] | None


class HostCommandSandbox(FilesThroughRun, abc.ABC):
    """A sandbox entered by running a host command (bwrap, nsenter, a prefix).

    Subclasses say how to wrap an argv (``wrap``) and where files live.

    What a command inside gets is built from nothing: ``SANDBOX_PATH`` (and
    ``HOME`` where the backend has one) and what the caller passes, no host
    variable and no descriptor but 0-2. ``enters_directly``: the host process
    itself becomes the command (nsenter, a local shell), so it is started
    with exactly that environment, and no step on the way ever holds one of
    the host's; else (a prefix such as ``docker exec -i``) the tool keeps
    the host's environment, which stays on the host, and ``env -i`` sets the
    command's inside.
    """

    name = "sandbox"
    workdir = "/tmp"
    live_processes = True
    enters_directly = False

    @abc.abstractmethod
    def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
        """The host argv that runs ``argv`` inside the sandbox."""

    def environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        """The whole environment of a command given ``env``."""
        return {"PATH": SANDBOX_PATH, **(env or {})}

    def launch(
        self, command: Command, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> Launch:
        variables = self.environment(env)
        if self.enters_directly:
            return Launch(self.wrap(_argv(command), cwd), variables)
        setting = ["env", "-i", *[f"{k}={v}" for k, v in variables.items()]]
        return Launch(self.wrap([*setting, *_argv(command)], cwd), None)

    def start(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | None = PIPE,
        stdout: int | None = PIPE,
        stderr: int | None = PIPE,
        start_new_session: bool = False,
    ) -> HostProcess:
        """Start ``command`` inside; the streams as ``processes.start_process``'s."""
        launch = self.launch(command, env=env, cwd=cwd)
        try:
            return start_process(
                launch.argv, env=launch.env, stdin=stdin, stdout=stdout, stderr=stderr,
                start_new_session=start_new_session,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxUnavailable(f"{self.name}: cannot start {launch.argv[0]}: {exc}") from None

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        launch = self.launch(command, env=env, cwd=cwd)
        try:
            with anyio.fail_after(timeout):
                code, stdout, stderr = await run_process(launch.argv, env=launch.env, input=stdin)
        except TimeoutError:
            raise CommandTimeout(
                f"{self.name}: {_short(command)} did not finish within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise SandboxUnavailable(f"{self.name}: cannot start {launch.argv[0]}: {exc}") from None
        return CommandResult(code, stdout, stderr)

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        return PipedProcess(self.start(list(command), env=env, stderr=None))

    async def aclose(self) -> None:
        """Release what the sandbox holds."""

    def kill(self) -> None:
        """Kill everything running in the sandbox now, where the backend can."""


def _text(data: bytes) -> str:
    return data.decode(errors="replace").strip()


def _shell(command: Command) -> str:
    """The command as one shell string."""
    return command if isinstance(command, str) else shlex.join(command)


def _short(command: Command) -> str:
    text = _shell(command)
    return text if len(text) < 80 else text[:77] + "..."
