"""The mailbox transport through real offline sandboxes, and through a
simulated remote provider that is slow, fails calls and cuts their output.

The HTTP behaviour over the mailbox (methods, bodies, gated SSE, cancellation,
timeouts, refusals, bounded shutdown) is in test_http_bridge.py, which runs
every test over it too; here: what the sandbox and the control plane add.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import select
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import attrs
import httpx
import pytest

from bridge import bridge as local_bridge
from bridgeproto.wire import armor
from bridgeproto_adapters.launch import MAILBOX_LIMITS, Bridge, open_bridge
from bridgeproto_adapters.sandbox_calls import channel_socket, mailbox_socket
from bridgeproto_adapters.sandboxes import (
    BwrapSandbox,
    Faults,
    HarnessSandbox,
    SandboxClient,
    SimulatedProvider,
)
from bridgeproto_adapters.transports import mailbox_sandbox
from bridgeproto_adapters.transports.mailbox import MailboxChannels, MailboxOptions
from sandbox_kinds import SITE_PACKAGES, need_bwrap
from upstream import pattern_bytes, running_upstream

pytestmark = pytest.mark.anyio
T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def offline(ro: tuple[str, ...] = ()) -> AsyncIterator[BwrapSandbox]:
    need_bwrap()
    sandbox = await BwrapSandbox.create(ro=ro)
    try:
        yield sandbox
    finally:
        await sandbox.aclose()


def channels(bridge: Bridge) -> MailboxChannels:
    assert isinstance(bridge.channels, MailboxChannels)
    return bridge.channels


async def agent(
    sandbox: SandboxClient, bridge: Bridge, script: str, *args: str, timeout: float = 60
) -> str:
    """Run a Python agent in the sandbox; its stdout, or the failure."""
    result = await sandbox.run(
        ["python3", "-c", script, *args],
        env={**bridge.env, "PYTHONPATH": SITE_PACKAGES},
        timeout=timeout,
    )
    assert result.exit_code == 0, result.stderr.decode()
    return result.stdout.decode()


JUNK_CALLS = """
import glob, socket, struct
(path,) = glob.glob("/tmp/bridgeproto-*/mailbox.sock")
# epoch, input number, offset got, wait, largest answer, waiting, rewind, input length
for junk in (
    b"short",  # then hang up mid-header
    struct.pack(">QQQIIIBI", 1, 1, 0, 0, 1024, 1, 0, 1 << 31),  # 2 GiB of input announced
    struct.pack(">QQQIIIBI", 0, 0, 0, 0, 1024, 1, 0, 0),  # an epoch long over
):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(junk)
    sock.shutdown(socket.SHUT_WR)
    print(sock.recv(100).decode().strip() or "closed")
"""


async def test_requests_and_streams_cross_a_bwrap_sandbox_over_the_mailbox() -> None:
    script = """
import json, os, urllib.request
url = os.environ["BRIDGEPROTO_URL"]
post = urllib.request.Request(url + "/echo", data=b"x" * 100_000, method="POST")
echo = json.load(urllib.request.urlopen(post))
print(echo["method"], echo["body_size"])
with urllib.request.urlopen(url + "/sse?n=3") as events:
    print([line.strip().decode() for line in events if line.startswith(b"data:")])
try:
    urllib.request.urlopen(url + "/status/404")
except urllib.error.HTTPError as exc:
    print(exc.code)
