"""The remote scenario's figures: a system behind a control plane whose
every call is slow, as a provider's API is (the mailbox, the polling
baseline)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..sandboxes import HostCommandSandbox, SandboxClient
from .common import AGENT_SOURCE, REMOTE_LATENCY, Sizes, summarize


async def control_plane_figures(
    sandbox: HostCommandSandbox,
    url: str,
    calls: Callable[[], int],
    control_plane: SandboxClient,
    sizes: Sizes,
) -> dict[str, Any]:
    """``sandbox`` runs the agent; ``control_plane`` is what the system
    under test calls, timed here with a call that does nothing; ``calls()``
    counts the calls the system under test made so far."""
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
