"""Time ``next_deadline`` and ``handle_timer`` against the number of open
exchanges, for the core at a git ref and the working tree, side by side.

    python tools/timer_bench.py --old main

Each core runs in its own interpreter (so both can be imported under one
name) with the same pair of connections: the sandbox side opens N exchanges,
the host side holds them, and the host's timers are measured with nothing due
(the common case: a wake-up for a ping). Figures are microseconds per call,
the best of five rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (1, 100, 1000)

# Runs inside the child interpreter, with PYTHONPATH at one core's sources.
PROBE = r"""
import json, sys, timeit
import bridgeproto as bp

def measure(n):
    limits = bp.Limits(max_exchanges=4096)
    config = bp.Config(limits=limits, ping_interval=20.0, peer_timeout=60.0, idle_timeout=300.0)
    sid = bytes(range(16))
    sandbox = bp.Connection(bp.Role.SANDBOX, sid, config)
    host = bp.Connection(bp.Role.HOST, sid, config)
    sandbox.start(0.0)
    host.start(0.0)
    host.receive_data(sandbox.data_to_send(), 0.0)
    sandbox.receive_data(host.data_to_send(), 0.0)
    for i in range(n):
        sandbox.start_exchange(b"POST", b"/", [], i / n)
    host.receive_data(sandbox.data_to_send(), 1.0)
    assert len(host.open_exchanges) == n
    now = 2.0  # before every deadline
    rounds = 5
    per = max(200, 20000 // n)
    nd = min(timeit.repeat(host.next_deadline, number=per, repeat=rounds)) / per
    ht = min(timeit.repeat(lambda: host.handle_timer(now), number=per, repeat=rounds)) / per
    assert host.next_deadline() is not None and len(host.open_exchanges) == n
    return {"next_deadline": nd * 1e6, "handle_timer": ht * 1e6}

measure(1)  # warm up (the first round in a fresh interpreter runs slower)
print(json.dumps({n: measure(n) for n in json.loads(sys.argv[1])}))
"""


def export(ref: str, into: Path) -> Path:
    """The core's sources at ``ref``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "archive", ref, "src/bridgeproto"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_probe(probe: str, src: Path, *args: str) -> Any:
    """What ``probe`` prints as JSON, run with the core's sources at ``src``."""
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        env={"PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"the probe failed under {src}:\n{result.stderr}")
    return json.loads(result.stdout)


def run(src: Path) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = run_probe(PROBE, src, json.dumps(COUNTS))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="main", help="git ref of the core to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        old = run(export(args.old, Path(scratch)))
        new = run(ROOT / "src")
    print(f"{'exchanges':>9}  {'call':<13} {args.old + ' (us)':>12} {'tree (us)':>10}")
    for n in COUNTS:
        for call in ("next_deadline", "handle_timer"):
            print(f"{n:>9}  {call:<13} {old[str(n)][call]:>12.2f} {new[str(n)][call]:>10.2f}")


if __name__ == "__main__":
    main()
