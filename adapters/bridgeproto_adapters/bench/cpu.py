"""CPU time of the processes a cost figure is about, each side on its own.

A cost figure is only as good as the processes it reads: the host side's
figure is the host's process (the bench's own, where the host side runs),
the sandbox side's the process inside the sandbox. ``check_apart`` refuses
a pair that is one process, or whose sandbox side is not in a pid namespace
of its own (then it is not the process inside the sandbox), so a run can
never report one process's time twice.
"""

from __future__ import annotations

import glob
import os
import pathlib


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User and system time of every thread of ``pid``, to the nanosecond
    (the scheduler's own count); with ``children``, plus ``children_seconds``."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(pathlib.Path(path).read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9 + (children_seconds(pid) if children else 0.0)


def both_sides(host: int, sandbox: int | None, children: bool = False) -> tuple[float, float]:
    """``cpu_seconds`` of the host's process and of the sandbox side's (0.0
    where there is none, as for direct), read one after the other."""
    return cpu_seconds(host, children), cpu_seconds(sandbox, children) if sandbox else 0.0


def children_seconds(pid: int) -> float:
    """User and system time of the children ``pid`` has waited for (in clock
    ticks: the kernel keeps no finer)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[13:15]) / os.sysconf("SC_CLK_TCK")


def pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def check_apart(host: int, sandbox: int) -> None:
    """Refuse to measure a host and a sandbox side that are not two
    processes, the second inside the sandbox."""
    if host == sandbox:
        raise RuntimeError(
            f"the host side and the sandbox side are one process ({host}): a cost figure"
            " would count it twice; find the sandbox side's own process"
        )
    if pid_namespace(host) == pid_namespace(sandbox):
        raise RuntimeError(
            f"process {sandbox}, measured as the sandbox side, shares the host's pid"
            f" namespace: it is not the process inside the sandbox"
        )
