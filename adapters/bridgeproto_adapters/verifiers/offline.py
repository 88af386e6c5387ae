"""``OfflineRuntime``: a verifiers runtime on this project's offline sandboxes.

Each runtime is one sandbox (bubblewrap, else util-linux ``unshare``) with
only loopback for a network: verifiers rollouts run on one machine with no
network inside, and reach the host only through ``BridgedRuntime``. Its
processes are live (``open_process``) unless ``live_processes=False`` hides
them, which sends a bridge over the mailbox transport instead.

Why verifiers' ``subprocess`` config type: verifiers looks a runtime's type up
in a fixed table (tunnel needs, timeout caps), so it must be a built-in one,
and ``subprocess`` states the same facts as this runtime: on this machine,
no image, no lifetime cap, no verifiers network policy to apply. It also
means verifiers refuses harnesses that ask for a container
(``NEEDS_CONTAINER``): those install third-party programs from the network,
which an offline sandbox cannot do anyway.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import signal
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import anyio

from ..processes import DEVNULL, PIPE, HostProcess
from ..providers import open_host_sandbox
from ..sandboxes import BwrapSandbox, HostCommandSandbox, SandboxError, UnshareSandbox
from .contract import ProgramResultLike, VerifiersTypes

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOOPBACK_HOSTS


class OfflineProcess:
    """A live process in the sandbox, as verifiers' ``RuntimeProcess``."""

    def __init__(self, process: HostProcess) -> None:
        self._process = process
        self.stdout = _chunks(process.stdout)
        self.stderr = _chunks(process.stderr)

    async def write(self, data: bytes) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send(data)

    async def wait(self) -> int:
        code = await self._process.wait()
        await self._ended()
        return code

    async def poll(self) -> int | None:
        if self._process.returncode is not None:
            await self._ended()
        return self._process.returncode

    async def close_stdin(self) -> None:
        """Beyond verifiers' contract: the end of input (``RuntimeSandbox``
        uses it where a process has it)."""
        if self._process.stdin is not None:
            await self._process.stdin.aclose()

    async def _ended(self) -> None:
        """Close stdin once the program is gone: nothing reads it any more but
        a process it handed it to (the bridge's relay hands its stdio to the
        sandbox side, which then sees the end of its channel). Its output
        stays readable to the end."""
        if self._process.stdin is not None:
            await self._process.stdin.aclose()

    async def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, number: int) -> None:
        """The whole tree, as verifiers' own runtimes signal a process group:
        the host process only enters the sandbox (nsenter forks into its pid
        namespace), so the program itself is one of its descendants."""
        if self._process.returncode is not None:
            return
        for pid in [*_descendants(self._process.pid), self._process.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, number)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children before their own."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                for child in children.read().split():
                    found += [int(child), *_descendants(int(child))]
        except OSError:
            continue
    return found


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    if stream is None:
        return
    try:
        while True:
            yield await stream.receive(65536)
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        return


