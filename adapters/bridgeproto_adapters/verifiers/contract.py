"""The parts of verifiers' ``Runtime`` contract this package relies on, as
Protocols of its own: the adapters type-check without verifiers installed,
and verifiers is imported only when a runtime class is first asked for.

They follow verifiers 0.4 (``verifiers.v1.runtimes.base``): ``run`` answers
text (stdout and stderr decoded), files move as bytes, a live process has
an async byte iterator per output and awaitable control methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol


class ProgramResultLike(Protocol):
    exit_code: int
    stdout: str
    stderr: str


class RuntimeProcessLike(Protocol):
    stdout: AsyncIterator[bytes]
    stderr: AsyncIterator[bytes]

    async def write(self, data: bytes) -> None: ...

    async def wait(self) -> int: ...

    async def poll(self) -> int | None: ...

    async def terminate(self) -> None: ...

    async def kill(self) -> None: ...


class RuntimeLike(Protocol):
    """A verifiers runtime, as the bridge drives it."""

    name: str

    @property
    def supports_live_processes(self) -> bool: ...

    async def run(self, argv: list[str], env: dict[str, str]) -> ProgramResultLike: ...

    async def open_process(self, argv: list[str], env: dict[str, str]) -> RuntimeProcessLike: ...

    async def read(self, path: str, max_bytes: int | None = None) -> bytes: ...

    async def write(self, path: str, data: bytes) -> None: ...


class VerifiersTypes(Protocol):
    """What the runtime classes take from verifiers when they are built."""

    program_result: Callable[[int, str, str], Any]
    sandbox_error: type[Exception]
    subprocess_config: Callable[[], Any]
    subprocess_info: Callable[..., Any]
