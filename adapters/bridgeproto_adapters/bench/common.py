"""What the benchmark's scenarios share: their sizes, the agent's source,
counted sandboxes, and facts about processes read from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from ..sandboxes import (
    CommandResult,
    HostCommandSandbox,
    LiveProcess,
    SandboxClient,
)
from .processes import find_process

AGENT_SOURCE = (pathlib.Path(__file__).parent / "agent.py").read_text()
MiB = 1 << 20
REMOTE_LATENCY = 0.05  # seconds each simulated remote control-plane call adds


@attrs.frozen
class Sizes:
    latency_requests: int
    stream_events: int
    stream_gap: float
    streams: int  # SSE streams a system carries, each from a new agent on a new connection
    concurrencies: tuple[int, ...]
    throughput_seconds: float
    bulk_bytes: int
    polling_bulk_bytes: int
    cost_requests: int
    polling_cost_requests: int
    idle_seconds: float
    bridges: int
    scale_idle_seconds: float
    scale_requests: int
    remote_requests: int
    remote_bulk_bytes: int
    remote_idle_seconds: float
    starts: int
    fault_body_bytes: int  # the large POST of the faults rows


FULL = Sizes(
    300, 50, 0.02, 7, (1, 8, 32, 64), 3.0, 256 * MiB, 256 * MiB, 1000, 100, 20.0, 256, 30.0, 20,
    50, 16 * MiB, 60.0, 20, 200_000,
)  # fmt: skip
QUICK = Sizes(
    20, 10, 0.02, 2, (1, 8), 0.5, 4 * MiB, 1 * MiB, 50, 5, 1.0, 2, 1.0, 5, 5, MiB // 4, 2.0, 3,
    40_000,
)  # fmt: skip


class CountingSandbox(HostCommandSandbox):
    """Counts the control-plane calls made through it."""

    def __init__(self, inner: HostCommandSandbox) -> None:
        self.inner = inner
        self.name = inner.name
        self.workdir = inner.workdir
        self.calls = 0

    def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
        return self.inner.wrap(argv, cwd)

    async def run(self, *args: Any, **kwargs: Any) -> CommandResult:
        self.calls += 1
        return await self.inner.run(*args, **kwargs)

    async def read_file(self, path: str) -> bytes:
        self.calls += 1
        return await self.inner.read_file(path)

    async def write_file(self, path: str, data: bytes) -> None:
        self.calls += 1
        await self.inner.write_file(path, data)

    async def open_process(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        self.calls += 1
        return await self.inner.open_process(command, env=env)


class SlowSandbox(CountingSandbox):
    """A counted sandbox whose every call takes ``latency`` longer, as a remote one's do."""

    def __init__(self, inner: HostCommandSandbox, latency: float) -> None:
        super().__init__(inner)
        self.latency = latency

    async def run(self, *args: Any, **kwargs: Any) -> CommandResult:
        await anyio.sleep(self.latency)
        return await super().run(*args, **kwargs)

    async def read_file(self, path: str) -> bytes:
        await anyio.sleep(self.latency)
        return await super().read_file(path)

    async def write_file(self, path: str, data: bytes) -> None:
        await anyio.sleep(self.latency)
        await super().write_file(path, data)


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int | str = "self") -> None:
    # Older kernels refuse; the peak is then since the process started.
    with contextlib.suppress(OSError):
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")


def find_pid(marker: str) -> int | None:
    """The pid of the Python process whose arguments contain ``marker``
    (a bridge's channel processes left out: they only hand over a stream;
    the wrappers around a sandbox's processes, nsenter and bwrap, are not
    Python)."""
    return find_process(b"python", lambda argv: marker.encode() in argv and b"channel" not in argv)


def describe_machine() -> dict[str, Any]:
    model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def summarize(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "n": len(ordered),
    }


def code_paths() -> list[str]:
    """Where this code and its dependencies are imported from (for the
    bench upstream inside the sandbox)."""
    import attrs
    import h11

    import bridgeproto

    from .. import __file__ as adapters_init

    paths = [pathlib.Path(adapters_init).parent.parent]
    modules = (bridgeproto.__file__, anyio.__file__, attrs.__file__, h11.__file__)
    paths += [pathlib.Path(module).parent.parent for module in modules]
    return list(dict.fromkeys(str(path) for path in paths))


def _streaming_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Agents' stream scenarios as the report shows them: the first event's
    median over the streams (one stream is too few to measure by: the first
    a bridge ever carries, or one after a pause, waits on cold code and
    idle processes), every event's delay pooled."""
    firsts = [run["first_event"] for run in runs]
    delays = [delay for run in runs for delay in run["delays"]]
    return {
        "first_event_seconds": statistics.median(firsts),
        "first_event_raw": firsts,
        "event_delay_seconds": summarize(delays),
        "raw": delays,
    }


async def _bulk_figures(
    size: int, side: int | None, transfer: Callable[[str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """``size`` bytes each way through ``transfer(direction)``: the rate, and
    the peak memory of the host and of the sandbox side (pid ``side``)."""
    figures: dict[str, Any] = {"bytes": size}
    for direction in ("upload", "download"):
        reset_peak_rss()
        if side:
            reset_peak_rss(side)
        raw = await transfer(direction)
        figures[direction] = {
            "mb_per_second": size / raw["seconds"] / 1e6,
            "host_peak_rss_mib": rss_kib("self", "VmHWM") / 1024,
            "sandbox_side_peak_rss_mib": rss_kib(side, "VmHWM") / 1024 if side else None,
        }
    return figures


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _agent_in(sandbox: SandboxClient, url: str, args: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's agent, run in ``sandbox`` against ``url``; its figures."""
    payload = json.dumps({"url": url, **args})
    done = await sandbox.run(["python3", "-c", AGENT_SOURCE, payload], timeout=600)
    if done.exit_code != 0:
        raise RuntimeError(f"the agent failed: {done.stderr[-500:]!r}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer
