"""The mailbox behind a simulated provider that fails calls: what faults cost.

For each share of failed operations (half failing before they run, half
after, their answers lost), through a real offline sandbox and 50 ms per
operation: operations per small request, the median request, and the
bytes of a large POST each call brings back with 4 KiB batches (the case
that never finished when every failure ended the epoch).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

from ..launch import open_bridge
from ..providers import open_host_sandbox
from ..sandboxes import Faults, HarnessSandbox, HostCommandSandbox, SimulatedProvider
from ..transports.mailbox import MailboxChannels, MailboxOptions
from .common import REMOTE_LATENCY, _agent_in

SHARES = (0.0, 0.1, 0.2, 0.4)  # of operations failing
SMALL_BATCH = 4096  # bytes an answer brings back, for the large POST


async def fault_figures(
    sandbox_kind: str, target: str, share: float, requests: int, body_bytes: int
) -> dict[str, Any]:
    """The figures at ``share`` of operations failing, in a new sandbox of
    ``sandbox_kind`` where the benchmark's agent runs."""
    real, _ = await open_host_sandbox(sandbox_kind)
    try:
        return await _figures(real, target, share, requests, body_bytes)
    finally:
        await real.aclose()


async def _figures(
    real: HostCommandSandbox, target: str, share: float, requests: int, body_bytes: int
) -> dict[str, Any]:
    latency = REMOTE_LATENCY
    agent = functools.partial(_agent_in, real)
    faults = Faults(latency=latency, fail_before=share / 2, fail_after=share / 2, seed=1)
    clean = SimulatedProvider(real, Faults(latency=latency))
    one_call = []
    for _ in range(10):
        start = time.perf_counter()
        await clean.execute_command("bench", "true")
        one_call.append(time.perf_counter() - start)
    provider = SimulatedProvider(real, faults)
    client = HarnessSandbox(provider, "bench-faults")
    async with open_bridge(client, target, transport="mailbox") as bridge:
        seconds = (await agent(bridge.url, {"scenario": "latency", "n": requests}))["seconds"]
        before = sum(provider.calls.values())
        await agent(bridge.url, {"scenario": "requests", "n": requests})
        per_request = (sum(provider.calls.values()) - before) / requests
        assert isinstance(bridge.channels, MailboxChannels)
        epochs = bridge.channels.stats.epochs
    provider = SimulatedProvider(real, faults)
    client = HarnessSandbox(provider, "bench-faults-bulk")
    options = MailboxOptions(batch_bytes=SMALL_BATCH)
    async with open_bridge(client, target, transport="mailbox", mailbox=options) as bridge:
        before = provider.calls["execute_command"]
        start = time.perf_counter()
        await agent(bridge.url, {"scenario": "upload", "size": body_bytes})
        body_seconds = time.perf_counter() - start
        calls = provider.calls["execute_command"] - before
    return {
        "failing_share": share,
        "operations_per_request": per_request,
        "seconds_median": statistics.median(seconds),
        "one_call_median": statistics.median(one_call),
        "epochs": epochs,
        "body_bytes": body_bytes,
        "body_bytes_per_call": body_bytes / max(calls, 1),
        "body_seconds": body_seconds,
    }
