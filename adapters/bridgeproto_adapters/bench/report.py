"""The benchmark's output: a table for people, JSON for machines, a plot."""

from __future__ import annotations

import json
from typing import Any

from .runner import SYSTEMS


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        cell.rjust(width) if i else cell.ljust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )


def _block(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title, _row(header, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(r, widths) for r in rows]
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


NAMES = {"limit": "limit (raw pipe)", "shared": "shared kernel", "inward": "bridgeproto inward"}


def _systems(figures: dict[str, Any]) -> list[str]:
    """The systems a scenario measured, in the tables' order."""
    return [system for system in SYSTEMS if system in figures]


def _times(value: float, limit: float | None) -> str:
    if limit is None:
        return "-"
    ratio = value / limit
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x" if ratio >= 0.1 else f"{ratio:.2f}x"


def _share(value: float, limit: float | None) -> str:
    return "-" if limit is None else f"{value / limit:.0%}"


def _round_trips(figures: dict[str, Any], title: str) -> str:
    """A table of one-at-a-time round trips: each system's median and p99,
    and how it compares with direct calls and with the limit."""
    direct = figures["direct"]["seconds"]["median"]
    limit = figures.get("limit", {}).get("seconds", {}).get("median")
    rows = []
    for system in _systems(figures):
        trip = figures[system]["seconds"]
        rows.append(
            [
                NAMES.get(system, system),
                _ms(trip["median"]),
                _ms(trip["p99"]),
                _ms(trip["median"] - direct),
                f"{trip['median'] / direct:.1f}x",
                _times(trip["median"], limit),
            ]
        )
    header = ["system", "median ms", "p99 ms", "added ms", "vs direct", "vs limit"]
    return _block(title, header, rows)


def table(results: dict[str, Any]) -> str:
    s = results["scenarios"]
    blocks = []
    if "latency" in s:
        blocks.append(_round_trips(s["latency"], "latency: small JSON POSTs, one after another"))
    if "streaming" in s:
        rows = []
        direct_first = s["streaming"]["direct"]["first_event_seconds"]
        streams = len(s["streaming"]["direct"].get("first_event_raw", [direct_first]))
        limit_first = s["streaming"].get("limit", {}).get("first_event_seconds")
        for system in _systems(s["streaming"]):
            st = s["streaming"][system]
            delay = st["event_delay_seconds"]
            first = st["first_event_seconds"]
            rows.append(
                [
                    NAMES.get(system, system),
                    _ms(first),
                    f"{first / direct_first:.1f}x",
                    _times(first, limit_first),
                    _ms(delay["median"]),
                    _ms(delay["p99"]),
                ]
            )
        blocks.append(
            _block(
                f"streaming: SSE events written 20 ms apart; first event: the median of {streams}"
                " streams, each a new agent's",
                ["system", "first event ms", "vs direct", "vs limit", "delay median ms",
                 "delay p99 ms"],
                rows,
            )
        )  # fmt: skip
    if "websocket" in s:
        title = "websocket: 64-byte messages echoed on one connection, one after another"
        blocks.append(_round_trips(s["websocket"], title))
    if "throughput" in s:
        levels = list(s["throughput"]["direct"])
        rows = []
        for system in _systems(s["throughput"]):
            tp = s["throughput"][system]
            cells = [f"{tp[c]['requests_per_second']:.0f}" for c in levels]
            top = levels[-1]
            ratio = (
                tp[top]["requests_per_second"]
                / s["throughput"]["direct"][top]["requests_per_second"]
            )
            cpu_ms = [
                f"{tp[top][f'{side}_cpu_ms_per_request']:.2f}"
                if f"{side}_cpu_ms_per_request" in tp[top]
                else "-"
                for side in ("host", "sandbox")
            ]
            rows.append([NAMES.get(system, system), *cells, f"{ratio:.0%}", *cpu_ms])
        blocks.append(
            _block(
                "throughput: requests per second by concurrent clients"
                f" (CPU ms a request of each side at {levels[-1]})",
                ["system", *[f"{c} clients" for c in levels], f"vs direct @{levels[-1]}",
                 "host CPU ms", "sandbox CPU ms"],
                rows,
            )
        )  # fmt: skip
    if "bulk" in s:
        rows = []
        direct_bulk = s["bulk"]["direct"]
        limit_bulk = s["bulk"].get("limit")
        for system in _systems(s["bulk"]):
            b = s["bulk"][system]
            side = [b[d]["sandbox_side_peak_rss_mib"] for d in ("upload", "download")]
            cells = []
            for d in ("upload", "download"):
                rate = b[d]["mb_per_second"]
                cells += [
                    f"{rate:.0f}",
                    _share(rate, direct_bulk[d]["mb_per_second"]),
                    _share(rate, limit_bulk[d]["mb_per_second"] if limit_bulk else None),
                ]
            rows.append(
                [
                    NAMES.get(system, system),
                    f"{b['bytes'] >> 20}",
                    *cells,
                    f"{max(b[d]['host_peak_rss_mib'] for d in ('upload', 'download')):.0f}",
                    "-" if side[0] is None else f"{max(side):.0f}",
                ]
            )
        blocks.append(
            _block(
                "bulk: one upload and one download",
                ["system", "MiB", "up MB/s", "vs direct", "vs limit", "down MB/s", "vs direct",
                 "vs limit", "host peak MiB", "sandbox side peak MiB"],
                rows,
            )
        )  # fmt: skip
    if "cost" in s:
        rows = []
        for system in _systems(s["cost"]):
            c = s["cost"][system]
            if "host_cpu_seconds_per_1000" not in c:
                continue  # direct: nothing in between to cost
            rows.append(
                [
                    NAMES.get(system, system),
                    f"{c['host_cpu_seconds_per_1000']:.2f}",
                    f"{c['sandbox_cpu_seconds_per_1000']:.2f}",
                    f"{c['calls_per_request']:.2f}" if "calls_per_request" in c else "-",
                    f"{c['calls_per_idle_minute']:.0f}" if "calls_per_idle_minute" in c else "-",
                    f"{c['host_idle_cpu_percent']:.1f}" if "host_idle_cpu_percent" in c else "-",
                ]
            )
        blocks.append(
            _block(
                "cost: CPU per 1000 requests and control-plane calls",
                [
                    "system",
                    "host CPU s",
                    "sandbox CPU s",
                    "calls/request",
                    "calls/idle min",
                    "host idle CPU %",
                ],
                rows,
            )
        )
    if "start" in s:
        st = s["start"]["bridgeproto"]["seconds"]
        blocks.append(
            _block(
                "start: a ready sandbox to a bridge that accepts agents",
                ["starts", "median ms", "p99 ms"],
                [[str(st["n"]), _ms(st["median"]), _ms(st["p99"])]],
            )
        )
    if "scale" in s:
        rows = []
        for transport, sc in s["scale"].items():
            rows.append([
                transport,
                f"{sc['bridges_held']} of {sc['bridges_wanted']}",
                f"{sc['start_seconds']:.1f}",
                f"{sc['host_rss_mib_per_bridge']:.2f}",
                f"{sc['host_threads_per_bridge']:.2f}",
                f"{sc['host_fds_per_bridge']:.1f}",
                f"{sc['host_idle_cpu_percent_per_bridge']:.3f}",
                f"{sc['call_processes_idle_cpu_percent_per_bridge']:.3f}",
                f"{sc['host_cpu_ms_per_request_one_busy']:.2f}",
                f"{sc['host_cpu_ms_per_request_all_busy']:.2f}",
                f"{sc['requests_ok']} of {sc['requests']}",
            ])  # fmt: skip
        blocks.append(
            _block(
                "scale: bridges held by one host process, started together"
                " (per bridge; CPU % of one core; call processes: the simulated provider's)",
                ["transport", "bridges", "start s", "MiB", "threads", "fds", "idle CPU %",
                 "calls' CPU %", "ms/req 1 busy", "ms/req all busy", "requests ok"],
                rows,
            )
        )  # fmt: skip
        for sc in s["scale"].values():
            if sc["limit_reason"]:
                blocks.append(f"  ({sc['limit_reason']})")
    if "remote" in s:
        direct = s["remote"]["direct"]["seconds"]["median"]
        rows = []
        for system in ("mailbox", "polling"):
            r = s["remote"][system]
            rows.append(
                [
                    system,
                    _ms(r["seconds"]["median"]),
                    _ms(r["seconds"]["median"] - direct),
                    _ms(r["one_call_seconds"]["median"]),
                    _ms(r["seconds"]["median"] - direct - r["one_call_seconds"]["median"]),
                    _ms(r["event_delay_seconds"]["median"]),
                    f"{r['calls_per_request']:.2f}",
                    f"{r['calls_per_idle_minute']:.0f}",
                    f"{r['upload_mb_per_second']:.2f}",
                    f"{r['download_mb_per_second']:.2f}",
                ]
            )
        latency_ms = s["remote"]["mailbox"]["call_latency_seconds"] * 1000
        blocks.append(
            _block(
                f"remote: calls only, each {latency_ms:.0f} ms slower (a simulated provider)",
                [
                    "system",
                    "request ms",
                    "added ms (vs direct)",
                    "one call ms",
                    "added - one call",
                    "SSE delay ms",
                    "calls/request",
                    "calls/idle min",
                    "up MB/s",
                    "down MB/s",
                ],
                rows,
            )
        )
    if "remote_faults" in s:
        rows = []
        for share, r in s["remote_faults"].items():
            rows.append(
                [
                    share,
                    f"{r['operations_per_request']:.2f}",
                    _ms(r["seconds_median"]),
                    _ms(r["one_call_median"]),
                    f"{r['seconds_median'] / r['one_call_median']:.2f}",
                    str(r["epochs"]),
                    f"{r['body_bytes_per_call']:.0f}",
                    f"{r['body_seconds']:.1f}",
                ]
            )
        blocks.append(
            _block(
                "remote faults: the mailbox with a share of operations failing"
                " (half before running, half after)",
                [
                    "failing",
                    "ops/request",
                    "request ms",
                    "one call ms",
                    "request / call",
                    "epochs",
                    "bytes/call (4 KiB batches)",
                    "large POST s",
                ],
                rows,
            )
        )
    machine = results["machine"]
    head = (
        f"bridgeproto bench on {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}; "
        f"{results.get('sandbox', '')}"
    )
    loops = results.get("event_loops")
    if loops:
        head += f"; event loops: host {loops['host']}, sandbox side {loops['sandbox side']}"
    return "\n\n".join([head, *blocks]) + "\n"


def write_json(results: dict[str, Any], path: str) -> None:
    with open(path, "w") as file:
        json.dump(results, file, indent=1)


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib  # an optional extra: pip install 'bridgeproto[bench]'

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["scenarios"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, scenario, title in (
        (left, "latency", "latency per request (ms)"),
        (right, "streaming", "SSE event delay (ms)"),
    ):
        systems = _systems(s[scenario])
        data = [[v * 1000 for v in s[scenario][system]["raw"]] for system in systems]
        axis.boxplot(data, showfliers=True)
        axis.set_xticks(range(1, len(systems) + 1), [NAMES.get(x, x) for x in systems])
        axis.set_yscale("log")
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("bridgeproto: direct, references, bridged, polling baseline (log scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
