"""Runs the benchmark scenarios: direct, bridged and polling, side by side.

One upstream process serves all three. The same agent (``agent.py``, standard
library only) measures every scenario: on the host for direct, inside an
offline sandbox for the bridge and for the polling baseline. Control-plane
calls are counted on the sandbox client the bridge or the baseline uses; the
agent's own calls are the benchmark's, not theirs, and are not counted.

The ``remote`` scenario puts the mailbox transport and the polling baseline
behind the same simulated remote control plane (every call 50 ms slower, as
a provider's API is), both with calls only; then the mailbox alone with a
share of its operations failing (``faults.py``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from ..eventloop import uvloop_in_use
from ..launch import Bridge, open_bridge
from ..providers import open_host_sandbox
from ..sandboxes import (
    CommandResult,
    Faults,
    HarnessSandbox,
    HostCommandSandbox,
    LiveProcess,
    SandboxClient,
    SimulatedProvider,
    stop_process,
)
from . import cpu
from .faults import SHARES, fault_figures
from .polling import PollingBaseline
from .processes import find_process
from .references import MISSING, References, have_socat

AGENT_SOURCE = (pathlib.Path(__file__).parent / "agent.py").read_text()
SYSTEMS = ("direct", "limit", "shared", "bridgeproto", "inward", "polling")
# The bench upstream inside the sandbox, exposed, and the agent on the host
# (Bridge.expose): the inward direction, measured by the "inward" scenario.
INWARD = "inward"
REFERENCES = ("limit", "shared")  # measured with socat (references.py), when it is there
POLL_PORT = 13132
MiB = 1 << 20
STARTING_AT_ONCE = 32  # sandboxes the scale scenario makes at a time
REMOTE_LATENCY = 0.05  # seconds each simulated remote control-plane call adds


@attrs.frozen
class Sizes:
    latency_requests: int
    stream_events: int
    stream_gap: float
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
    300, 50, 0.02, (1, 8, 32, 64), 3.0, 256 * MiB, 256 * MiB, 1000, 100, 20.0, 256, 30.0, 20,
    50, 16 * MiB, 60.0, 20, 200_000,
)  # fmt: skip
QUICK = Sizes(
    20, 10, 0.02, (1, 8), 0.5, 4 * MiB, 1 * MiB, 50, 5, 1.0, 2, 1.0, 5, 5, MiB // 4, 2.0, 3, 40_000
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


# ---------------------------------------------------------------- process facts


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


def cpu_seconds(pid: int | str = "self", children: bool = False) -> float:
    """User and system time of ``pid`` (with ``children``: and of the children it waited for)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(field) for field in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


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


# ---------------------------------------------------------------- the run


SCENARIOS = (
    "latency", "streaming", "websocket", "throughput", "bulk", "cost", "inward", "start", "scale",
    "remote",
)  # fmt: skip


