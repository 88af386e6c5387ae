"""The bench's per-request rows for two trees, interleaved in one sitting.

    python tools/hot_path_ab.py --old main --rounds 4

Each round runs, for each tree in turn, one bench process with that tree's
code first on ``PYTHONPATH`` (the sandbox side's archive is built from it
too): small POSTs one after another (300), the SSE first event (30 events),
requests per second at 1 and 32 clients (2 s each), 32 MiB up and down, and
the CPU per request of each side over 1000 sequential POSTs, each read from
its own process (``bench/cpu.py``), to the nanosecond, and a bridge's start
(10). Direct and the raw pipe are measured in the same process, for the
ratios (``--bulk-mib`` sets the bulk rows' size). Prints the median of the
rounds per figure and tree. A loaded machine moves every figure;
interleaving keeps the comparison fair, not the figures absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child interpreter, with PYTHONPATH at one tree's sources.
PROBE = r"""
import json, os, sys
import attrs
from bridgeproto_adapters import eventloop
from bridgeproto_adapters.bench import runner

try:
    from bridgeproto_adapters.bench.cpu import cpu_seconds
except ImportError:  # a tree from before bench/cpu.py: the same reading, here
    import glob

    def cpu_seconds(pid):
        return sum(
            int(open(p).read().split()[0]) for p in glob.glob(f"/proc/{pid}/task/*/schedstat")
        ) / 1e9

BULK = int(os.environ.get("BULK_MIB", "32")) << 20
WANTED = dict(
    latency_requests=300, stream_events=30, stream_gap=0.02, streams=5, concurrencies=(1, 32),
    throughput_seconds=2.0, bulk_bytes=BULK, polling_bulk_bytes=0, cost_requests=1000,
    polling_cost_requests=0, idle_seconds=0.1, bridges=0, scale_idle_seconds=0, scale_requests=0,
    remote_requests=0, remote_bulk_bytes=0, remote_idle_seconds=0, starts=10, fault_body_bytes=0,
)
# (By name, so that a tree whose bench has fewer sizes runs too: one from
# before the SSE first event's several streams measures one.)
SIZES = runner.Sizes(**{k: v for k, v in WANTED.items() if k in attrs.fields_dict(runner.Sizes)})


class Rows(runner.Bench):
    @property
    def systems(self):
        return ("direct", "limit", "bridgeproto") if self.references else ("direct", "bridgeproto")

    async def cost(self):
        side, n = self.sandbox_side_pid, self.sizes.cost_requests
        host0, side0 = cpu_seconds(os.getpid()), cpu_seconds(side)
        await self.agent("bridgeproto", "requests", n=n)
        host1, side1 = cpu_seconds(os.getpid()), cpu_seconds(side)
        self.record("cost", "bridgeproto", {
            "host_ms": (host1 - host0) * 1000 / n, "sandbox_ms": (side1 - side0) * 1000 / n,
        })


only = ["latency", "streaming", "throughput", "bulk", "cost", "start"]
bench = Rows(SIZES, "auto", lambda *a: None, only)
found = eventloop.run(bench.run)["scenarios"]
out = {}
for system, rows in found["latency"].items():
    out[f"POST ms, {system}"] = rows["seconds"]["median"] * 1000
for system, rows in found["streaming"].items():
    out[f"SSE first event ms, {system}"] = rows["first_event_seconds"] * 1000
for system, levels in found["throughput"].items():
    for clients, level in levels.items():
        out[f"req/s at {clients}, {system}"] = level["requests_per_second"]
for system, rows in found["bulk"].items():
    for direction in ("upload", "download"):
        out[f"{BULK >> 20} MiB {direction} MB/s, {system}"] = rows[direction]["mb_per_second"]
cost = found["cost"]["bridgeproto"]
out["CPU ms/request, host"] = cost["host_ms"]
out["CPU ms/request, sandbox side"] = cost["sandbox_ms"]
out["start ms"] = found["start"]["bridgeproto"]["seconds"]["median"] * 1000
print(json.dumps(out))
"""


def export(ref: str, into: Path) -> Path:
    """The tree at ``ref`` (its src/ and adapters/), unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src", "adapters"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    target = into / ref.replace("/", "_")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def one_round(tree: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{tree / 'adapters'}"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"the round for {tree} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="main", help="git ref to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--bulk-mib", type=int, default=32, help="MiB each way in the bulk rows")
    args = parser.parse_args()
    os.environ["BULK_MIB"] = str(args.bulk_mib)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {args.old: export(args.old, Path(scratch)), "this tree": ROOT}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for number in range(args.rounds):
            for name, tree in trees.items():
                rounds[name].append(one_round(tree))
                print(f"round {number + 1}: {name} done", file=sys.stderr)
    names = list(rounds)
    print(f"medians of {args.rounds} rounds, interleaved")
    print(f"{'figure':<34}" + "".join(f"{name:>14}" for name in names))
    for figure in rounds[names[0]][0]:
        medians = [statistics.median(r[figure] for r in rounds[name]) for name in names]
        print(f"{figure:<34}" + "".join(f"{value:>14.2f}" for value in medians))


if __name__ == "__main__":
    main()
