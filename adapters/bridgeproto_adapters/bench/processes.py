"""Finding a process of this machine by its command line, as ``/proc`` shows it.

A sandbox's pid namespace is a child of this one, so the processes inside
are visible here too, under their host pids.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def find_process(program: bytes, wanted: Callable[[list[bytes]], bool]) -> int | None:
    """The pid of the newest process whose program's name starts with
    ``program`` and whose arguments are ``wanted``; None if there is none.
    (The newest: a daemon's first process, which forks it and exits, has the
    same command line and may not be gone yet.)"""
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as file:
                started = int(file.read().rsplit(b")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        if os.path.basename(argv[0]).startswith(program) and wanted(argv):
            found.append((started, int(entry)))
    return max(found)[1] if found else None
