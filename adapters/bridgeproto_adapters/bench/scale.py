"""The scale scenario: hundreds of bridges held by one host process, as a
harness holds one per rollout (docs/benchmarks.md, "Scale")."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import anyio

from ..launch import Bridge, open_bridge
from ..providers import open_host_sandbox
from ..sandboxes import Faults, HarnessSandbox, HostCommandSandbox, SandboxClient, SimulatedProvider
from . import cpu
from .common import AGENT_SOURCE, REMOTE_LATENCY, Sizes, rss_kib

STARTING_AT_ONCE = 32  # sandboxes the scale scenario makes at a time


async def scale_figures(
    transport: str, sizes: Sizes, sandbox_kind: str, upstream: str
) -> dict[str, Any]:
    """Start ``bridges`` bridges at once (each sandbox and bridge held by
    a task of its own), hold them idle, then keep every one busy.

    Host figures are this process's own (the harness's side: its event
    loop, sockets and the control-plane calls it makes); the sandbox
    sides and the simulated provider's call processes run apart and are
    counted apart (``children``: the call processes this process reaped).
    """
    wanted = sizes.bridges
    held: list[tuple[HostCommandSandbox, Bridge]] = []
    failures: list[str] = []
    settled = anyio.Semaphore(0)
    release = anyio.Event()
    starting = anyio.CapacityLimiter(STARTING_AT_ONCE)
    sandboxes: list[HostCommandSandbox] = []

    # The sandboxes first, a few at a time (the machine's work, not the
    # bridge's); then every bridge at once.
    async def make_sandbox() -> None:
        try:
            async with starting:
                sandbox, _ = await open_host_sandbox(sandbox_kind)
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
        own = cpu.cpu_seconds(os.getpid())
        threads = len(os.listdir("/proc/self/task"))
        fds = len(os.listdir("/proc/self/fd"))
        return own, cpu.children_seconds(os.getpid()), rss_kib(), threads, fds

    idle_seconds = sizes.scale_idle_seconds
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
                busy_one = await _busy(held[:1], sizes.scale_requests)
                busy_all = await _busy(held, sizes.scale_requests)
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


async def _busy(bridges: Sequence[tuple[HostCommandSandbox, Bridge]], n: int) -> dict[str, Any]:
    """Every bridge in ``bridges`` asked ``scale_requests`` requests at once
    by an agent of its own; the host's CPU per request counts only this
    process (starting the agents is the harness's work either way)."""
    ok = 0

    async def one(sandbox: HostCommandSandbox, bridge: Bridge) -> None:
        nonlocal ok
        payload = json.dumps({"scenario": "requests", "url": bridge.url, "n": n})
        done = await sandbox.run(["python3", "-c", AGENT_SOURCE, payload], timeout=600)
        ok += n if done.exit_code == 0 else 0

    cpu0 = cpu.cpu_seconds(os.getpid())
    async with anyio.create_task_group() as tg:
        for sandbox, bridge in bridges:
            tg.start_soon(one, sandbox, bridge)
    requests = n * len(bridges)
    return {
        "ok": ok,
        "requests": requests,
        "cpu_ms_per_request": (cpu.cpu_seconds(os.getpid()) - cpu0) * 1000 / max(requests, 1),
    }