"""
    secret = b"Bearer host-only-secret"
    async with running_upstream() as upstream, offline() as sandbox:
        async with open_bridge(
            sandbox, upstream.url, transport="mailbox", headers=[(b"authorization", secret)]
        ) as bridge:
            # Code in the sandbox reaches the daemon's call socket (same user):
            # junk on it is dropped without harm to the calls that are real.
            said = await agent(sandbox, bridge, JUNK_CALLS)
            assert said.split() == ["closed", "closed", "STALE"], said
            lines = (await agent(sandbox, bridge, script)).splitlines()
        # Stopped: nothing of the bridge runs in the sandbox, its directory is gone.
        # (The brackets keep the patterns from matching this command itself.)
        left = await sandbox.run(
            "pgrep -f '[s]andbox-side|[E]XIT_STALE'; ls -d /tmp/bridgeproto-*/"
        )
        assert left.stdout == b"", left.stdout
        assert lines == [
            "POST 100000",
            "['data: event 0', 'data: event 1', 'data: event 2']",
            "404",
        ]
        assert all(
            ["authorization", secret.decode()] in request["headers"]  # type: ignore[operator]
            for request in upstream.requests
        )
        # Junk that claims the current epoch disturbs the calls waiting then (a
        # loaded machine saw one or two fail); they are repaired in the epoch.
        assert channels(bridge).stats.failed <= 3


# Code in the sandbox can write to the spool too: a cut file, one of an
# epoch long over, and a damaged one of the epoch in use (read from the
# waiting call's command line, as such code could).
JUNK_UPLOADS = """
import glob, re, struct, zlib
(spool,) = glob.glob("/tmp/bridgeproto-*/spool")
epoch = max(
    int(m.group(1))
    for path in glob.glob("/proc/[0-9]*/cmdline")
    for m in [re.search(rb"--epoch\\x00(\\d+)", open(path, "rb").read())] if m
)
def upload(name, epoch, number, data, crc=None):
    head = struct.pack(">QQQI", epoch, number, len(data), zlib.crc32(data) if crc is None else crc)
    with open(f"{spool}/{name}", "wb") as file:
        file.write(head + data)
with open(f"{spool}/cut", "wb") as file:
    file.write(b"short")
upload("old", 0, 1, b"old news")
upload("damaged", epoch, 1 << 40, b"x" * 100, crc=1)
print(epoch)
"""


async def test_junk_in_the_spool_harms_no_real_exchange() -> None:
    script = (
        "import os, urllib.request\n"
        "print(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/json').read())"
    )
    async with (
        running_upstream() as upstream,
        offline() as sandbox,
        open_bridge(sandbox, upstream.url, transport="mailbox") as bridge,
    ):
        assert "ok" in await agent(sandbox, bridge, script)
        before = channels(bridge).stats.epochs
        assert int(await agent(sandbox, bridge, JUNK_UPLOADS)) == before
        with anyio.fail_after(20):  # the damaged upload ends the epoch; the session resumes
            while channels(bridge).stats.epochs == before:
                await anyio.sleep(0.05)
        assert "ok" in await agent(sandbox, bridge, script)
        spool = await sandbox.run("ls /tmp/bridgeproto-*/spool")
        assert spool.stdout.split() == [b"cut"]  # still waiting to be whole
        log = await sandbox.run("cat /tmp/bridgeproto-*/log")
        assert b"damaged; ending epoch" in log.stdout
    assert len(upstream.requests) == 2


def test_the_spool_watch_wakes_when_a_file_is_written_or_moved_in(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    fd = mailbox_sandbox._inotify(str(spool))
    assert fd is not None
    try:
        for land in (
            lambda: (spool / "written").write_bytes(b"x"),
            lambda: (tmp_path / "elsewhere").rename(spool / "moved"),
        ):
            (tmp_path / "elsewhere").write_bytes(b"y")  # outside the spool: not seen
            assert select.select([fd], [], [], 0)[0] == []
            land()
            assert select.select([fd], [], [], 10)[0] == [fd]
            while select.select([fd], [], [], 0)[0]:
                os.read(fd, 4096)
    finally:
        os.close(fd)


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polled"])
async def test_the_spool_watch_ends_quietly_when_a_stop_removes_the_spool(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, inotify: bool
) -> None:
    """A stop removes the bridge's directory while the watch may be looking:
    the watch ends, it does not fail the sandbox side with FileNotFoundError."""
    if not inotify:
        monkeypatch.setattr(mailbox_sandbox, "_inotify", lambda directory: None)
    spool = tmp_path / "spool"
    spool.mkdir()

    async def no_epoch(epoch: int) -> None:
        return None

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(mailbox_sandbox._watch_spool, str(spool), no_epoch)
            await anyio.wait_all_tasks_blocked()
            spool.rmdir()
    # the task group exits only once the watch has ended by itself


async def test_without_inotify_the_spool_is_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailbox_sandbox, "_inotify", lambda directory: None)
    async with local_bridge(transport="mailbox") as bridged, httpx.AsyncClient() as client:
        stats = bridged.mailbox.stats if bridged.mailbox is not None else None
        assert stats is not None
        for size in (10, 100_000):
            before = stats.uploads
            answer = await client.post(bridged.url + "/echo", content=b"x" * size)
            assert answer.json()["body_size"] == size
            assert stats.uploads - before == 1  # the response, found in the spool by polling
        assert stats.failed == 0


async def test_64_mib_cross_intact_each_way() -> None:
    size = 64 << 20
    script = f"""
