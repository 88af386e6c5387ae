"""bridgeproto bench keeps working: the quick run produces every figure.

Speeds are reported by the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import anyio
import pytest

from bridgeproto_adapters.bench import cpu
from bridgeproto_adapters.bench.processes import find_process
from sandbox_kinds import make_sandbox, need_bwrap


def test_quick_bench_produces_every_figure(tmp_path: object) -> None:
    need_bwrap()
    out = os.path.join(str(tmp_path), "bench.json")
    result = subprocess.run(
        [sys.executable, "-m", "bridgeproto_adapters", "bench", "--quick", "--json", out],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out) as file:
        figures = json.load(file)
    scenarios = figures["scenarios"]
    systems = {"direct", "bridgeproto", "polling"}
    # The reference rows need socat (.ci/run installs it); without, bench says so.
    references = {"limit", "shared"} if shutil.which("socat") else set()
    if not references:
        assert "socat is not installed (apt-get install socat)" in result.stderr
    inward = {"inward"}  # the server inside, exposed, and the agent on the host
    expected = {
        "latency": systems | references | inward,
        "streaming": systems | references | inward,
        "websocket": systems - {"polling"} | references,  # polling cannot switch protocols
        "throughput": systems | references - {"limit"},  # the raw pipe is one connection
        "bulk": systems | references | inward,
        "cost": systems | references - {"limit"},
    }
    for name, wanted in expected.items():
        assert set(scenarios[name]) == wanted, name
    for system in systems | references | inward:
        assert scenarios["latency"][system]["seconds"]["n"] == 20
        assert len(scenarios["streaming"][system]["raw"]) == 2 * 10  # two streams of ten
        assert len(scenarios["streaming"][system]["first_event_raw"]) == 2
        if system in systems | references and system != "polling":
            assert scenarios["websocket"][system]["seconds"]["n"] == 20
        for direction in ("upload", "download"):
            assert scenarios["bulk"][system][direction]["mb_per_second"] > 0
    assert scenarios["bulk"]["inward"]["upload"]["sandbox_side_peak_rss_mib"] > 5
    assert "bridgeproto inward" in result.stdout
    for system in expected["throughput"]:
        assert set(scenarios["throughput"][system]) == {"1", "8"}
        for level in scenarios["throughput"][system].values():
            assert level["requests_per_second"] > 0 and not level["errors"]
            # Each side's CPU a request under load, where there is a sandbox side.
            has_side = system in ("bridgeproto", "polling")
            assert ("sandbox_cpu_ms_per_request" in level) is has_side
            if has_side:
                assert level["host_cpu_ms_per_request"] > 0
                assert level["sandbox_cpu_ms_per_request"] > 0
    if references:
        cost = scenarios["cost"]["shared"]
        assert {"host_cpu_seconds_per_1000", "sandbox_cpu_seconds_per_1000"} <= set(cost)
        assert "limit (raw pipe)" in result.stdout and "vs limit" in result.stdout
    for system in ("bridgeproto", "polling"):
        cost = scenarios["cost"][system]
        assert {"host_cpu_seconds_per_1000", "sandbox_cpu_seconds_per_1000",
                "calls_per_request", "calls_per_idle_minute"} <= set(cost)  # fmt: skip
        assert cost["host_pid"] != cost["sandbox_pid"]  # each side its own process
        side = scenarios["bulk"][system]["upload"]["sandbox_side_peak_rss_mib"]
        assert side is not None and side > 5  # the real sandbox-side process was found
    assert scenarios["bulk"]["direct"]["upload"]["sandbox_side_peak_rss_mib"] is None  # no sandbox
    assert scenarios["cost"]["polling"]["calls_per_request"] >= 3
    for transport in ("stream", "mailbox"):
        scale = scenarios["scale"][transport]
        assert scale["bridges_held"] == 2, scale
        assert scale["requests_ok"] == scale["requests"] == 10, scale
    for system in ("mailbox", "polling"):
        remote = scenarios["remote"][system]
        assert remote["seconds"]["n"] == 5 and remote["calls_per_request"] > 0
        assert remote["upload_mb_per_second"] > 0 and remote["download_mb_per_second"] > 0
    faults = scenarios["remote_faults"]
    assert set(faults) == {"0%", "10%", "20%", "40%"}
    for row in faults.values():
        assert row["operations_per_request"] > 0 and row["body_bytes_per_call"] > 0
    assert "remote faults: the mailbox with a share of operations failing" in result.stdout
    assert scenarios["start"]["bridgeproto"]["seconds"]["n"] == 3
    assert "start: a ready sandbox to a bridge that accepts agents" in result.stdout
    assert "remote: calls only, each 50 ms slower" in result.stdout
    assert "latency: small JSON POSTs" in result.stdout
    assert "sandbox CPU ms" in result.stdout
    assert "websocket: 64-byte messages echoed" in result.stdout
    assert "scale: bridges held by one host process, started together" in result.stdout


@pytest.mark.anyio
async def test_cost_figures_refuse_a_process_that_is_not_the_other_side() -> None:
    """The cost table reads each side from its own process: the sandbox
    side's must be another process, inside the sandbox (its own pid
    namespace); one process given as both, or a host process given as the
    sandbox side, is refused instead of measured."""
    marker = f"cost-check-{os.getpid()}"
    async with make_sandbox("bwrap") as sandbox:
        inside = sandbox.start(
            ["python3", "-c", "import sys; print('up', flush=True); sys.stdin.read()", marker]
        )
        on_host = await anyio.open_process(["sleep", "30"])
        try:
            assert inside.stdout is not None
            with anyio.fail_after(30):
                assert b"up" in await inside.stdout.receive()
            pid = find_process(b"python", lambda argv: marker.encode() in argv)
            assert pid is not None and pid != inside.pid  # the process itself, not its wrapper
            cpu.check_apart(os.getpid(), pid)  # two processes, the second inside: measured
            assert cpu.cpu_seconds(pid) > 0
            with pytest.raises(RuntimeError, match="one process"):
                cpu.check_apart(os.getpid(), os.getpid())
            with pytest.raises(RuntimeError, match="not the process inside the sandbox"):
                cpu.check_apart(os.getpid(), on_host.pid)
        finally:
            on_host.kill()
            await on_host.wait()
            inside.kill()
            await inside.wait()
            await inside.aclose()
