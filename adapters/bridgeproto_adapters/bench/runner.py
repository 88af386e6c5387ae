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
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc

from ..eventloop import uvloop_in_use
from ..launch import Bridge, open_bridge
from ..providers import open_host_sandbox
from ..sandboxes import (
    Faults,
    HarnessSandbox,
    HostCommandSandbox,
    SimulatedProvider,
    stop_process,
)
from . import cpu
from .common import (
    AGENT_SOURCE,
    REMOTE_LATENCY,
    CountingSandbox,
    Sizes,
    SlowSandbox,
    _bulk_figures,
    _raise_file_limit,
    _streaming_figures,
    code_paths,
    describe_machine,
    find_pid,
    summarize,
)
from .common import FULL as FULL
from .common import QUICK as QUICK
from .faults import SHARES, fault_figures
from .polling import PollingBaseline
from .references import MISSING, References, have_socat
from .remote import control_plane_figures
from .scale import scale_figures

SYSTEMS = ("direct", "limit", "shared", "bridgeproto", "inward", "polling")
# The bench upstream inside the sandbox, exposed, and the agent on the host
# (Bridge.expose): the inward direction, measured by the "inward" scenario.
INWARD = "inward"
REFERENCES = ("limit", "shared")  # measured with socat (references.py), when it is there
POLL_PORT = 13132


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
        if system in ("bridgeproto", INWARD):
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
            await self._round_trip_row(scenario, system)

    async def _round_trip_row(self, scenario: str, system: str) -> None:
        raw = await self.with_polling(system, scenario, n=self.sizes.latency_requests)
        self.record(scenario, system, {"seconds": summarize(raw["seconds"]), "raw": raw["seconds"]})

    async def streaming(self) -> None:
        for system in self.systems:
            await self._streaming_row(system)

    async def _streaming_row(self, system: str) -> None:
        sizes = self.sizes
        runs = [
            await self.with_polling(system, "stream", n=sizes.stream_events, gap=sizes.stream_gap)
            for _ in range(sizes.streams)
        ]
        self.record("streaming", system, _streaming_figures(runs))

    async def throughput(self) -> None:
        for system in self.systems:
            if system == "limit":
                continue  # one connection only
            figures = {}
            # Each side's CPU while the clients run (the host side runs in
            # this process): a request's cost under load, where its work is
            # batched, next to the cost scenario's one at a time.
            host = os.getpid()
            _, side = self.sandbox_of(system)
            if side:
                cpu.check_apart(host, side)
            for concurrency in self.sizes.concurrencies:
                host0, side0 = cpu.both_sides(host, side)
                raw = await self.with_polling(
                    system, "throughput", concurrency=concurrency,
                    duration=self.sizes.throughput_seconds,
                )  # fmt: skip
                host1, side1 = cpu.both_sides(host, side)
                level = figures[str(concurrency)] = {
                    "requests_per_second": raw["requests"] / raw["seconds"],
                    "errors": raw["errors"],
                }
                if side and raw["requests"]:
                    level["host_cpu_ms_per_request"] = (host1 - host0) * 1000 / raw["requests"]
                    level["sandbox_cpu_ms_per_request"] = (side1 - side0) * 1000 / raw["requests"]
            self.record("throughput", system, figures)

    async def bulk(self) -> None:
        for system in self.systems:
            await self._bulk_row(system)

    async def _bulk_row(self, system: str) -> None:
        """Inward, "upload" is host to sandbox and "download" sandbox to host."""
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
                    await self._round_trip_row("latency", system)
                if system == INWARD or "direct" not in scenarios.get("streaming", {}):
                    await self._streaming_row(system)
                if system == INWARD or "direct" not in scenarios.get("bulk", {}):
                    await self._bulk_row(system)
        finally:
            await stop_process(server)

    async def cost(self) -> None:
        """CPU per request of each side, each read from its own processes
        (``cpu.check_apart``), and the control-plane calls."""
        if "shared" in self.systems:
            # socat's processes, with the per-connection children they waited for.
            assert self.references is not None
            host_pid, side_pid = self.references.pids["shared"]
            cpu.check_apart(host_pid, side_pid)
            n = self.sizes.cost_requests
            host0, side0 = cpu.both_sides(host_pid, side_pid, True)
            await self.agent("shared", "requests", n=n)
            await anyio.sleep(0.2)  # for socat to reap the connection's process
            host1, side1 = cpu.both_sides(host_pid, side_pid, True)
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
            host0, side0 = cpu.both_sides(host, side)
            calls0 = box.calls if box else 0
            await self.with_polling(system, "requests", n=n)
            host1, side1 = cpu.both_sides(host, side)
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
            figures = await scale_figures(
                transport, self.sizes, self.sandbox_kind, self.url("direct")
            )
            self.record("scale", transport, figures)

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
                figures = await control_plane_figures(
                    real, bridge.url, lambda: sum(provider.calls.values()), client, self.sizes
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
                figures = await control_plane_figures(
                    inner, url, lambda: box.calls, box, self.sizes
                )
                self.record("remote", "polling", figures)
                tg.cancel_scope.cancel()
        finally:
            await polling.aclose()
            await inner.aclose()
        await self.remote_faults(target)

    async def remote_faults(self, target: str) -> None:
        """The mailbox behind the same provider, failing a share of its operations."""
        for share in SHARES:
            figures = await fault_figures(
                self.sandbox_kind, target, share, self.sizes.remote_requests,
                self.sizes.fault_body_bytes,
            )  # fmt: skip
            self.record("remote_faults", f"{share:.0%}", figures)

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