import hashlib, json, os, urllib.request
url = os.environ["BRIDGEPROTO_URL"]
body = (bytes(range(256)) * 256 * ({size} // 65536 + 1))[:{size}]
echo = json.load(urllib.request.urlopen(urllib.request.Request(url + "/echo", data=body)))
print(echo["body_size"], echo["body_sha256"])
download = urllib.request.urlopen(url + "/bytes?size={size}")
digest, total = hashlib.sha256(), 0
while chunk := download.read(1 << 20):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest())
"""
    expected = hashlib.sha256(pattern_bytes(size)).hexdigest()
    async with (
        running_upstream() as upstream,
        offline() as sandbox,
        open_bridge(sandbox, upstream.url, transport="mailbox") as bridge,
    ):
        # Without a Config of the caller's, the mailbox's larger windows.
        assert bridge.session.conn.config.limits == MAILBOX_LIMITS
        up, down = (await agent(sandbox, bridge, script, timeout=300)).splitlines()
    assert up == f"{size} {expected}"
    assert down == f"{size} {expected}"


# Exchanges 0, 4, 8, ... GET 300 KB; the others POST 10 KB to /echo?id=N;
# eight threads; each outcome, or the error that ended it, as JSON.
MIXED = """
import hashlib, json, os, sys, threading, urllib.request
url = os.environ["BRIDGEPROTO_URL"]
results, lock = [], threading.Lock()
def one(i):
    try:
        outcome = attempt(i)
    except Exception as exc:  # reported, so a failure says what happened
        outcome = ("ERROR", i, repr(exc), getattr(exc, "headers", {}).get("x-bridge-error"))
    with lock:
        results.append(outcome)
def attempt(i):
    if i % 4 == 0:
        data = urllib.request.urlopen(url + "/bytes?size=300000").read()
        outcome = ("GET", hashlib.sha256(data).hexdigest())
    else:
        body = b"request %d;" % i * 1000
        answer = json.load(urllib.request.urlopen(
            urllib.request.Request(url + "/echo?id=%d" % i, data=body)))
        outcome = ("POST", answer["body_sha256"] == hashlib.sha256(body).hexdigest())
    return outcome
def worker(k):
    for i in range(k, int(sys.argv[1]), 8):
        one(i)
threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def check_mixed(
    results: list[list[object]], n: int, requests: list[dict[str, object]], bridge: Bridge
) -> None:
    """Every exchange of ``MIXED`` answered whole, every POST upstream once."""
    errors = [r for r in results if r[0] == "ERROR"]
    assert errors == [], (errors[:3], bridge.session.conn.failure, channels(bridge).stats)
    assert len(results) == n
    gets = [r for r in results if r[0] == "GET"]
    assert {r[1] for r in gets} == {hashlib.sha256(pattern_bytes(300000)).hexdigest()}
    posts = [i for i in range(n) if i % 4]
    assert [r for r in results if r[0] == "POST"] == [["POST", True]] * len(posts)
    upstream_posts = [r["target"] for r in requests if r["method"] == "POST"]
    assert sorted(upstream_posts) == sorted(f"/echo?id={i}" for i in posts)  # once each


@pytest.mark.parametrize("upload_input", [True, False], ids=["uploads", "calls-only"])
# The stop's own calls fail at the same rate: when the one that reaps the
# sandbox side is lost, the bridge warns so (test_mailbox_start holds that).
@pytest.mark.filterwarnings("ignore:bridgeproto. the sandbox side could not be reaped")
async def test_exactly_once_through_a_provider_that_fails_and_cuts_calls(
    upload_input: bool,
) -> None:
    """20 % of calls and uploads fail (half before running, half after,
    their answers lost), and output past 256 KiB is cut: 200 mixed
    exchanges, every POST reaches the upstream exactly once, every byte
    intact, nothing hangs."""
    faults = Faults(fail_before=0.1, fail_after=0.1, truncate_at=256 << 10, seed=7)
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, faults)
        sandbox = HarnessSandbox(provider, "sim-1")
        with anyio.fail_after(240):
            async with open_bridge(
                sandbox, upstream.url, mailbox=MailboxOptions(wait=2.0, upload_input=upload_input)
            ) as bridge:
                # The agent runs in the real sandbox directly: its own command
                # is not what is under test, the bridge's calls are.
                results = json.loads(await agent(real, bridge, MIXED, "200", timeout=200))
    check_mixed(results, 200, upstream.requests, bridge)
    assert sum(provider.failed.values()) > 10  # the faults did happen
    assert provider.failed["upload_bytes"] > 0 or not upload_input  # to uploads too
    # Failed calls were made again within their epoch: only five in a row end one.
    stats = channels(bridge).stats
    assert stats.epochs <= 1 + stats.failed // 5, stats


