"""The channel process of the live-stream transport (see ``transports/live.py``).

It runs in the sandbox for every channel the host opens, so it imports
nothing but the standard library and ``mailbox_call`` (the private directory
and the connect it shares with the mailbox's calls), and starts fast. It
connects to the
sandbox side's Unix socket, writes ``READY``, and hands its own stdin and
stdout to the sandbox side (``SCM_RIGHTS``): from then on the bytes flow
between the host and the sandbox side directly, through no copy of ours.
It then only waits, holding nothing of the channel, until the sandbox side
is done with it. Exit status 3 means nothing listens there: the sandbox side
is not running. With ``--wait``, the first channel looks for the socket
until the sandbox side, started at the same time, has made it.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import os
import socket
import sys
import time
from collections.abc import Sequence

from .mailbox_call import EXIT_NO_DAEMON, channel_dir, connect

READY = b"READY\n"


def channel_socket(session_id: bytes) -> str:
    return os.path.join(channel_dir(session_id), "channel.sock")


def relay(path: str, wait: float = 0.0) -> int:
    sock = _connect_within(path, wait)
    if sock is None:
        return EXIT_NO_DAEMON
    os.write(1, READY)
    sock.sendmsg([b"channel"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1]))])
    # Keep no copy: the host must see the end of the stream when the sandbox
    # side lets go of it, and the sandbox side when the host does.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    with contextlib.suppress(OSError):
        sock.recv(1)  # returns when the sandbox side closes its end: the channel is over
    return 0


def _connect_within(path: str, wait: float) -> _socket.socket | None:
    """The sandbox side's socket; one that is not there yet is looked for
    again for ``wait`` seconds (the first channel starts while the sandbox
    side is still starting): every 2 ms for as long as a start takes on an
    idle machine (the bridge waits for this connect: a long pause would be
    added to every start), then less and less often, so that many waiting at
    once on a busy machine do not take the CPU their daemons need."""
    started = time.monotonic()
    pause = 0.002
    while time.monotonic() - started < wait:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            time.sleep(pause)
            if time.monotonic() - started > 0.3:
                pause = min(pause * 1.25, 0.1)
    return connect(path, "channel")  # the last try says why on stderr


def main(argv: Sequence[str]) -> int:
    """``channel --session HEX [--wait SECONDS]``."""
    usage = "usage: bridgeproto channel --session HEX [--wait SECONDS]"
    if len(argv) not in (2, 4) or argv[0] != "--session" or argv[2:3] not in ([], ["--wait"]):
        print(usage, file=sys.stderr)
        return 2
    try:
        session_id = bytes.fromhex(argv[1])
        wait = float(argv[3]) if len(argv) == 4 else 0.0
    except ValueError:
        print(f"bridgeproto channel: --session takes hex digits, --wait seconds; {usage}",
              file=sys.stderr)  # fmt: skip
        return 2
    return relay(channel_socket(session_id), wait)
