"""Looking at the processes a test started, as an operator would.

A test finds its processes through what it started (a child's process tree,
its sandbox's holder), never by scanning the whole host: another bridge may
run on the same machine, and its processes are not the test's to count or kill.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterable


def argv(pid: int | str) -> list[bytes]:
    """A process's command line ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().split(b"\0")[:-1]
    except OSError:
        return []


def is_python(command: list[bytes], *words: bytes) -> bool:
    """A Python process whose command line holds every one of ``words``."""
    return (
        bool(command)
        and os.path.basename(command[0]).startswith(b"python")
        and all(word in command for word in words)
    )


def minor_faults(pid: int) -> int:
    """The page faults a process has taken that needed no disk read (fresh
    memory mapped in, mostly)."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        return int(file.read().rsplit(b")", 1)[1].split()[7])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree (children, theirs, ...)."""
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


def started_by(pid: int, test: Callable[[list[bytes]], bool]) -> list[int]:
    """The processes below ``pid`` whose command line passes ``test``."""
    return [child for child in descendants(pid) if test(argv(child))]


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every one of ``pids`` has exited (children or not: a pidfd
    becomes readable at exit); returns those still running at ``timeout``."""
    handles: dict[int, int] = {}
    for pid in pids:
        try:
            handles[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue  # gone already
    try:
        poller = select.poll()
        for fd in handles:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        left = set(handles)
        while left and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                left.discard(fd)
                poller.unregister(fd)
        return sorted(handles[fd] for fd in left)
    finally:
        for fd in handles:
            os.close(fd)