IDLE_MARGIN = 0.5  # a call's own time on top of its 1 s wait, on a busy machine


async def idle_call_gaps(provider: SimulatedProvider, calls: int = 5) -> list[float]:
    """The times between the starts of the next ``calls`` calls, the last
    three of them: by then the start's and the handshake's calls are over,
    and an idle bridge makes one call per wait (each starts as the last
    returns), so each gap is the wait."""
    starts: list[float] = []
    original = provider.execute_command

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        starts.append(anyio.current_time())
        return await original(*args, **kwargs)

    provider.execute_command = recorded  # type: ignore[method-assign]
    try:
        with anyio.fail_after(calls * (1.0 + IDLE_MARGIN) + 5):
            while len(starts) < calls:
                await anyio.sleep(0.05)
    finally:
        del provider.execute_command
    return [later - earlier for earlier, later in zip(starts[-4:], starts[-3:], strict=False)]


@pytest.mark.parametrize("upload_input", [True, False], ids=["uploads", "calls-only"])
async def test_calls_to_start_per_request_and_per_idle_wait(upload_input: bool) -> None:
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults())
        sandbox = HarnessSandbox(provider, "sim-2")
        options = MailboxOptions(wait=1.0, upload_input=upload_input)
        async with open_bridge(sandbox, upstream.url, mailbox=options) as bridge:
            # First time in this sandbox: the upload, the start; then the
            # handshake: a waiting call and the host's hello, uploaded or in
            # a call of its own (and, as the answers cross, perhaps the
            # waiting call's successor already).
            print("start:", dict(provider.calls))
            assert provider.calls["upload_bytes"] == 1 + upload_input
            assert 3 - upload_input <= provider.calls["execute_command"] <= 4, provider.calls
            uploads = provider.calls["upload_bytes"]
            gaps = await idle_call_gaps(provider)
            assert all(0.9 <= gap <= 1.0 + IDLE_MARGIN for gap in gaps), gaps
            assert provider.calls["upload_bytes"] == uploads  # one call per wait, nothing else
            script = (
                "import os, urllib.request\n"
                "print(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/json').read())"
            )
            before = collections.Counter(provider.calls)
            assert "ok" in await agent(real, bridge, script)
            used = provider.calls - before
            print("one request:", dict(used))
            # The request up (the waiting call returns) and the response down:
            # an upload and the next waiting call, or one call carrying it.
            assert used["upload_bytes"] == upload_input
            assert used.total() <= 2, used
        assert provider.failed == {}


async def test_an_epoch_opened_after_calls_failed_idles_at_one_call_per_wait() -> None:
    """When no call of an epoch came back, the host probes the next epoch
    with a call that does not wait. That call answers at once, and the
    epoch's later calls still wait for output as usual (a probe that released
    them too would spin one call after another until the next failure)."""
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults())
        sandbox = HarnessSandbox(provider, "sim-5")
        async with open_bridge(sandbox, upstream.url, mailbox=MailboxOptions(wait=1.0)) as bridge:
            epochs = channels(bridge).stats.epochs
            provider.faults = Faults(fail_before=1.0)
            with anyio.fail_after(20):
                # The epoch ends (calls failing in a row), and a new one's probe fails too.
                while channels(bridge).stats.epochs < epochs + 2:
                    await anyio.sleep(0.05)
            epochs = channels(bridge).stats.epochs
            provider.faults = Faults()
            with anyio.fail_after(10):
                while channels(bridge).stats.epochs == epochs:  # the probed epoch opens
                    await anyio.sleep(0.05)
            gaps = await idle_call_gaps(provider)
            assert all(0.9 <= gap <= 1.0 + IDLE_MARGIN for gap in gaps), gaps  # one per wait
            script = (
                "import os, urllib.request\n"
                "print(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/json').read())"
            )
            assert "ok" in await agent(real, bridge, script)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_the_openai_sdk_in_the_sandbox_through_a_simulated_harness_client() -> None:
    script = """
import openai
client = openai.OpenAI(max_retries=0)
hi = [{"role": "user", "content": "hi"}]
plain = client.chat.completions.create(model="test-model", messages=hi)
print(plain.choices[0].message.content)
stream = client.chat.completions.create(model="test-model", messages=hi, stream=True)
print("|".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
"""
    faults = Faults(latency=0.05, fail_before=0.05, fail_after=0.05, seed=3)
    async with running_upstream() as upstream, offline(ro=(SITE_PACKAGES,)) as real:
        provider = SimulatedProvider(real, faults)
        sandbox = HarnessSandbox(provider, "sim-3")
        # The harness runs its agent through its client too: one of its own
        # (a failed run of the agent itself would be the harness's to retry).
        harness = HarnessSandbox(SimulatedProvider(real, Faults(latency=0.05)), "sim-3")
        async with open_bridge(sandbox, upstream.url) as bridge:
            lines = (await agent(harness, bridge, script, timeout=120)).splitlines()
        assert provider.calls["execute_command"] > 2  # the bridge's calls went through it
    assert lines[0] == "Hello, world!"
    assert lines[1].strip("|").split("|") == ["Hello", ",", " world", "!"]
    assert isinstance(bridge.channels, MailboxChannels)  # auto chose it: no live processes


