"""The channel relay of the live-stream transport (see ``transports/live.py``).

It runs in the sandbox for every channel the host opens, so it imports
nothing but the standard library and starts fast: it connects to the
sandbox side's Unix socket, writes ``READY``, and copies bytes both ways
until either side ends. Exit status 3 means nothing listens there: the
sandbox side is not running.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Sequence

READY = b"READY\n"
EXIT_NO_DAEMON = 3


def channel_dir(session_id: bytes) -> str:
    """The sandbox side's private directory for a session: fixed by the bridge."""
    return f"/tmp/bridgeproto-{session_id.hex()}"


def channel_socket(session_id: bytes) -> str:
    return os.path.join(channel_dir(session_id), "channel.sock")


def relay(path: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(
            f"bridgeproto channel: the sandbox side is not running ({path}: {exc.strerror})",
            file=sys.stderr,
        )
        return EXIT_NO_DAEMON
    os.write(1, READY)

    def to_socket() -> None:
        try:
            while data := os.read(0, 1 << 16):
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=to_socket, daemon=True).start()
    try:
        while data := sock.recv(1 << 16):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        pass
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
