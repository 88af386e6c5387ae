"""The inside half of ``check_offline_isolation``: an adversary's attempts.

Runs in the sandbox as ``python3 -c`` with only the standard library, reads
its targets as JSON on stdin and prints one JSON object: for each property,
``[held, detail]``. It tries for real (connects, setns, mount, writes), so a
hole shows up as a success here; nothing it does outlives it (writes use
unnamed temporary files).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import socket
import struct
import sys
import tempfile
import time
from typing import Any

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
WRITE_TARGETS = ("/", "/etc", "/usr", "/usr/local/bin", "/var", "/root", "/home", "/opt")


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def tcp(targets: list[list[Any]]) -> tuple[bool, str]:
    reached = []
    for host, port in targets:
        try:
            socket.create_connection((host, port), timeout=1).close()
            reached.append(f"{host}:{port}")
        except OSError:
            pass
    return not reached, f"connected to {', '.join(reached)}" if reached else "every connect failed"


def udp(targets: list[list[Any]], nonce: str) -> tuple[bool, str]:
    # Whether a datagram arrived is for the host to say; here we only send.
    sent = 0
    for host, port in targets:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(nonce.encode(), (host, port))
            sent += 1
        except OSError:
            pass
    return True, f"{sent} of {len(targets)} datagrams left the probe"


def only_loopback() -> tuple[bool, str]:
    with open("/proc/net/dev") as file:
        names = [line.split(":")[0].strip() for line in file.read().splitlines()[2:]]
    return names == ["lo"], f"interfaces: {', '.join(names)}"


def _pids() -> list[str]:
    return [name for name in os.listdir("/proc") if name.isdigit()]


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def host_processes(marker: str) -> dict[str, tuple[bool, str]]:
    needle = marker.encode()
    argv = [pid for pid in _pids() if needle in (_read(f"/proc/{pid}/cmdline") or b"")]
    environ = [pid for pid in _pids() if needle in (_read(f"/proc/{pid}/environ") or b"")]
    seen = f"the host's marker process is visible as pid {', '.join(argv)}"
    return {
        "no host process is visible": (not argv, seen if argv else f"{len(_pids())} pids, all own"),
        "host command lines are unreadable": (not argv, "read the marker's argv" if argv else "ok"),
        "host environments are unreadable": (
            not environ,
            "read the marker's environment" if environ else "ok",
        ),
    }


def inherited(marker: str, descriptor: list[int], watch: float) -> dict[str, tuple[bool, str]]:
    """The caller's own environment and an inheritable descriptor it holds:
    in any process visible here, watched for ``watch`` seconds while the host
    starts other commands (a launcher step may hold them only for a moment)."""
    needle, identity = marker.encode(), tuple(descriptor)
    environ, held, seen, scans = set(), set(), set(), 0
    deadline = time.monotonic() + watch
    while True:
        scans += 1
        for pid in _pids():
            seen.add(pid)
            if needle in (_read(f"/proc/{pid}/environ") or b"") + (
                _read(f"/proc/{pid}/cmdline") or b""
            ):
                environ.add(pid)
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for name in names:
                try:
                    stat = os.stat(f"/proc/{pid}/fd/{name}")
                except OSError:
                    continue
                if (stat.st_dev, stat.st_ino) == identity:
                    held.add(f"{pid}:{name}")
        if time.monotonic() >= deadline:
            break
    watched = f"{scans} scans, {len(seen)} pids seen"

    def some(found: set[str]) -> str:
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        return ", ".join(sorted(found)[:5]) + more

    return {
        "nothing of the caller's environment inside": (
            not environ,
            f"found in pid {some(environ)}" if environ else f"ok ({watched})",
        ),
        "no descriptor of the caller's inside": (
            not held,
            f"held as pid:fd {some(held)}" if held else f"ok ({watched})",
        ),
    }


def join_namespaces() -> tuple[bool, str]:
    libc = _libc()
    own = os.stat("/proc/self/ns/net").st_ino
    joined, tried = [], 0
    for pid in _pids():
        path = f"/proc/{pid}/ns/net"
        try:
            if os.stat(path).st_ino == own:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        tried += 1
        try:
            if libc.setns(fd, CLONE_NEWNET) == 0:
                joined.append(pid)
        finally:
            os.close(fd)
    if joined:
        return False, f"joined the network namespace of pid {', '.join(joined)}"
    return True, f"no other network namespace joinable ({tried} visible)"


def unix_sockets(paths: list[str]) -> tuple[bool, str]:
    reached = []
    for path in paths:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(path)
                reached.append(path)
            except OSError:
                pass
    return not reached, f"connected to {', '.join(reached)}" if reached else "every connect failed"


def mount() -> tuple[bool, str]:
    libc = _libc()
    target = tempfile.mkdtemp()  # a directory of our own: a success hides nothing
    try:
        if libc.mount(b"none", target.encode(), b"tmpfs", 0, None) == 0:
            libc.umount2(target.encode(), 2)
            return False, f"mounted a tmpfs on {target}"
        return True, f"mount failed: {os.strerror(ctypes.get_errno())}"
    finally:
        os.rmdir(target)


def network_configuration() -> tuple[bool, str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        try:  # set the flags lo already has: harmless, but needs CAP_NET_ADMIN
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags))
        except OSError as exc:
            return True, f"changing lo failed: {exc.strerror}"
    return False, "changed the flags of lo"


def capabilities() -> tuple[bool, str]:
    status = dict(
        line.split(":\t", 1) for line in (_read("/proc/self/status") or b"").decode().splitlines()
    )
    names = ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd")
    fields = {name: status.get(name, "?").strip() for name in names}
    nnp = status.get("NoNewPrivs", "?").strip()
    held = all(value == "0" * 16 for value in fields.values()) and nnp == "1"
    if os.getuid() != 0:
        try:
            os.setuid(0)
            held = False
        except OSError:
            pass
    detail = ", ".join(f"{name} {value}" for name, value in fields.items())
    return held, f"{detail}, NoNewPrivs {nnp}, uid {os.getuid()}"


def writes(extra: list[str]) -> tuple[bool, str]:
    written = []
    for directory in (*WRITE_TARGETS, *extra):
        if not os.path.isdir(directory):
            continue
        try:  # an unnamed file: nothing is left behind even where it works
            os.close(os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600))
            written.append(directory)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR) and os.access(directory, os.W_OK):
                written.append(directory)
    return not written, f"wrote in {', '.join(written)}" if written else "every write failed"


def host_file(path: str, marker: str) -> tuple[bool, str]:
    content = _read(path)
    if content is not None and marker.encode() in content:
        return False, f"read {path}"
    return True, "unreadable"


def main() -> None:
    targets = json.load(sys.stdin)
    marker = targets["marker"]
    results: dict[str, tuple[bool, str]] = {
        "only loopback": only_loopback(),
        "no TCP to the host": tcp(targets["tcp"]),
        "no UDP to the host": udp(targets["udp"], marker),
        "no other network namespace can be joined": join_namespaces(),
        **host_processes(marker),
        **inherited(targets["inherited"], targets["descriptor"], targets["watch"]),
        "no host Unix socket is reachable": unix_sockets(targets["unix"]),
        "host files are unreadable": host_file(targets["file"], marker),
        "no capabilities, no_new_privs": capabilities(),
        "cannot mount": mount(),
        "cannot change network configuration": network_configuration(),
        "cannot write outside the allowed paths": writes(targets["forbidden"]),
    }
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