async def test_a_sandbox_that_stops_answering_ends_the_bridge_with_a_clear_error() -> None:
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults())
        sandbox = HarnessSandbox(provider, "sim-4")
        with anyio.fail_after(30):
            async with open_bridge(
                sandbox, upstream.url, resume_timeout=2.0, mailbox=MailboxOptions(wait=0.5)
            ) as bridge:
                hanging = await real.open_process(
                    ["python3", "-c", "import os, urllib.request\n"
                     "urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/hang')"],
                    env=bridge.env,
                )  # fmt: skip
                await upstream.hang_started.wait()  # an exchange is in flight
                provider.faults = attrs.evolve(provider.faults, fail_before=1.0)
                await bridge.session.finished.wait()
                await upstream.hang_closed.wait()  # its upstream request was ended too
                provider.faults = Faults()  # it answers again, so the stop can clean up
            await hanging.stop()
    failure = bridge.session.conn.failure
    assert failure is not None
    assert "no channel came within 2 s" in failure.reason
    assert "simulated: execute_command failed before it ran" in failure.reason


async def test_mailbox_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_calls >= 2"):
        MailboxOptions(max_calls=1)


@pytest.mark.parametrize("transport", ["mailbox", "stream"])
async def test_the_calls_look_for_the_sockets_where_the_daemon_listens(transport: str) -> None:
    """The calls (or channel processes) find the daemon's socket, and the
    daemon serves only the transport its settings name: no other socket."""
    async with (
        running_upstream() as upstream,
        offline() as sandbox,
        open_bridge(sandbox, upstream.url, transport=transport) as bridge,
    ):
        session_id = bridge.session.conn.session_id
        sockets = {"mailbox": mailbox_socket(session_id), "stream": channel_socket(session_id)}
        for name, path in sockets.items():
            listening = await sandbox.run(["test", "-S", path])
            if name == transport:
                assert listening.exit_code == 0, f"no socket at {path}"
            else:
                assert listening.exit_code == 1, f"a {transport} bridge's daemon listens at {path}"


