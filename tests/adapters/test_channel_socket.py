"""The sandbox side's channel socket, from where code inside the sandbox
stands: it can connect there (it is the sandbox's user), so whatever it
hands over must not cost the bridge more than the host's next channel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from bridgeproto_adapters.launch import Bridge, open_bridge
from bridgeproto_adapters.sandbox_calls import channel_socket
from bridgeproto_adapters.sandboxes import HostCommandSandbox
from sandbox_kinds import make_sandbox
from upstream import running_upstream

pytestmark = pytest.mark.anyio

# Hands the socket two descriptors as a channel process would: here not
# pipes but /dev/zero (endless bytes to read) and /dev/null.
HAND_OVER = """
import array, os, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
fds = [os.open("/dev/zero", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)]
sock.sendmsg([b"channel"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
print(sock.recv(1) == b"" and "closed" or "kept")
"""

# Hands over real pipes of its own, then writes garbage into the one the
# sandbox side reads, as long as it is read.
HAND_OVER_PIPES = """
import array, os, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
(to_side, mine), (theirs, from_side) = os.pipe(), os.pipe()
sock.sendmsg([b"channel"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                             array.array("i", [to_side, from_side]))])
os.close(to_side); os.close(from_side)
try:
    while True:
        os.write(mine, bytes(65536))
except BrokenPipeError:
    print("dropped")
"""

FETCH = """
import os, urllib.request
for _ in range(3):
    with urllib.request.urlopen(os.environ["BRIDGEPROTO_URL"] + "/json", timeout=20) as answer:
        print(answer.status)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def stream_bridge() -> AsyncIterator[tuple[HostCommandSandbox, Bridge]]:
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, upstream.url + "/rollout/k") as bridge,
    ):
        yield sandbox, bridge


async def test_descriptors_that_are_not_a_channel_are_refused() -> None:
    async with stream_bridge() as (sandbox, bridge):
        path = channel_socket(bridge.session.conn.session_id)
        with anyio.fail_after(30):
            handed = await sandbox.run(["python3", "-c", HAND_OVER, path])
        assert handed.stdout == b"closed\n", handed  # refused at once
        with anyio.fail_after(60):
            fetched = await sandbox.run(["python3", "-c", FETCH], env=bridge.env)
        assert fetched.stdout.split() == [b"200"] * 3, fetched
        # The host's channel was never replaced, so never reopened.
        assert bridge.channels.opened == 1
        assert bridge.session.failure is None


async def test_a_channel_of_garbage_from_inside_costs_one_reconnect_at_most() -> None:
    async with stream_bridge() as (sandbox, bridge):
        path = channel_socket(bridge.session.conn.session_id)
        with anyio.fail_after(30):
            handed = await sandbox.run(["python3", "-c", HAND_OVER_PIPES, path])
        assert handed.stdout == b"dropped\n", handed  # its channel was let go
        with anyio.fail_after(60):
            fetched = await sandbox.run(["python3", "-c", FETCH], env=bridge.env)
        assert fetched.stdout.split() == [b"200"] * 3, fetched
        assert bridge.channels.opened <= 2
        assert bridge.session.failure is None


# The channel program with a sandbox side that drops the connection before
# it takes the descriptors (it went away, or something else holds the socket).
DROPPED = """
import socket, sys
from bridgeproto_adapters import sandbox_calls
ours, theirs = socket.socketpair(socket.AF_UNIX)
theirs.close()
sandbox_calls._connect_within = lambda path, wait: ours
sys.exit(sandbox_calls.relay("/nowhere"))
"""


def test_a_channel_the_sandbox_side_does_not_take_says_so_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DROPPED], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith("bridgeproto channel: the sandbox side did not take it (")
