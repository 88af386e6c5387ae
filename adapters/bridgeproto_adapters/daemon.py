"""The sandbox side as a daemon, for any transport that opens channels toward it.

``bridgeproto sandbox-side --daemon`` starts the sandbox side detached from
the command that starts it (a new session, its output to a log in its
private directory), so it outlives every channel. The starting command
returns once the daemon listens for agents and takes channels (the one
transport its settings name: ``settings.transport.serve``): it prints
``ready``, or the reason it could not start and exits 2.

The daemon ends when its session does (the host closed it, or no channel
came back within the resume deadline), and removes its directory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from collections.abc import Callable

import anyio
import anyio.abc

from . import eventloop
from .errors import found_in
from .sandbox_calls import channel_dir
from .sandbox_side import run_sandbox_side
from .settings import Listen, SandboxSettings
from .transports import Acceptor
from .transports.transport import load


def start(session_id: bytes, settings: SandboxSettings) -> int:
    """Start the daemon and report how that went; the exit status of the starter."""
    directory = channel_dir(session_id)
    if _pid_in(directory) is not None:
        # Started already: the call that started it ran and its answer was
        # lost. Starting is safe to repeat.
        print("ready", flush=True)
        return 0
    problem = _claim(directory)
    if problem:
        print(f"bridgeproto: {problem}", file=sys.stderr)
        return 2
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        with os.fdopen(read_end, "rb") as word:
            said = word.read().decode(errors="replace")  # until the daemon closes its end
        if said == "ready\n":
            print("ready", flush=True)
            # Out at once: the bridge waits for this command, and tearing
            # down an interpreter that imported the sandbox side takes
            # about 20 ms (a seventh of a start).
            os._exit(0)
        print(f"bridgeproto: {said.strip() or 'the daemon ended without a word'}", file=sys.stderr)
        return 2
    os.close(read_end)
    # Keep nothing the starting command was given but the pipe to it: a
    # descriptor of the control plane's left open here (some event loops'
    # process launchers leave one) would keep that command from ending.
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) != write_end:
            with contextlib.suppress(OSError):  # (the listing's own descriptor is gone by now)
                os.close(int(name))
    os.setsid()
    if os.fork():
        os._exit(0)  # the daemon is the grandchild: no terminal can ever be its own
    status = 1
    try:
        _detach(directory)

        def ready() -> None:
            os.write(write_end, b"ready\n")
            os.close(write_end)

        eventloop.run(functools.partial(_serve, session_id, settings, ready))
        status = 0
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(write_end, _why(exc, settings.listen).encode())
        print(f"bridgeproto: the sandbox side failed: {exc!r}", file=sys.stderr)
    finally:
        _remove(directory)
        os._exit(status)


def _why(exc: BaseException, listen: Listen) -> str:
    """What stopped the daemon, in words; a port in use says what to do."""
    if found_in(exc, OSError, lambda error: error.errno == errno.EADDRINUSE):
        where = listen if isinstance(listen, str) else f"{listen[0]}:{listen[1]}"
        return (
            f"{where} is in use in the sandbox: an earlier bridge there still holds it,"
            " or another program does; stop it, or give this bridge another address"
            " (open_bridge(listen=...), run --listen)"
        )
    return repr(exc)


def _remove(directory: str) -> None:
    import shutil  # here, not at the top: the start waits for every import

    shutil.rmtree(directory, ignore_errors=True)


def _claim(directory: str) -> str | None:
    """Make the private directory; None, or why it cannot be had."""
    try:
        os.mkdir(directory, 0o700)
        return None
    except FileExistsError:
        pass
    pid = _pid_in(directory)
    if pid is not None:
        return f"a sandbox side already runs for this session (pid {pid})"
    _remove(directory)  # left by one that died
    try:
        os.mkdir(directory, 0o700)
    except OSError as exc:
        return f"cannot make {directory}: {exc.strerror}"
    return None


def _pid_in(directory: str) -> int | None:
    """The pid of a live daemon that wrote ``directory``, if any."""
    try:
        with open(os.path.join(directory, "pid")) as file:
            pid = int(file.read())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _detach(directory: str) -> None:
    log = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(os.path.join(directory, "pid"), "w") as file:
        file.write(str(os.getpid()))


async def _serve(session_id: bytes, settings: SandboxSettings, ready: Callable[[], None]) -> None:
    print(f"bridgeproto sandbox side {os.getpid()}: settings {settings.to_json()}", flush=True)
    acceptor = Acceptor()
    async with anyio.create_task_group() as tg:
        transport = settings.transport  # its sandbox end only: the daemon imports no other
        await tg.start(load(transport.serve), acceptor, session_id, transport.options)

        async def sandbox_side(*, task_status: anyio.abc.TaskStatus[object]) -> None:
            await run_sandbox_side(acceptor, session_id, settings, task_status=task_status)
            tg.cancel_scope.cancel()  # the session is over: stop taking channels

        await tg.start(sandbox_side)
        ready()