class CountingProvider(SimulatedProvider):
    """Counts the calls and uploads in flight at once, and the most seen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()

    async def _call(self, method: str, work: Callable[[], Awaitable[T]]) -> T:
        self.now[method] += 1
        self.peak[method] = max(self.peak[method], self.now[method])
        try:
            return await super()._call(method, work)
        finally:
            self.now[method] -= 1

    async def upload_bytes(
        self, sandbox_id: str, file_path: str, file_bytes: bytes, filename: str
    ) -> None:
        # Uploads to the spool, and a call's own large input, uploaded as
        # part of that call (it holds the call's place).
        kind = "spool" if "/spool/" in file_path else "call input"
        self.now[kind] += 1
        self.peak[kind] = max(self.peak[kind], self.now[kind])
        try:
            await super().upload_bytes(sandbox_id, file_path, file_bytes, filename)
        finally:
            self.now[kind] -= 1


@pytest.mark.parametrize("max_calls", [2, 3])
async def test_the_mailbox_keeps_to_max_calls(max_calls: int) -> None:
    """Calls in flight, and uploads in flight, never exceed ``max_calls``
    (and reach it while data flows), through failures and their repairs."""
    async with running_upstream() as upstream, offline() as real:
        provider = CountingProvider(real, Faults(latency=0.05, fail_after=0.1, seed=2))
        sandbox = HarnessSandbox(provider, "sim-cap")
        options = MailboxOptions(wait=2.0, max_calls=max_calls)
        async with open_bridge(sandbox, upstream.url, mailbox=options) as bridge:
            results = json.loads(await agent(real, bridge, MIXED, "40", timeout=120))
            peak = dict(provider.peak)  # (the stop's last call comes on top of these)
    check_mixed(results, 40, upstream.requests, bridge)
    assert peak["execute_command"] == max_calls, peak
    assert 1 <= peak["spool"] <= max_calls, peak
    assert peak["call input"] <= max_calls, peak


async def test_the_daemon_killed_ends_a_mailbox_bridge_at_once_and_says_why() -> None:
    async with running_upstream() as upstream, offline() as sandbox:
        with anyio.fail_after(20):
            async with open_bridge(
                sandbox, upstream.url, transport="mailbox", mailbox=MailboxOptions(wait=1.0)
            ) as bridge:
                killed = await sandbox.run("pkill -9 -f '[s]andbox-side --daemon'")
                assert killed.exit_code == 0
                await bridge.session.finished.wait()  # not the 30 s resume deadline
    failure = bridge.session.conn.failure
    assert failure is not None and "the sandbox side is not running" in failure.reason


POST_200_KB = """
import hashlib, json, os, urllib.request
body = bytes(range(256)) * 800
answer = json.load(urllib.request.urlopen(urllib.request.Request(
    os.environ["BRIDGEPROTO_URL"] + "/echo", data=body), timeout=60))
print(answer["body_size"], answer["body_sha256"] == hashlib.sha256(body).hexdigest())
"""


async def test_a_large_body_crosses_small_batches_while_a_fifth_of_calls_fail() -> None:
    """Issue 23.1: with 4 KiB batches and 20 % of calls failing (half after
    running, their answers lost), a 200 KB POST used never to arrive: each
    failure ended the epoch and the resume started over. Failed calls are
    now made again within the epoch, so every answer that gets through
    makes progress."""
    faults = Faults(fail_before=0.1, fail_after=0.1, seed=11)
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, faults)
        sandbox = HarnessSandbox(provider, "sim-big")
        options = MailboxOptions(wait=2.0, batch_bytes=4096)
        async with open_bridge(sandbox, upstream.url, mailbox=options) as bridge:
            with anyio.fail_after(60):
                said = await agent(real, bridge, POST_200_KB)
            stats = channels(bridge).stats
    assert said.split() == ["204800", "True"]
    assert [r["method"] for r in upstream.requests] == ["POST"]
    assert provider.failed["execute_command"] >= 10, provider.failed  # the faults did happen
    assert stats.epochs <= 1 + stats.failed // 5, stats  # repaired within epochs
    # 50 batches of 4 KiB, 80 % of calls getting through: about 63 calls, plus
    # the handshake's (2,680 calls before, one epoch per failure).
    assert stats.calls <= 150, stats


async def test_cut_answers_halve_the_batch_and_whole_ones_grow_it_back() -> None:
    """A provider that cuts answers past 100 KB: the batch halves until its
    armored answers fit (64 KiB: 87 KB); when answers come back whole again
    (the limit lifted), full ones grow it back to ``batch_bytes``."""
    post = """
import hashlib, json, os, urllib.request
body = os.urandom(%d)
answer = json.load(urllib.request.urlopen(urllib.request.Request(
    os.environ["BRIDGEPROTO_URL"] + "/echo", data=body)))
