"""A simulated remote sandbox provider, for tests and the benchmark.

``SimulatedProvider`` answers the way a harness's remote sandbox client
does (``execute_command`` / ``read_file`` / ``upload_bytes``, results as
text) but runs everything in a real sandbox client on this machine, adding
what remote control planes do, by configuration and seeded randomness:
latency per call, calls that fail before running, calls that run and then
lose their answer, output cut at a size or at a random point, and a cap on
calls in flight. It
counts calls per method. Wrap it in ``HarnessSandbox`` to use it.

It is a simulation, named as one: nothing in it talks to a real provider.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import attrs

from .base import SandboxClient

T = TypeVar("T")


@attrs.frozen
class Faults:
    """What the simulated provider does to calls. Shares are between 0 and 1."""

    latency: float = 0.0  # seconds added to every call, half before and half after
    fail_before: float = 0.0  # share of calls that fail without running
    fail_after: float = 0.0  # share of calls that run, then lose their answer
    truncate_at: int | None = None  # stdout is cut to this many bytes
    cut: float = 0.0  # share of answers over 1 KiB cut at a random point
    text_only: bool = True  # results come back as str, as most clients give them
    max_in_flight: int | None = None  # calls past this wait for a free place
    seed: int = 0


class ProviderError(RuntimeError):
    """What the simulated provider raises for a failed call."""


@attrs.frozen
class ExecResult:
    exit_code: int
    stdout: str | bytes
    stderr: str | bytes


@attrs.frozen
class FileContent:
    content: str | bytes
    truncated: bool = False


class SimulatedProvider:
    """A harness-style client over a real sandbox, with the faults of a remote one."""

    def __init__(self, sandbox: SandboxClient, faults: Faults | None = None) -> None:
        self.sandbox = sandbox
        self.faults = faults or Faults()
        self.calls: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self._random = random.Random(self.faults.seed)
        limit = self.faults.max_in_flight
        self._places = anyio.Semaphore(limit) if limit else None

    async def execute_command(
        self,
        sandbox_id: str,
        command: str,
        timeout: float | None = None,
        working_dir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        async def run() -> ExecResult:
            result = await self.sandbox.run(
                command, cwd=working_dir, env=env, timeout=timeout or 60
            )
            stdout = result.stdout
            if self.faults.truncate_at is not None:
                stdout = stdout[: self.faults.truncate_at]
            if len(stdout) > 1024 and self._random.random() < self.faults.cut:
                stdout = stdout[: self._random.randrange(len(stdout))]
            return ExecResult(result.exit_code, *self._as_text(stdout, result.stderr))

        return await self._call("execute_command", run)

    async def read_file(self, sandbox_id: str, file_path: str) -> FileContent:
        async def read() -> FileContent:
            data = await self.sandbox.read_file(file_path)
            limit = self.faults.truncate_at
            cut = limit is not None and len(data) > limit
            data = data[:limit] if cut else data
            text = data.decode("utf-8", "replace") if self.faults.text_only else data
            return FileContent(text, cut)

        return await self._call("read_file", read)

    async def upload_bytes(
        self, sandbox_id: str, file_path: str, file_bytes: bytes, filename: str
    ) -> None:
        async def upload() -> None:
            await self.sandbox.write_file(file_path, file_bytes)

        await self._call("upload_bytes", upload)

    def _as_text(self, stdout: bytes, stderr: bytes) -> tuple[str | bytes, str | bytes]:
        if not self.faults.text_only:
            return stdout, stderr
        return stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    async def _call(self, method: str, work: Callable[[], Awaitable[T]]) -> T:
        self.calls[method] += 1
        faults = self.faults
        if self._places is not None:
            await self._places.acquire()
        try:
            await anyio.sleep(faults.latency / 2)
            roll = self._random.random()
            if roll < faults.fail_before:
                self.failed[method] += 1
                raise ProviderError(f"simulated: {method} failed before it ran")
            result = await work()
            await anyio.sleep(faults.latency / 2)
            if roll < faults.fail_before + faults.fail_after:
                self.failed[method] += 1
                raise ProviderError(f"simulated: {method} ran, and its answer was lost")
            return result
        finally:
            if self._places is not None:
                self._places.release()
