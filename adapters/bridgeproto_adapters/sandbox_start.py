"""Starting the sandbox side through the control plane, and reaping it.

Every call here is safe to repeat, so a call that fails (before it ran, or
after, its answer lost) is retried; the sandbox's Python is examined only
when a start fails, to say why in words.
"""

from __future__ import annotations

import functools
import pathlib
import shlex
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import anyio

from .errors import BridgeStartError
from .sandbox_calls import channel_dir
from .sandboxes import CommandResult, SandboxClient, SandboxError, check_result

__all__ = [
    "ATTEMPTS",
    "MIN_PYTHON",
    "check_python",
    "reap_daemon",
    "retried",
    "start_daemon",
]

MIN_PYTHON = (3, 10)


_NOT_UPLOADED = 93  # the start command's word for "the archive is not there yet"

# The daemon's allocator (glibc's; other C libraries ignore the variable)
# keeps what it frees, up to 32 MiB, for the next buffer rather than giving
# it back to the system at once, and serves buffers up to 4 MiB from that
# heap: otherwise a transfer's buffers of a few hundred KiB to a megabyte
# were mapped fresh, and the sandbox side took 120-210 page faults a MiB
# (its CPU a MiB moved: 2.2 -> 1.6-1.7 ms; docs/benchmarks.md, "An eighth pass").
_ALLOCATOR = (
    "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432"
)

# The archives this process has put in each sandbox it started a bridge in.
# A sandbox it never started one in most likely has none yet (a harness
# opens a sandbox per rollout): its first start uploads before it asks.
_UPLOADED: weakref.WeakKeyDictionary[SandboxClient, set[str]] = weakref.WeakKeyDictionary()


async def start_daemon(
    sandbox: SandboxClient,
    archive: pathlib.Path,
    python: str,
    remote: str,
    arguments: list[str],
    env: Mapping[str, str] | None,
    timeout: float,
) -> None:
    """Start the sandbox side in one control-plane call (and the upload
    before it, the first time this process starts one in a sandbox; and
    once more if the archive has gone since): ``python`` runs the archive,
    uploaded at ``remote``, with ``arguments``. Only when that fails is the sandbox's
    Python looked at, to say why in words. Every step is safe to repeat, so
    a call that fails (before it ran, or after, its answer lost) is retried.

    Python runs isolated and without ``site`` (``-I -S``): the archive holds
    everything the sandbox side imports, so nothing of the sandbox's own
    (PYTHON* variables, the working directory, site-packages and their .pth
    files) reaches it, and its start skips site's work."""
    size = archive.stat().st_size
    start = [python, "-I", "-S", remote, *arguments]
    script = (
        f'test "$(wc -c < {shlex.quote(remote)} 2>/dev/null)" = {size} || exit {_NOT_UPLOADED};'
        f" {_ALLOCATOR} exec {shlex.join(start)}"
    )

    async def run() -> CommandResult:
        result = await sandbox.run(["sh", "-c", script], env=env, timeout=timeout)
        return check_result(result)

    async def upload() -> None:
        await retried(functools.partial(sandbox.write_file, remote, archive.read_bytes()))
        _uploaded(sandbox).add(remote)

    try:
        if remote not in _uploaded(sandbox):
            await upload()
        started = await retried(run)
        if started.exit_code == _NOT_UPLOADED:  # removed since, by the code inside
            await upload()
            started = await retried(run)
    except SandboxError as exc:
        raise BridgeStartError(
            f"the sandbox side could not be started: the sandbox's control plane failed"
            f" {ATTEMPTS} times in a row (the last: {exc}); check the provider, then retry"
        ) from exc
    if started.exit_code == 0 and started.stdout.strip() == b"ready":
        return
    said = _said(started)
    try:
        await check_python(sandbox, python, env)  # raises, naming the fix, when Python is why
    except BridgeStartError as exc:
        raise BridgeStartError(f"{exc} (the start call: {said})") from None
    raise BridgeStartError(f"the sandbox side did not start ({said})")


def _uploaded(sandbox: SandboxClient) -> set[str]:
    """The archives this process put in ``sandbox``, to add to; for a client
    that cannot be weakly referenced, a set that is forgotten."""
    try:
        return _UPLOADED.setdefault(sandbox, set())
    except TypeError:
        return set()


def _said(result: CommandResult) -> str:
    """A failed call's status and the end of what it said, for an error."""
    words = (result.stderr or result.stdout).decode(errors="replace").strip()
    words = words.removeprefix("bridgeproto: ")[-500:]
    return f"status {result.exit_code}: {words or 'no word from it'}"


T = TypeVar("T")
ATTEMPTS = 4


async def retried(call: Callable[[], Awaitable[T]]) -> T:
    """A control-plane call that is safe to repeat, tried up to four times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await call()
        except SandboxError:
            if attempt == ATTEMPTS:
                raise
            await anyio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


async def reap_daemon(sandbox: SandboxClient, session_id: bytes, patience: int = 50) -> None:
    """Give the sandbox side ``patience`` tenths of a second (5 s) to answer
    its agents and exit, then kill it."""
    directory = shlex.quote(channel_dir(session_id))
    script = (
        f"p=$(cat {directory}/pid 2>/dev/null) || exit 0;"
        f" for i in $(seq {patience}); do kill -0 $p 2>/dev/null || exit 0; sleep 0.1; done;"
        f" kill -9 $p; rm -rf {directory}"
    )
    await retried(functools.partial(sandbox.run, ["sh", "-c", script], timeout=15))


async def check_python(
    sandbox: SandboxClient, python: str = "python3", env: Mapping[str, str] | None = None
) -> str:
    """The sandbox's Python version, or a ``BridgeStartError`` saying how to get one."""
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    fix = f"install python3 ({MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer) in the image or in setup"
    try:
        result = check_result(await sandbox.run([python, "-c", probe], env=env, timeout=30))
    except SandboxError as exc:
        raise BridgeStartError(f"cannot run {python} in the sandbox ({exc}); {fix}") from None
    found = result.stdout.decode(errors="replace").strip()
    if result.exit_code != 0 or not found.replace(".", "").isdigit():
        raise BridgeStartError(
            f"the sandbox has no working {python} on its PATH; {fix} ({python} -c: {_said(result)})"
        )
    version = tuple(int(part) for part in found.split("."))
    if version < MIN_PYTHON:
        raise BridgeStartError(
            f"the sandbox has Python {found}, and the sandbox side needs"
            f" {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+; {fix}"
        )
    return found