print(answer["body_size"], answer["body_sha256"] == hashlib.sha256(body).hexdigest())
"""
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults(truncate_at=100_000))
        sandbox = HarnessSandbox(provider, "sim-cut")
        options = MailboxOptions(wait=2.0, batch_bytes=1 << 20)
        async with open_bridge(sandbox, upstream.url, mailbox=options) as bridge:
            stats = channels(bridge).stats
            with anyio.fail_after(60):  # the agent's body is the sandbox's output
                assert (await agent(real, bridge, post % (1 << 20))).split() == ["1048576", "True"]
            # (full answers since may have probed one step up and been cut again)
            assert stats.cut >= 4 and stats.smallest_batch_bytes == 64 << 10, stats
            provider.faults = Faults()
            with anyio.fail_after(60):
                assert (await agent(real, bridge, post % (8 << 20))).split() == ["8388608", "True"]
            assert stats.batch_bytes == 1 << 20, stats


# Code inside calls the mailbox socket itself, in the epoch in use (read from
# a waiting call's command line, as such code could), until it has taken one
# answer that held output: output the host never sees.
THIEF = """
import glob, re, socket, struct, sys, time
(path,) = glob.glob("/tmp/bridgeproto-*/mailbox.sock")
def epoch():
    found = []
    for name in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            found += [int(n) for n in re.findall(rb"--epoch\\x00(\\d+)", open(name, "rb").read())]
        except OSError:
            pass
    return max(found, default=1)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    # epoch, no input, got nothing, answer now, up to 1 MiB, one call waiting, no rewind
    sock.sendall(struct.pack(">QQQIIIBI", epoch(), 0, 0, 0, 1 << 20, 1, 0, 0))
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := sock.recv(1 << 20):
        answer += chunk
    if len(answer.strip()) > int(sys.argv[1]):
        print("took", len(answer))
        break
    time.sleep(0.002)
"""

SEQUENTIAL_POSTS = """
import json, os, urllib.request
for i in range(5):
    body = b"post %d;" % i * 100
    answer = json.load(urllib.request.urlopen(urllib.request.Request(
        os.environ["BRIDGEPROTO_URL"] + "/echo?id=%d" % i, data=body), timeout=30))
    print(answer["body_size"])
"""


async def test_output_taken_by_code_inside_is_handed_out_again() -> None:
    """Issue 22.5: code inside takes one answer batch by calling the mailbox
    socket itself. The host's calls never see that output; the sandbox side
    hands it out again once it has gone unacknowledged for 2 s (and the
    host asks again for what it sees missing), so the session goes on in
    bounded time and every request reaches the upstream exactly once (it
    used to wait out the 60 s peer timeout and end the bridge)."""
    empty = len(armor(bytes(8)))  # an answer that holds no output
    async with (
        running_upstream() as upstream,
        offline() as sandbox,
        open_bridge(sandbox, upstream.url, transport="mailbox") as bridge,
    ):
        results: dict[str, str] = {}

        async def run(name: str, script: str, *args: str) -> None:
            done = await sandbox.run(["python3", "-c", script, *args], env=bridge.env, timeout=60)
            assert done.exit_code == 0, done.stderr.decode()
            results[name] = done.stdout.decode()

        with anyio.fail_after(25):  # the host's calls wait 15 s; the peer timeout is 60 s
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "thief", THIEF, str(empty))
                tg.start_soon(run, "agent", SEQUENTIAL_POSTS)
        assert results["thief"].startswith("took"), results
        assert results["agent"].split() == ["700"] * 5
        assert bridge.session.conn.failure is None
    posts = [r["target"] for r in upstream.requests]
    assert posts == [f"/echo?id={i}" for i in range(5)]  # each exactly once


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "exchange-in-flight"])
async def test_a_mailbox_bridge_stops_within_its_grace_and_says_no_channel_broke(
    busy: bool,
) -> None:
    """Issue 23.3: a mailbox bridge took 5.1 s to stop, idle or busy (the
    sandbox side never got the host's last acknowledgement and waited out
    its own 5 s grace), and reported "the channel broke" on the way. The
    promise held here is the docs': a stop within its grace plus one second."""
    said: list[str] = []
    async with running_upstream() as upstream, offline() as sandbox:
        async with open_bridge(
            sandbox, upstream.url, transport="mailbox", on_channel=said.append
        ) as bridge:
            if busy:
                hanging = await sandbox.open_process(
                    ["python3", "-c", "import os, urllib.request\n"
                     "urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/hang')"],
                    env=bridge.env,
                )  # fmt: skip
                await upstream.hang_started.wait()
            grace = 0.5
            started = anyio.current_time()
            await bridge.stop(grace=grace)
            took = anyio.current_time() - started
            if busy:
                await hanging.stop()
        left = await sandbox.run("ls -d /tmp/bridgeproto-*/ 2>/dev/null")
    assert took <= grace + 1.0, took
    assert left.stdout == b""  # the daemon exited and its directory is gone
    assert not [line for line in said if "broke" in line], said
    assert channels(bridge).stats.failed == 0  # nor did a call of it count as failed


