"""The two small programs the host runs in the sandbox again and again.

``mailbox`` is one control-plane call of the mailbox transport (see
``transports/mailbox.py``); ``channel`` is one channel of the live-stream
transport (see ``transports/live.py``). The host runs them for every call
and every channel, so this is one self-contained file of standard library
code: the host passes this very source to ``python3 -I -S -c``, which
starts in about a third of the zipapp's time. The first argument names the
program.

A **mailbox call** reads the host's input batch (its stdin, or a file the
host uploaded just before), hands it to the sandbox side over the private
Unix socket, waits for the answer (the sandbox side's output, armored as one
line of text) and prints it. ``--got N`` tells the sandbox side the host
holds its output up to offset N (it may forget that much); ``--rewind``,
that the host lost what came after N (a call failed or came back cut), so
this call's answer starts there again. Exit status 4: the sandbox side has
moved to a newer epoch, this call is stale.

A **channel** connects to the sandbox side's channel socket, writes
``READY`` and hands its own stdin and stdout to the sandbox side
(``SCM_RIGHTS``): from then on the bytes flow between the host and the
sandbox side directly, through no copy of ours. It then only waits, holding
nothing of the channel, until the sandbox side is done with it. With
``--wait``, the first channel looks for the socket until the sandbox side,
started at the same time, has made it.

Exit status 3, for both: nothing listens there, the sandbox side is not
running.
"""

from __future__ import annotations

# Only what Python has loaded already or builds in: ``socket`` and
# ``contextlib`` would double the start-up time of every call.
import _socket
import os
import struct
import sys
import time

EXIT_NO_DAEMON = 3
EXIT_STALE = 4
# epoch, input batch number (0: none), output offset the host holds, wait in
# ms, largest answer, calls that may wait at once (this one too; older ones
# answer now; 0: none, the host is closing the epoch), rewind (0 or 1), input
# length
REQUEST = struct.Struct(">QQQIIIBI")
STALE = b"STALE\n"


def channel_dir(session_id: bytes) -> str:
    """The sandbox side's private directory for a session: fixed by the bridge."""
    return f"/tmp/bridgeproto-{session_id.hex()}"


def mailbox_socket(session_id: bytes) -> str:
    return os.path.join(channel_dir(session_id), "mailbox.sock")


def channel_socket(session_id: bytes) -> str:
    return os.path.join(channel_dir(session_id), "channel.sock")


def connect(path: str, who: str) -> _socket.socket | None:
    """The sandbox side's socket at ``path``, or None, said on stderr."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(
            f"bridgeproto {who}: the sandbox side is not running ({path}: {exc.strerror})",
            file=sys.stderr,
        )
        return None
    return sock


def call(path: str, head: bytes, data: bytes) -> int:
    sock = connect(path, "mailbox")
    if sock is None:
        return EXIT_NO_DAEMON
    sock.sendall(head + data)
    answer = bytearray()
    while chunk := sock.recv(1 << 20):
        answer += chunk
    if answer == STALE:
        print("bridgeproto mailbox: this call's epoch is over", file=sys.stderr)
        return EXIT_STALE
    if not answer.endswith(b"\n"):
        print("bridgeproto mailbox: the sandbox side ended the call early", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(answer)  # one armored line
    sys.stdout.buffer.flush()
    return 0


def mailbox_main(argv: list[str]) -> int:
    """``mailbox --session HEX --epoch N --in K --wait MS --max-out BYTES
    [--got OFFSET] [--rewind] [--waiting N] [--input FILE]``."""
    rewind = "--rewind" in argv
    argv = [arg for arg in argv if arg != "--rewind"]
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    try:
        session_id = bytes.fromhex(options["--session"])
        fields = [int(options[name]) for name in ("--epoch", "--in")]
        fields.append(int(options.get("--got", "0")))
        fields += [int(options[name]) for name in ("--wait", "--max-out")]
        fields += [int(options.get("--waiting", "1")), rewind]
    except (KeyError, ValueError):
        print(
            "usage: bridgeproto mailbox --session HEX --epoch N --in K --wait MS"
            " --max-out BYTES [--got OFFSET] [--rewind] [--waiting N] [--input FILE]",
            file=sys.stderr,
        )
        return 2
    source = options.get("--input")
    if fields[1] == 0:  # no input batch: stdin is not even read
        data = b""
    elif source:
        with open(source, "rb") as file:
            data = file.read()
        try:  # noqa: SIM105 - contextlib costs milliseconds to import
            os.unlink(source)
        except OSError:
            pass
    else:
        data = sys.stdin.buffer.read()
    head = REQUEST.pack(*fields, len(data))
    return call(mailbox_socket(session_id), head, data)


# ---------------------------------------------------------------- channel

READY = b"READY\n"


def relay(path: str, wait: float = 0.0) -> int:
    sock = _connect_within(path, wait)
    if sock is None:
        return EXIT_NO_DAEMON
    os.write(1, READY)
    fds = struct.pack("ii", 0, 1)
    try:
        sock.sendmsg([b"channel"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError as exc:
        print(f"bridgeproto channel: the sandbox side did not take it ({exc})", file=sys.stderr)
        return 1
    # Keep no copy: the host must see the end of the stream when the sandbox
    # side lets go of it, and the sandbox side when the host does.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    try:  # noqa: SIM105 - contextlib costs milliseconds to import
        sock.recv(1)  # returns when the sandbox side closes its end: the channel is over
    except OSError:
        pass
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
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            time.sleep(pause)
            if time.monotonic() - started > 0.3:
                pause = min(pause * 1.25, 0.1)
    return connect(path, "channel")  # the last try says why on stderr


def channel_main(argv: list[str]) -> int:
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


PROGRAMS = {"mailbox": mailbox_main, "channel": channel_main}


def command_line(python: str, program: str) -> list[str]:
    """The host's argv for ``program`` in the sandbox: this file's own
    source, run by the sandbox's Python isolated and without ``site`` (it
    needs nothing else, and so nothing of the sandbox's own reaches it)."""
    with open(__file__) as file:
        return [python, "-I", "-S", "-c", file.read(), program]


def main(argv: list[str]) -> int:
    """``mailbox ...`` or ``channel ...``."""
    program = PROGRAMS.get(argv[0]) if argv else None
    if program is None:
        print("usage: bridgeproto mailbox|channel ...", file=sys.stderr)
        return 2
    return program(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
