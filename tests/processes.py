"""Looking at this machine's processes from a test, as an operator would."""

from __future__ import annotations

import os
from collections.abc import Callable


def argv(pid: int | str) -> list[bytes]:
    """A process's command line ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().split(b"\0")[:-1]
    except OSError:
        return []


def pids_where(test: Callable[[list[bytes]], bool]) -> list[int]:
    """The processes whose command line passes ``test``."""
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and test(argv(pid))]


def is_python(command: list[bytes], *words: bytes) -> bool:
    """A Python process whose command line holds every one of ``words``."""
    return (
        bool(command)
        and os.path.basename(command[0]).startswith(b"python")
        and all(word in command for word in words)
    )


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as file:
                    children = [int(child) for child in file.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found
