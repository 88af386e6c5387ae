"""One call of the mailbox transport, run in the sandbox (see ``transports/mailbox.py``).

The host runs this for every control-plane call, so it is one self-contained
file of standard library code: the host passes this very source to
``python3 -I -S -c``, which starts in a third of the time the zipapp takes.
It reads the host's input batch (its
stdin, or a file the host uploaded just before), hands it to the sandbox
side over the private Unix socket, waits for the answer (the sandbox side's
output, armored as one line of text) and prints it. ``--got N`` tells the
sandbox side the host holds its output up to offset N (it may forget that
much); ``--rewind``, that the host lost what came after N (a call failed or
came back cut), so this call's answer starts there again. Exit status 3:
nothing listens there, the sandbox side is not running; 4: the sandbox side
has moved to a newer epoch, this call is stale.
"""

from __future__ import annotations

# Only what Python has loaded already or builds in: ``socket`` and
# ``contextlib`` would double the start-up time of every call.
import _socket
import os
import struct
import sys

EXIT_NO_DAEMON = 3  # (the channel relay's too, which takes these from here)
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


def main(argv: list[str]) -> int:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
