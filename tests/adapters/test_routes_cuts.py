"""Both directions at once through channel cuts: live channels dropped (and
their processes killed) under a real bwrap sandbox, and a mailbox provider
that fails and cuts its calls. Nothing is lost either way, and no POST
reaches either end twice."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal

import anyio
import httpx
import pytest

from bridgeproto_adapters.sandboxes import BwrapSandbox, Faults, HarnessSandbox, SimulatedProvider
from bridgeproto_adapters.transports.mailbox import MailboxChannels
from processes import argv, descendants, is_python
from sandbox_kinds import SITE_PACKAGES
from test_routes_inward import Inside, served_inside

pytestmark = pytest.mark.anyio
MiB = 1 << 20
POSTS = 30

# Outward meanwhile: POSTs to the default upstream and a bulk download, each checked.
AGENT = r"""
import hashlib, json, os, threading, urllib.request
url = os.environ["BRIDGEPROTO_URL"]
out = {}
def posts():
    for i in range(30):
        body = b"out %d;" % i * 100
        answer = json.load(urllib.request.urlopen(url + "/echo?id=%d" % i, body, timeout=120))
        out[i] = answer["body_sha256"] == hashlib.sha256(body).hexdigest()
def bulk():
    data = urllib.request.urlopen(url + "/bytes?size=%d" % (8 << 20), timeout=120).read()
    out["bulk"] = len(data)
threads = [threading.Thread(target=posts), threading.Thread(target=bulk)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def both_ways(inside: Inside) -> dict[str, object]:
    """Inward POSTs and bulk both ways, with the agent's outward traffic running."""
    env = {**inside.bridge.env, "PYTHONPATH": SITE_PACKAGES}
    agent = await inside.sandbox.open_process(["python3", "-c", AGENT], env=env)
    found: dict[str, object] = {}
    up = os.urandom(8 * MiB)
    async with httpx.AsyncClient(timeout=120) as client, anyio.create_task_group() as tg:

        async def posts() -> None:
            for i in range(POSTS):
                body = f"in {i};".encode() * 100
                answer = (await client.post(f"{inside.url}/digest", content=body)).json()
                found[f"post {i}"] = answer["sha256"] == hashlib.sha256(body).hexdigest()

        async def bulk_up() -> None:
            answer = (await client.post(f"{inside.url}/digest", content=up)).json()
            found["up"] = answer["sha256"] == hashlib.sha256(up).hexdigest()

        async def bulk_down() -> None:
            data = (await client.get(f"{inside.url}/bytes?size={8 * MiB}")).content
            expected = (bytes(range(256)) * 256 * 128)[: 8 * MiB]
            found["down"] = data == expected

        for job in (posts, bulk_up, bulk_down):
            tg.start_soon(job)
    output = b""
    while True:
        try:
            output += await agent.stream.receive()
        except anyio.EndOfStream:
            break
    assert await agent.wait() == 0
    found["outward"] = json.loads(output)
    async with httpx.AsyncClient(timeout=60) as client:
        found["seen inside"] = (await client.get(f"{inside.url}/posts")).json()
    return found


def check(found: dict[str, object], inside: Inside) -> None:
    assert all(found[f"post {i}"] for i in range(POSTS)), found
    assert found["up"] is True and found["down"] is True
    outward = found["outward"]
    assert isinstance(outward, dict)
    assert outward == {**{str(i): True for i in range(30)}, "bulk": 8 * MiB}
    # Each POST reached its end exactly once.
    seen = [body for body in found["seen inside"] if body.startswith("in ")]  # type: ignore[attr-defined]
    assert sorted(seen) == sorted((f"in {i};" * 100)[:40] for i in range(POSTS))
    posted = [r["target"] for r in inside.upstream.requests if r["method"] == "POST"]
    assert sorted(posted) == sorted(f"/rollout/k/echo?id={i}" for i in range(30))


async def test_live_channels_dropped_during_both_directions_lose_nothing() -> None:
    chance = random.Random(5)
    async with served_inside("stream") as inside:
        bridge = inside.bridge
        drops: list[object] = []

        stats = bridge.session.stats
        mark = 3 * MiB

        async def drop_channels() -> None:
            """A drop each time another 3 MiB of bodies crossed: always mid-traffic."""
            nonlocal mark
            while True:
                await anyio.sleep(0.01)
                current = bridge.channels.current  # type: ignore[union-attr]
                if stats.body_bytes_sent + stats.body_bytes_received < mark:
                    continue
                if current is None or current in drops:
                    continue  # the next channel is not up yet
                mark += 3 * MiB
                for child in descendants(current.process._process.pid):
                    if is_python(argv(child), b"channel") and chance.random() < 0.5:
                        os.kill(child, signal.SIGKILL)  # a killed channel process, too
                await current.aclose()
                drops.append(current)

        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drop_channels)
                found = await both_ways(inside)
                tg.cancel_scope.cancel()
        reconnects = bridge.session.stats.reconnects
    check(found, inside)
    assert len(drops) >= 4 and reconnects >= 4, (len(drops), reconnects)


async def test_a_mailbox_that_fails_and_cuts_calls_during_both_directions_loses_nothing() -> None:
    faults = Faults(fail_before=0.1, fail_after=0.1, truncate_at=256 << 10, seed=3)
    providers: list[SimulatedProvider] = []

    def through_provider(sandbox: BwrapSandbox) -> HarnessSandbox:
        providers.append(SimulatedProvider(sandbox, faults))
        return HarnessSandbox(providers[0], "sim-1")

    async with served_inside("mailbox", through_provider) as inside:
        with anyio.fail_after(180):
            found = await both_ways(inside)
        channels = inside.bridge.channels
        assert isinstance(channels, MailboxChannels)
        repaired = channels.stats.failed
    check(found, inside)
    # The faults hit live traffic: failed or cut calls were repaired (within
    # their epoch, or by a new one) while both directions ran.
    assert sum(providers[0].failed.values()) > 5 and repaired > 5