class OfflineRuntimeBase:
    """The logic of ``OfflineRuntime`` (built on verifiers' ``Runtime`` when
    first imported from ``bridgeproto_adapters.verifiers``)."""

    is_local = True  # nothing to tunnel: no network path exists to open one on
    workdir = "/tmp/work"
    _vf: VerifiersTypes  # set when the class is built

    if TYPE_CHECKING:
        name: str
        env: dict[str, str]

        def process_env(self, env: dict[str, str]) -> dict[str, str]: ...

    def __init__(
        self,
        *,
        sandbox: str = "auto",
        ro: Sequence[str] = (),
        rw: Sequence[str] = (),
        live_processes: bool = True,
        name: str | None = None,
    ) -> None:
        """``sandbox``: ``auto`` (bwrap, else unshare), ``bwrap`` or
        ``unshare``; ``ro``/``rw``: host paths shown inside at the same place;
        ``live_processes=False`` hides ``open_process`` (the mailbox path)."""
        if sandbox not in ("auto", "bwrap", "unshare"):
            raise ValueError(
                f"OfflineRuntime(sandbox={sandbox!r}): choose auto, bwrap or unshare"
                " (the local sandbox has the host's network, so it is no offline runtime)"
            )
        cast(Any, super()).__init__(name)
        self.kind = sandbox
        self.ro, self.rw = list(ro), list(rw)
        self.live = live_processes
        self.config = self._vf.subprocess_config()
        self.info = self._vf.subprocess_info(**self.config.model_dump())
        self.sandbox: BwrapSandbox | UnshareSandbox | HostCommandSandbox | None = None
        self._background: list[HostProcess] = []

    @property
    def supports_live_processes(self) -> bool:
        return self.live

    async def start(self) -> None:
        self.sandbox, _ = await open_host_sandbox(self.kind, ro=self.ro, rw=self.rw)
        self.info.id = f"{self.sandbox.name}:{self.name}"

    def _box(self) -> HostCommandSandbox:
        if self.sandbox is None:
            raise self._vf.sandbox_error(f"{self.name}: start() the runtime before using it")
        return self.sandbox

    def _path(self, path: str) -> str:
        return posixpath.join(self.workdir, path)  # relative paths: the work directory

    async def run(self, argv: list[str], env: dict[str, str]) -> ProgramResultLike:
        try:
            result = await self._box().run(argv, env=self.process_env(env))
        except SandboxError as exc:
            raise self._vf.sandbox_error(str(exc)) from exc
        return cast(
            ProgramResultLike,
            self._vf.program_result(
                result.exit_code,
                result.stdout.decode(errors="replace"),
                result.stderr.decode(errors="replace"),
            ),
        )

    async def open_process(self, argv: list[str], env: dict[str, str]) -> OfflineProcess:
        if not self.live:
            raise NotImplementedError(
                f"{self.name}: live processes are hidden (live_processes=False)"
            )
        try:
            process = self._box().start(argv, env=self.process_env(env), stderr=PIPE)
        except SandboxError as exc:
            raise self._vf.sandbox_error(str(exc)) from exc
        self._background.append(process)
        return OfflineProcess(process)

    async def run_background(self, argv: list[str], env: dict[str, str], log: str) -> None:
        script = 'log="$1"; shift; exec "$@" > "$log" 2>&1'
        command = ["sh", "-c", script, "sh", self._path(log), *argv]
        box = self._box()
        process = box.start(
            command, env=self.process_env(env), stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        self._background.append(process)

    async def _read(self, path: str, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            try:
                return await self._box().read_file(self._path(path))
            except SandboxError as exc:
                raise self._vf.sandbox_error(str(exc)) from exc
        result = await self._box().run(["head", "-c", str(max_bytes), "--", self._path(path)])
        if result.exit_code != 0:
            said = result.stderr.decode(errors="replace").strip()
            raise self._vf.sandbox_error(f"read {path!r}: {said}")
        return result.stdout

    async def write(self, path: str, data: bytes) -> None:
        try:
            await self._box().write_file(self._path(path), data)
        except SandboxError as exc:
            raise self._vf.sandbox_error(str(exc)) from exc

    def host_url(self, url: str) -> str:
        if is_loopback(url):
            raise self._vf.sandbox_error(
                f"{self.name} is offline: nothing inside reaches {url}; wrap the runtime"
                " as BridgedRuntime(OfflineRuntime(...)) to carry it over a bridge"
            )
        return url

    async def expose(self, port: int) -> str:
        raise self._vf.sandbox_error(
            f"{self.name} is offline: port {port} inside cannot be reached from the host;"
            " wrap the runtime as BridgedRuntime(OfflineRuntime(...))"
        )

    async def teardown(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            await sandbox.aclose()  # every process inside dies with the sandbox
        for process in self._background:
            with anyio.CancelScope(shield=True):
                await process.aclose()
        self._background = []

    def cleanup(self) -> None:
        """At interpreter exit, with no event loop: kill everything inside."""
        if self.sandbox is not None:
            self.sandbox.kill()