@asynccontextmanager
async def cpu_burners(n: int) -> AsyncIterator[None]:
    """``n`` host processes that spin on a CPU each (this machine's other
    work), stopped by what started them."""
    burners = [await anyio.open_process(["python3", "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            await burner.wait()


async def test_a_starved_host_still_serves_every_request_exactly_once() -> None:
    """Issue 23.7: with the host's CPUs taken by two spinning processes, a
    call that is slow because the host is busy is not a failed call: 80
    mixed exchanges through a provider failing 10 % of calls are all
    answered whole, every POST upstream once."""
    faults = Faults(fail_before=0.05, fail_after=0.05, seed=5)
    async with running_upstream() as upstream, offline() as real, cpu_burners(2):
        provider = SimulatedProvider(real, faults)
        sandbox = HarnessSandbox(provider, "sim-busy")
        with anyio.fail_after(180):
            async with open_bridge(
                sandbox, upstream.url, mailbox=MailboxOptions(wait=2.0)
            ) as bridge:
                results = json.loads(await agent(real, bridge, MIXED, "80", timeout=170))
    check_mixed(results, 80, upstream.requests, bridge)
    assert bridge.session.conn.failure is None


SMALL_POSTS = """
import json, os, sys, urllib.request
for i in range(int(sys.argv[1])):
    url = os.environ['BRIDGEPROTO_URL'] + f'/echo?n={i}'
    request = urllib.request.Request(url, data=b'{"small": true}', method='POST')
    assert json.loads(urllib.request.urlopen(request).read())['target'] == f'/echo?n={i}'
print('ok')
"""


async def test_while_operations_fail_responses_ride_in_calls_not_uploads() -> None:
    """With a fifth of operations failing, each one saved is a failure
    avoided: a small request's response rides in the call that goes to wait
    for the next request instead of an upload of its own (one operation a
    request, not two), and every POST still reaches the upstream once."""
    requests = 40
    async with running_upstream() as upstream, offline() as real:
        provider = SimulatedProvider(real, Faults(fail_before=0.1, fail_after=0.1, seed=13))
        sandbox = HarnessSandbox(provider, "sim-ride")
        with anyio.fail_after(120):
            async with open_bridge(sandbox, upstream.url, transport="mailbox") as bridge:
                before = collections.Counter(provider.calls)
                assert "ok" in await agent(real, bridge, SMALL_POSTS, str(requests))
                used = provider.calls - before
    print("operations:", dict(used), "failed:", dict(provider.failed))
    assert sum(provider.failed.values()) > 5  # the faults did happen
    posts = [r for r in upstream.requests if r["method"] == "POST"]
    assert sorted(int(str(r["target"]).split("=")[1]) for r in posts) == list(range(requests))
    # Uploaded, every response would cost an upload (more with failures).
    assert used["upload_bytes"] < requests / 2, used


def _host_epoch() -> Any:
    from types import SimpleNamespace

    from bridgeproto_adapters.transports.mailbox_host_epoch import _HostEpoch

    owner = SimpleNamespace(options=MailboxOptions(), stats=SimpleNamespace(failed=0))
    return _HostEpoch(owner, 1)  # type: ignore[arg-type]


async def test_a_rewound_answer_that_overtook_the_output_before_it_ends_nothing() -> None:
    """Calls overlap: the sandbox side answers a call with [0, 4) and then
    the rewound one with [4, 8); the rewound answer comes back first. The
    output before it is on its way, not lost: the next answer brings it and
    the epoch goes on (it ended here, a resume costing dozens of calls, and
    test_a_large_body_... failed one run in three on its call bound)."""
    epoch = _host_epoch()
    epoch._took(4, b"5678", True)
    assert epoch.ended is None and epoch.inbox.got == 0
    epoch._took(0, b"1234", False)
    assert epoch.ended is None
    assert epoch.inbox.take(100) == b"12345678"


async def test_output_another_caller_took_ends_the_epoch_at_the_next_answer() -> None:
    """The host never held [0, 4) and the rewound answer starts at 4: if the
    answer after it does not bring [0, 4) either, code inside acknowledged
    it with a call of its own, it cannot be had again, and the epoch ends
    (the session resumes on a new one, which resends what was lost)."""
    epoch = _host_epoch()
    epoch._took(4, b"5678", True)
    assert epoch.ended is None
    epoch._took(8, b"9abc", False)
    assert epoch.ended == "output of this epoch went to another caller"
    assert epoch.inbox.take(100) == b""
