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
is not running.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import sys
from collections.abc import Sequence

from .mailbox_call import EXIT_NO_DAEMON, channel_dir, connect

READY = b"READY\n"


def channel_socket(session_id: bytes) -> str:
    return os.path.join(channel_dir(session_id), "channel.sock")


def relay(path: str) -> int:
    sock = connect(path, "channel")
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


def main(argv: Sequence[str]) -> int:
    """``channel --session HEX``."""
    if len(argv) != 2 or argv[0] != "--session":
        print("usage: bridgeproto channel --session HEX", file=sys.stderr)
        return 2
    try:
        session_id = bytes.fromhex(argv[1])
    except ValueError:
        print("bridgeproto channel: --session must be hex digits", file=sys.stderr)
        return 2
    return relay(channel_socket(session_id))