class Bench:
    def __init__(
        self, sizes: Sizes, sandbox_kind: str, say: Any, only: Sequence[str] = SCENARIOS
    ) -> None:
        self.only = tuple(only)
        self.sizes = sizes
        self.sandbox_kind = sandbox_kind
        self.say = say
        self.results: dict[str, Any] = {"machine": describe_machine(), "scenarios": {}}
        self.upstream_port = 0
        self.bridge: Bridge | None = None
        self.bridge_box: CountingSandbox | None = None
        self.poll_box: CountingSandbox | None = None
        self.polling: PollingBaseline | None = None
        self.sandbox_side_pid: int | None = None
        self.poll_server_pid: int | None = None
        self.references: References | None = None
        self.inward_url = ""

    @property
    def systems(self) -> tuple[str, ...]:
        """The systems the outward scenarios measure: the references only
        where socat is (the inward direction has its own scenario)."""
        outward = tuple(s for s in SYSTEMS if s != INWARD)
        if self.references is None:
            return tuple(s for s in outward if s not in REFERENCES)
        return outward

    # -- plumbing

    def url(self, system: str) -> str:
        if system == "direct":
            return f"http://127.0.0.1:{self.upstream_port}/bench"
        if system == "bridgeproto":
            assert self.bridge is not None
            return self.bridge.url
        if system == INWARD:
            return self.inward_url
        if system in REFERENCES:
            assert self.references is not None
            return self.references.url(system)
        return f"http://127.0.0.1:{POLL_PORT}/bench"

    async def agent(self, system: str, scenario: str, **args: Any) -> dict[str, Any]:
        """Run the agent for one scenario where that system's agent lives."""
        payload = json.dumps({"scenario": scenario, "url": self.url(system), **args})
        if system in ("direct", INWARD):  # agents on the host
            result = await anyio.run_process(
                [sys.executable, "-c", AGENT_SOURCE, payload], check=False
            )
            code, out, err = result.returncode, result.stdout, result.stderr
        else:
            if system in REFERENCES:
                assert self.references is not None
                sandbox: HostCommandSandbox = self.references.sandbox
            else:
                box, _ = self.sandbox_of(system)
                assert box is not None
                sandbox = box.inner
            done = await sandbox.run(["python3", "-c", AGENT_SOURCE, payload])
            code, out, err = done.exit_code, done.stdout, done.stderr
        if code != 0:
            raise RuntimeError(f"{system} {scenario} agent failed: {err.decode()[-500:]}")
        answer: dict[str, Any] = json.loads(out)
        return answer

    def sandbox_of(self, system: str) -> tuple[CountingSandbox | None, int | None]:
        """The counted sandbox client and the sandbox-side pid of a system (direct: none)."""
        if system == "bridgeproto":
            return self.bridge_box, self.sandbox_side_pid
        if system == "polling":
            return self.poll_box, self.poll_server_pid
        return None, None

    @contextlib.asynccontextmanager
    async def running(self, system: str) -> AsyncIterator[None]:
        """The polling host loop runs only while the polling system is
        measured; a limit pipe carries one agent's connection."""
        if system == "limit":
            assert self.references is not None
            async with self.references.limit_pipe():
                yield
            return
        if system != "polling":
            yield
            return
        assert self.polling is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.polling.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def with_polling(self, system: str, scenario: str, **args: Any) -> dict[str, Any]:
        async with self.running(system):
            return await self.agent(system, scenario, **args)

    def record(self, scenario: str, system: str, figures: dict[str, Any]) -> None:
        self.results["scenarios"].setdefault(scenario, {})[system] = figures

    # -- scenarios

    async def latency(self) -> None:
        await self._round_trips("latency", self.systems)

    async def websocket(self) -> None:
        # Polling carries whole requests and responses, never a switched connection.
        await self._round_trips("websocket", [s for s in self.systems if s != "polling"])

    async def _round_trips(self, scenario: str, systems: Sequence[str]) -> None:
        """The agent's ``scenario``: round trips one after another, timed each."""
        for system in systems:
            raw = await self.with_polling(system, scenario, n=self.sizes.latency_requests)
            self.record(
                scenario, system, {"seconds": summarize(raw["seconds"]), "raw": raw["seconds"]}
            )

    async def streaming(self) -> None:
        for system in self.systems:
            raw = await self.with_polling(
                system, "stream", n=self.sizes.stream_events, gap=self.sizes.stream_gap
            )
            self.record("streaming", system, _streaming_figures(raw))

    async def throughput(self) -> None:
        for system in self.systems:
            if system == "limit":
                continue  # one connection only
            figures = {}
            for concurrency in self.sizes.concurrencies:
                raw = await self.with_polling(
                    system, "throughput", concurrency=concurrency,
                    duration=self.sizes.throughput_seconds,
                )  # fmt: skip
                figures[str(concurrency)] = {
                    "requests_per_second": raw["requests"] / raw["seconds"],
                    "errors": raw["errors"],
                }
            self.record("throughput", system, figures)

    async def bulk(self) -> None:
        for system in self.systems:
            size = self.sizes.polling_bulk_bytes if system == "polling" else self.sizes.bulk_bytes
            _, side = self.sandbox_of(system)
            transfer = functools.partial(self.with_polling, system, size=size)
            self.record("bulk", system, await _bulk_figures(size, side, transfer))

    async def inward(self) -> None:
        """The latency, streaming and bulk rows with the roles swapped: the
        bench upstream runs inside the sandbox, exposed with ``Bridge.expose``,
        and the agent runs on the host. Recorded next to the outward rows."""
        assert self.bridge is not None and self.bridge_box is not None
        server = await self.bridge_box.inner.open_process(
            ["python3", "-m", "bridgeproto_adapters.bench.upstream"],
            env={"PYTHONPATH": ":".join(code_paths())},
        )
        try:
            with anyio.fail_after(60):
                port = int((await server.read(1024)).split()[0])
            self.inward_url = f"{await self.bridge.expose(port)}/bench"
            # Each table needs its direct row, which --only may have left out.
            scenarios = self.results["scenarios"]
            for system in (INWARD, "direct"):
                if system == INWARD or "direct" not in scenarios.get("latency", {}):
                    await self._inward_latency(system)
                if system == INWARD or "direct" not in scenarios.get("streaming", {}):
                    await self._inward_streaming(system)
                if system == INWARD or "direct" not in scenarios.get("bulk", {}):
                    await self._inward_bulk(system)
        finally:
            await stop_process(server)

    async def _inward_latency(self, system: str) -> None:
        raw = await self.agent(system, "latency", n=self.sizes.latency_requests)
        self.record(
            "latency", system, {"seconds": summarize(raw["seconds"]), "raw": raw["seconds"]}
        )

    async def _inward_streaming(self, system: str) -> None:
        raw = await self.agent(
            system, "stream", n=self.sizes.stream_events, gap=self.sizes.stream_gap
        )
        self.record("streaming", system, _streaming_figures(raw))

    async def _inward_bulk(self, system: str) -> None:
        """Inward, "upload" is host to sandbox and "download" sandbox to host."""
        side = self.sandbox_side_pid if system == INWARD else None
        size = self.sizes.bulk_bytes
        transfer = functools.partial(self.agent, system, size=size)
        self.record("bulk", system, await _bulk_figures(size, side, transfer))

    async def cost(self) -> None:
        """CPU per request of each side, each read from its own processes
        (``cpu.check_apart``), and the control-plane calls."""
        if "shared" in self.systems:
            # socat's processes, with the per-connection children they waited for.
            assert self.references is not None
            host_pid, side_pid = self.references.pids["shared"]
            cpu.check_apart(host_pid, side_pid)
            n = self.sizes.cost_requests
            host0, side0 = cpu.cpu_seconds(host_pid, True), cpu.cpu_seconds(side_pid, True)
            await self.agent("shared", "requests", n=n)
            await anyio.sleep(0.2)  # for socat to reap the connection's process
            host1, side1 = cpu.cpu_seconds(host_pid, True), cpu.cpu_seconds(side_pid, True)
            self.record("cost", "shared", {
                "requests": n,
                "host_cpu_seconds_per_1000": (host1 - host0) * 1000 / n,
                "sandbox_cpu_seconds_per_1000": (side1 - side0) * 1000 / n,
                "host_pid": host_pid,
                "sandbox_pid": side_pid,
            })  # fmt: skip
        host = os.getpid()  # the host side runs in this process
        for system in ("direct", "bridgeproto", "polling"):
            box, side = self.sandbox_of(system)
            n = (
                self.sizes.polling_cost_requests
                if system == "polling"
                else self.sizes.cost_requests
            )
            if system != "direct":
                if side is None:
                    raise RuntimeError(f"the {system} sandbox side's process was not found")
                cpu.check_apart(host, side)
            host0, side0 = cpu.cpu_seconds(host), cpu.cpu_seconds(side) if side else 0.0
            calls0 = box.calls if box else 0
            await self.with_polling(system, "requests", n=n)
            host1, side1 = cpu.cpu_seconds(host), cpu.cpu_seconds(side) if side else 0.0
            figures: dict[str, Any] = {"requests": n}
            if system != "direct":
                assert box is not None
                figures["host_cpu_seconds_per_1000"] = (host1 - host0) * 1000 / n
                figures["sandbox_cpu_seconds_per_1000"] = (side1 - side0) * 1000 / n
                figures["host_pid"], figures["sandbox_pid"] = host, side
                figures["calls_per_request"] = (box.calls - calls0) / n
                idle0, idle_cpu0 = box.calls, cpu.cpu_seconds(host)
                async with self.running(system):
                    await anyio.sleep(self.sizes.idle_seconds)
                seconds = self.sizes.idle_seconds
                figures["calls_per_idle_minute"] = (box.calls - idle0) * 60 / seconds
                figures["host_idle_cpu_percent"] = (
                    (cpu.cpu_seconds(host) - idle_cpu0) * 100 / seconds
                )
            self.record("cost", system, figures)

    async def start(self) -> None:
        """From a ready sandbox (the archive already there) to a bridge that
        accepts agents: how long ``open_bridge`` takes, ``starts`` times."""
        target = self.url("direct")
        sandbox, _ = await open_host_sandbox(self.sandbox_kind)
        seconds = []
        try:
            async with open_bridge(sandbox, target):
                pass  # the first start in a sandbox uploads the archive: not counted
            for _ in range(self.sizes.starts):
                started = time.perf_counter()
                async with open_bridge(sandbox, target):
                    seconds.append(time.perf_counter() - started)
        finally:
            await sandbox.aclose()
        self.record("start", "bridgeproto", {"seconds": summarize(seconds), "raw": seconds})

    async def scale(self) -> None:
        """``bridges`` bridges held by this process, on each transport (the
        mailbox behind the simulated remote control plane, 50 ms a call)."""
        for transport in ("stream", "mailbox"):
            self.say(f"bench: scale, {transport} ...")
            self.record("scale", transport, await self._scale(transport))

    async def _scale(self, transport: str) -> dict[str, Any]:
        """Start ``bridges`` bridges at once (each sandbox and bridge held by
        a task of its own), hold them idle, then keep every one busy.

        Host figures are this process's own (the harness's side: its event
        loop, sockets and the control-plane calls it makes); the sandbox
        sides and the simulated provider's call processes run apart and are
        counted apart (``children``: the call processes this process reaped).
        """
        wanted = self.sizes.bridges
        held: list[tuple[HostCommandSandbox, Bridge]] = []
        failures: list[str] = []
        settled = anyio.Semaphore(0)
        release = anyio.Event()
        starting = anyio.CapacityLimiter(STARTING_AT_ONCE)
        upstream = self.url("direct")
        sandboxes: list[HostCommandSandbox] = []

        # The sandboxes first, a few at a time (the machine's work, not the
        # bridge's); then every bridge at once.
        async def make_sandbox() -> None:
            try:
                async with starting:
                    sandbox, _ = await open_host_sandbox(self.sandbox_kind)
                sandboxes.append(sandbox)
            except Exception as exc:  # the machine's limit: say which
                failures.append(f"sandbox: {exc!r}")

        async with anyio.create_task_group() as tg:
            for _ in range(wanted):
                tg.start_soon(make_sandbox)

        async def hold(sandbox: HostCommandSandbox) -> None:
            client: SandboxClient = sandbox
            if transport == "mailbox":
                client = HarnessSandbox(
                    SimulatedProvider(sandbox, Faults(latency=REMOTE_LATENCY)), "scale"
                )
            try:
                context = open_bridge(client, upstream, transport=transport)
                bridge = await context.__aenter__()
                try:
                    held.append((sandbox, bridge))
                    settled.release()
                    await release.wait()
                finally:
                    await context.__aexit__(None, None, None)
            except Exception as exc:
                failures.append(repr(exc))
                settled.release()

        def facts() -> tuple[float, float, int, int, int]:
            own = cpu_seconds()
            threads = len(os.listdir("/proc/self/task"))
            fds = len(os.listdir("/proc/self/fd"))
            return own, cpu_seconds(children=True) - own, rss_kib(), threads, fds

        idle_seconds = self.sizes.scale_idle_seconds
        try:
            async with anyio.create_task_group() as tg:
                cpu0, _, rss0, threads0, fds0 = facts()
                started = time.perf_counter()
                for sandbox in sandboxes:
                    tg.start_soon(hold, sandbox)
                for _ in sandboxes:
                    await settled.acquire()
                start_seconds = time.perf_counter() - started
                try:
                    count = len(held)
                    cpu1, children1, rss1, threads1, fds1 = facts()
                    await anyio.sleep(idle_seconds)
                    cpu2, children2, *_ = facts()
                    busy_one = await self._busy(held[:1])
                    busy_all = await self._busy(held)
                finally:
                    release.set()
        finally:
            with anyio.CancelScope(shield=True):
                for sandbox in sandboxes:
                    await sandbox.aclose()
        per = max(count, 1)
        reason = f"{len(failures)} did not start: {failures[0]}" if failures else ""
        return {
            "bridges_wanted": wanted,
            "bridges_held": count,
            "limit_reason": reason,
            "start_seconds": start_seconds,
            "bridges_per_second": count / start_seconds,
            "host_start_cpu_seconds": cpu1 - cpu0,
            "host_rss_mib_per_bridge": (rss1 - rss0) / 1024 / per,
            "host_threads_per_bridge": (threads1 - threads0) / per,
            "host_fds_per_bridge": (fds1 - fds0) / per,
            "host_idle_cpu_percent_per_bridge": (cpu2 - cpu1) * 100 / idle_seconds / per,
            "call_processes_idle_cpu_percent_per_bridge": (
                (children2 - children1) * 100 / idle_seconds / per
            ),
            "host_cpu_ms_per_request_one_busy": busy_one["cpu_ms_per_request"],
            "host_cpu_ms_per_request_all_busy": busy_all["cpu_ms_per_request"],
            "requests_ok": busy_all["ok"],
            "requests": busy_all["requests"],
        }

    async def _busy(self, bridges: Sequence[tuple[HostCommandSandbox, Bridge]]) -> dict[str, Any]:
        """Every bridge in ``bridges`` asked ``scale_requests`` requests at once
        by an agent of its own; the host's CPU per request counts only this
        process (starting the agents is the harness's work either way)."""
        n = self.sizes.scale_requests
        ok = 0

        async def one(sandbox: HostCommandSandbox, bridge: Bridge) -> None:
            nonlocal ok
            payload = json.dumps({"scenario": "requests", "url": bridge.url, "n": n})
            done = await sandbox.run(["python3", "-c", AGENT_SOURCE, payload], timeout=600)
            ok += n if done.exit_code == 0 else 0

        cpu0 = cpu_seconds()
        async with anyio.create_task_group() as tg:
            for sandbox, bridge in bridges:
                tg.start_soon(one, sandbox, bridge)
        requests = n * len(bridges)
        return {
            "ok": ok,
            "requests": requests,
            "cpu_ms_per_request": (cpu_seconds() - cpu0) * 1000 / max(requests, 1),
        }

    async def remote(self) -> None:
        """Mailbox and polling behind the same simulated remote control plane."""
        direct = await self.agent("direct", "latency", n=self.sizes.remote_requests)
        self.record("remote", "direct", {"seconds": summarize(direct["seconds"])})
        target = self.url("direct")
        real, _ = await open_host_sandbox(self.sandbox_kind)
        try:
            provider = SimulatedProvider(real, Faults(latency=REMOTE_LATENCY))
            client = HarnessSandbox(provider, "bench")
            async with open_bridge(client, target, transport="mailbox") as bridge:
                figures = await self._remote(
                    real, bridge.url, lambda: sum(provider.calls.values()), client
                )
            self.record("remote", "mailbox", figures)
        finally:
            await real.aclose()
        inner, _ = await open_host_sandbox(self.sandbox_kind)
        box = SlowSandbox(inner, REMOTE_LATENCY)
        polling = PollingBaseline(box, "127.0.0.1", self.upstream_port)
        try:
            await polling.start(POLL_PORT)
            async with anyio.create_task_group() as tg:
                tg.start_soon(polling.run)
                url = self.url("polling")
                figures = await self._remote(inner, url, lambda: box.calls, box)
                self.record("remote", "polling", figures)
                tg.cancel_scope.cancel()
        finally:
            await polling.aclose()
            await inner.aclose()
        await self.remote_faults(target)

    async def remote_faults(self, target: str) -> None:
        """The mailbox behind the same provider, failing a share of its operations."""
        for share in SHARES:
            real, _ = await open_host_sandbox(self.sandbox_kind)
            try:
                figures = await fault_figures(
                    real, target, share, REMOTE_LATENCY, self.sizes.remote_requests,
                    self.sizes.fault_body_bytes, functools.partial(_agent_in, real),
                )  # fmt: skip
            finally:
                await real.aclose()
            self.record("remote_faults", f"{share:.0%}", figures)

    async def _remote(
        self, sandbox: HostCommandSandbox, url: str, calls: Any, control_plane: SandboxClient
    ) -> dict[str, Any]:
        """``sandbox`` runs the agent; ``control_plane`` is what the system
        under test calls, timed here with a call that does nothing."""
        sizes = self.sizes
        one_call = []
        for _ in range(10):
            start = time.perf_counter()
            await control_plane.run(["true"])
            one_call.append(time.perf_counter() - start)

        async def agent(scenario: str, **args: Any) -> dict[str, Any]:
            payload = json.dumps({"scenario": scenario, "url": url, **args})
            done = await sandbox.run(["python3", "-c", AGENT_SOURCE, payload], timeout=600)
            if done.exit_code != 0:
                raise RuntimeError(f"remote {scenario} agent failed: {done.stderr[-500:]!r}")
            answer: dict[str, Any] = json.loads(done.stdout)
            return answer

        latency = await agent("latency", n=sizes.remote_requests)
        stream = await agent("stream", n=sizes.stream_events, gap=sizes.stream_gap)
        before = calls()
        await agent("requests", n=sizes.remote_requests)
        per_request = (calls() - before) / sizes.remote_requests
        before = calls()
        await anyio.sleep(sizes.remote_idle_seconds)
        per_idle_minute = (calls() - before) * 60 / sizes.remote_idle_seconds
        size = sizes.remote_bulk_bytes
        upload = await agent("upload", size=size)
        download = await agent("download", size=size)
        return {
            "call_latency_seconds": REMOTE_LATENCY,
            "one_call_seconds": summarize(one_call),
            "seconds": summarize(latency["seconds"]),
            "event_delay_seconds": summarize(stream["delays"]),
            "first_event_seconds": stream["first_event"],
            "calls_per_request": per_request,
            "calls_per_idle_minute": per_idle_minute,
            "bulk_bytes": size,
            "upload_mb_per_second": size / upload["seconds"] / 1e6,
            "download_mb_per_second": size / download["seconds"] / 1e6,
        }

    # -- the whole run

    async def run(self) -> dict[str, Any]:
        _raise_file_limit()
        upstream = await anyio.open_process(
            [sys.executable, "-m", "bridgeproto_adapters.bench.upstream"]
        )
        try:
            assert upstream.stdout is not None
            self.upstream_port = int((await upstream.stdout.receive()).split()[0])
            # (The bridge's sandbox also sees this code, read-only, to run
            # the bench upstream inside for the inward rows.)
            bridge_sandbox, note = await open_host_sandbox(self.sandbox_kind, ro=code_paths())
            poll_sandbox, _ = await open_host_sandbox(self.sandbox_kind)
            self.say(f"bench: {note}; upstream on 127.0.0.1:{self.upstream_port}")
            self.results["sandbox"] = note
            has_uvloop = await bridge_sandbox.run(
                ["python3", "-c", "import importlib.util as u; print(bool(u.find_spec('uvloop')))"]
            )
            self.results["event_loops"] = {
                "host": "uvloop" if uvloop_in_use() else "asyncio",
                "sandbox side": "uvloop" if has_uvloop.stdout.strip() == b"True" else "asyncio",
            }
            self.bridge_box = CountingSandbox(bridge_sandbox)
            self.poll_box = CountingSandbox(poll_sandbox)
            self.polling = PollingBaseline(self.poll_box, "127.0.0.1", self.upstream_port)
            try:
                await self.polling.start(POLL_PORT)
                self.poll_server_pid = find_pid(str(POLL_PORT))
                target = self.url("direct")
                async with contextlib.AsyncExitStack() as stack:
                    if have_socat():
                        self.references = await stack.enter_async_context(
                            References.running(self.sandbox_kind, self.upstream_port)
                        )
                    else:
                        self.say(f"bench: {MISSING}")
                        self.results["references_missing"] = MISSING
                    bridge = await stack.enter_async_context(open_bridge(self.bridge_box, target))
                    self.bridge = bridge
                    self.sandbox_side_pid = find_pid(bridge.session.conn.session_id.hex())
                    for scenario in (self.latency, self.streaming, self.websocket,
                                     self.throughput, self.bulk, self.cost,
                                     self.inward):  # fmt: skip
                        if scenario.__name__ in self.only:
                            self.say(f"bench: {scenario.__name__} ...")
                            await scenario()
                if "start" in self.only:
                    self.say("bench: start ...")
                    await self.start()
                if "scale" in self.only:
                    self.say("bench: scale ...")
                    await self.scale()
                if "remote" in self.only:
                    self.say("bench: remote (simulated control plane) ...")
                    await self.remote()
            finally:
                await self.polling.aclose()
                await bridge_sandbox.aclose()
                await poll_sandbox.aclose()
        finally:
            upstream.terminate()
            await upstream.wait()
            await upstream.aclose()
        return self.results


def code_paths() -> list[str]:
    """Where this code and its dependencies are imported from (for the
    bench upstream inside the sandbox)."""
    import h11

    from .. import __file__ as adapters_init

    paths = [pathlib.Path(adapters_init).parent.parent]
    paths += [pathlib.Path(module).parent.parent for module in (anyio.__file__, h11.__file__)]
    return list(dict.fromkeys(str(path) for path in paths))


def _streaming_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """An agent's stream scenario as the report shows it."""
    return {
        "first_event_seconds": raw["first_event"],
        "event_delay_seconds": summarize(raw["delays"]),
        "raw": raw["delays"],
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
