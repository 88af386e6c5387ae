"""Soak: many sequential requests through a real bridge into a real offline
sandbox, watching for errors and for anything that grows. Not in the default
run (it takes a minute or two); run it with::

    .venv/bin/python -m pytest -m soak -s tests/adapters/test_soak.py

It prints one line per phase (requests, errors, p50 and p99 latency, RSS and
open file descriptors of both sides before and after); docs/benchmarks.md
keeps the last figures.
"""

from __future__ import annotations

import json
import os

import anyio
import pytest

from bridgeproto_adapters.launch import open_bridge
from processes import is_python, started_by
from sandbox_kinds import make_sandbox, need_bwrap
from upstream import running_upstream

pytestmark = [pytest.mark.soak, pytest.mark.anyio]
REQUESTS = int(os.environ.get("BRIDGEPROTO_SOAK_REQUESTS", "10000"))

AGENT = """
import http.client, json, os, sys, time
from urllib.parse import urlsplit
url = urlsplit(os.environ['BRIDGEPROTO_URL'])
n, fresh = int(sys.argv[1]), sys.argv[2] == 'fresh'
times, errors, conn = [], 0, None
for i in range(n):
    start = time.perf_counter()
    try:
        if conn is None or fresh:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request('POST', url.path + '/echo', body=b'x' * 100)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            errors += 1
        if fresh:
            conn.close()
    except Exception:
        errors += 1
        conn = None
    times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({'errors': errors, 'p50_ms': times[len(times) // 2] * 1000,
                  'p99_ms': times[int(len(times) * 0.99)] * 1000}))
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _usage(pid: int | str) -> tuple[float, int]:
    """RSS in MiB and open file descriptors of a process."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


class _Forgetful(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


async def test_soak() -> None:
    need_bwrap()
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, f"{upstream.url}/rollout/soak") as bridge,
    ):
        upstream.requests = _Forgetful()  # the test upstream's own log would grow
        (side,) = started_by(os.getpid(), lambda command: is_python(command, b"--daemon"))
        for phase in ("keep-alive", "fresh"):
            host_before, side_before = _usage("self"), _usage(side)
            with anyio.fail_after(600):
                result = await sandbox.run(
                    ["python3", "-c", AGENT, str(REQUESTS), phase], env=bridge.env
                )
            figures = json.loads(result.stdout)
            host_after, side_after = _usage("self"), _usage(side)
            print(
                f"\nsoak {phase}: {REQUESTS} requests, {figures['errors']} errors,"
                f" p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms;"
                f" host RSS {host_before[0]:.0f} -> {host_after[0]:.0f} MiB,"
                f" fds {host_before[1]} -> {host_after[1]};"
                f" sandbox side RSS {side_before[0]:.0f} -> {side_after[0]:.0f} MiB,"
                f" fds {side_before[1]} -> {side_after[1]}"
            )
            assert figures["errors"] == 0
            assert side_after[1] <= side_before[1] + 2  # no agent connection left open
            assert host_after[1] <= host_before[1] + 2  # beyond the upstream pool
            assert side_after[0] - side_before[0] < 8 and host_after[0] - host_before[0] < 8
