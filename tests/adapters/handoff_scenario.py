"""Run by test_handoff.py as its own process (so that its environment, its
descriptors, its event loop and its user are the test's to choose): bridges
into an offline sandbox, watched from inside by a scanner that races every
command the host starts.

Usage: ``python handoff_scenario.py KIND TRANSPORT[,TRANSPORT] uvloop|asyncio``
with ``HANDOFF_MARKER`` in the environment and ``HANDOFF_FD`` naming an
inheritable descriptor. It prints one JSON object: what the scanner found
(each hit a process and what held the marker or a host descriptor), how many
processes it saw, and what the host did meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import anyio

from bridgeproto_adapters.launch import open_bridge
from bridgeproto_adapters.processes import PIPE
from bridgeproto_adapters.sandboxes import BwrapSandbox, UnshareSandbox

STOP = "/tmp/handoff-stop"
COMMANDS = 100  # started by the host for each transport, besides the bridge's own
REQUESTS = 10

# Inside, as the sandbox's user; standard library only. Reads the marker and
# the host descriptors' identities on stdin (never in its argv or
# environment, where it would find itself), says "watching", and scans every
# visible process until the stop file appears.
SCANNER = r"""
import json, os, sys
marker = sys.stdin.readline().strip().encode()
identities = {tuple(i) for i in json.loads(sys.stdin.readline())}
def read(path):
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""
hits, seen, scans = set(), set(), 0
print("watching", flush=True)
while not os.path.exists(sys.argv[1]):
    scans += 1
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        seen.add(pid)
        comm = read(f"/proc/{pid}/comm").decode(errors="replace").strip()
        for part in ("environ", "cmdline"):
            if marker in read(f"/proc/{pid}/{part}"):
                hits.add(f"{pid} ({comm}): marker in its {part}")
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                stat = os.stat(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in identities:
                hits.add(f"{pid} ({comm}): a host descriptor as fd {name}")
print(json.dumps({"hits": sorted(hits), "pids": len(seen), "scans": scans}))
"""

AGENT = r"""
import os, sys, urllib.request
for _ in range(int(sys.argv[1])):
    with urllib.request.urlopen(os.environ["BRIDGEPROTO_URL"] + "/ping", timeout=60) as answer:
        assert answer.read() == b"ok"
print("agent done")
"""


async def upstream(listener: anyio.abc.SocketListener) -> None:
    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            received = b""
            while True:
                try:
                    received += await stream.receive()
                except anyio.EndOfStream:
                    return
                while b"\r\n\r\n" in received:
                    _, _, received = received.partition(b"\r\n\r\n")
                    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    await listener.serve(answer)


async def main(kind: str, transports: list[str]) -> None:
    marker = os.environ["HANDOFF_MARKER"]
    passed = int(os.environ["HANDOFF_FD"])
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(upstream, listener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        # A host connection left open and inheritable, as a careless caller's
        # would be: code inside that held it would be past the bridge.
        connection = socket.create_connection(("127.0.0.1", port))
        connection.set_inheritable(True)
        identities = [[s.st_dev, s.st_ino] for s in map(os.fstat, (passed, connection.fileno()))]
        sandbox = await (BwrapSandbox if kind == "bwrap" else UnshareSandbox).create()
        try:
            scanner = sandbox.start(["python3", "-c", SCANNER, STOP], stdin=PIPE)
            assert scanner.stdin is not None and scanner.stdout is not None
            await scanner.stdin.send(f"{marker}\n{json.dumps(identities)}\n".encode())
            said = b""
            while not said.endswith(b"watching\n"):
                said += await scanner.stdout.receive()
            done = []
            for transport in transports:
                url = f"http://127.0.0.1:{port}/rollout/k"
                async with open_bridge(sandbox, url, transport=transport) as bridge:
                    agent = await sandbox.run(
                        ["python3", "-c", AGENT, str(REQUESTS)], env=bridge.env, timeout=120
                    )
                    assert agent.stdout == b"agent done\n", agent
                    for _ in range(COMMANDS):
                        await sandbox.run(["true"], env={"SOME": "value"})
                done.append(transport)
            await sandbox.write_file(STOP, b"")
            report = b""
            async for chunk in scanner.stdout:
                report += chunk
            await scanner.aclose()
        finally:
            await sandbox.aclose()
        connection.close()
        tg.cancel_scope.cancel()
    loop = type(asyncio.get_running_loop()).__module__
    print(json.dumps({**json.loads(report), "transports": done, "loop": loop}))


if __name__ == "__main__":
    kind, transports, loop = sys.argv[1:4]
    anyio.run(main, kind, transports.split(","), backend_options={"use_uvloop": loop == "uvloop"})
