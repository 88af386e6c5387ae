"""What docs/adapters.md and docs/sandboxes.md promise of the mailbox
transport, held as a provider sees it: the calls and uploads it receives
(``--max-out``, stdin, files), through a real offline sandbox, and what the
agent gets. Internals are not looked at."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import attrs
import httpx
import pytest

from bridge import bridge
from bridgeproto_adapters.launch import open_bridge
from bridgeproto_adapters.sandboxes import BwrapSandbox
from bridgeproto_adapters.sandboxes.base import Command, CommandResult
from bridgeproto_adapters.transports import mailbox_sandbox
from bridgeproto_adapters.transports.mailbox import MailboxOptions
from sandbox_kinds import need_bwrap
from test_run_lifecycle import Running
from upstream import running_upstream, upstream_in_thread

pytestmark = pytest.mark.anyio
KiB = 1 << 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@attrs.frozen
class Call:
    max_out: int
    stdin: int  # bytes handed over on the call's stdin
    stdout: int = 0
    cut: bool = False


class Provider(BwrapSandbox):
    """A real offline sandbox whose control plane keeps a log of what it was
    asked, and may cut output longer than ``output_limit`` as providers do."""

    output_limit: int | None = None

    def _log(self) -> list[tuple[str, object]]:
        if not hasattr(self, "events"):
            self.events: list[tuple[str, object]] = []
        return self.events

    async def run(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        is_call = not isinstance(command, str) and "--max-out" in command
        if is_call:
            max_out = int(command[command.index("--max-out") + 1])
            self._log().append(("call", Call(max_out, len(stdin or b""))))
        result = await super().run(command, env=env, cwd=cwd, stdin=stdin, timeout=timeout)
        if is_call:
            cut = self.output_limit is not None and len(result.stdout) > self.output_limit
            if cut:
                result = attrs.evolve(result, stdout=result.stdout[: self.output_limit])
            self._log().append(("answer", Call(max_out, 0, len(result.stdout), cut)))
        return result

    async def write_file(self, path: str, data: bytes) -> None:
        self._log().append(("upload", (path, len(data))))
        await super().write_file(path, data)

    def calls(self) -> list[Call]:
        return [event for kind, event in self._log() if kind == "call"]  # type: ignore[misc]

    def answers(self) -> list[Call]:
        return [event for kind, event in self._log() if kind == "answer"]  # type: ignore[misc]


POST_AGENT = (
    "import hashlib, json, os, sys, urllib.request as u\n"
    "body = os.urandom(int(sys.argv[1]))\n"
    "seen = json.load(u.urlopen(os.environ['BRIDGEPROTO_URL'] + '/echo', body))\n"
    "print(seen['body_sha256'] == hashlib.sha256(body).hexdigest())\n"
)


async def test_no_answer_is_longer_than_the_batch_asked_for() -> None:
    """``batch_bytes``: the most bytes one call brings back (armored: 4/3 of
    it, and a line's framing), here of a 200 KB request body."""
    need_bwrap()
    provider = await Provider.create()
    try:
        async with (
            running_upstream() as upstream,
            open_bridge(provider, upstream.url, transport="mailbox",
                        mailbox=MailboxOptions(wait=1.0, batch_bytes=4 * KiB)) as bridge_,
        ):  # fmt: skip
            result = await provider.run(["python3", "-c", POST_AGENT, "204800"], env=bridge_.env)
    finally:
        await provider.aclose()
    assert result.stdout.strip() == b"True", result
    answers = provider.answers()
    assert {answer.max_out for answer in answers} == {4 * KiB}
    # The armor: 4 characters per 3 bytes of the batch and its 8-byte number,
    # plus the line's own header and CRC (under 64 characters).
    longest = max(answer.stdout for answer in answers)
    assert (4 * KiB) * 4 / 3 < longest <= (4 * KiB + 8) * 4 / 3 + 64, longest
    assert len(answers) >= 204800 // (4 * KiB)


async def test_answers_that_come_back_cut_halve_the_batch() -> None:
    """A provider that cuts output past 6000 bytes: each cut answer halves
    the batch the next call asks for, down to one that fits (4 KiB, whose
    armor is about 5.5 KB); whole answers grow it back; a 100 KB request
    body arrives whole."""
    need_bwrap()
    provider = await Provider.create()
    provider.output_limit = 6000
    try:
        async with (
            running_upstream() as upstream,
            open_bridge(provider, upstream.url, transport="mailbox",
                        mailbox=MailboxOptions(wait=1.0, batch_bytes=16 * KiB)) as bridge_,
        ):  # fmt: skip
            result = await provider.run(
                ["python3", "-c", POST_AGENT, "102400"], env=bridge_.env, timeout=60
            )
    finally:
        await provider.aclose()
    assert result.stdout.strip() == b"True", result
    asked = [call.max_out for call in provider.calls()]
    assert asked[0] == 16 * KiB and 4 * KiB in asked, asked
    # The first call made after a cut answer asks for at most half of it.
    events = provider.events
    for index, (kind, event) in enumerate(events):
        if kind == "answer" and event.cut:  # type: ignore[attr-defined]
            later = [e.max_out for k, e in events[index:] if k == "call"]  # type: ignore[attr-defined]
            half = max(event.max_out // 2, 4 * KiB)  # type: ignore[attr-defined]
            assert not later or later[0] <= half, (event, later)
    assert sum(answer.cut for answer in provider.answers()) >= 2  # 16 KiB, then 8 KiB
    # Whole answers grow it back: after the cuts, 8 KiB is asked for again.
    first_four = asked.index(4 * KiB)
    assert 8 * KiB in asked[first_four:], asked


async def test_input_up_to_48_kib_rides_in_the_call_and_more_is_uploaded_first() -> None:
    """``inline_bytes`` (default 48 KiB), with input in calls (``upload_input=False``):
    input here is what the host sends in, responses of 1 KiB, 40 KiB and 1 MiB."""
    need_bwrap()
    assert MailboxOptions().inline_bytes == 48 * KiB
    provider = await Provider.create()
    sizes = [1 * KiB, 40 * KiB, 1024 * KiB]
    try:
        async with (
            running_upstream() as upstream,
            open_bridge(provider, upstream.url, transport="mailbox",
                        mailbox=MailboxOptions(wait=1.0, upload_input=False)) as bridge_,
        ):  # fmt: skip
            agent = (
                "import os, sys, urllib.request as u\n"
                "for size in map(int, sys.argv[1:]):\n"
                "    url = os.environ['BRIDGEPROTO_URL'] + f'/bytes?size={size}'\n"
                "    got = u.urlopen(url).read()\n"
                "    print(got == (bytes(range(256)) * (size // 256 + 1))[:size])\n"
            )
            result = await provider.run(["python3", "-c", agent, *map(str, sizes)], env=bridge_.env)
    finally:
        await provider.aclose()
    assert result.stdout.split() == [b"True"] * len(sizes), result
    inline = [call.stdin for call in provider.calls() if call.stdin]
    uploaded = [
        event[1]  # type: ignore[index]
        for kind, event in provider.events
        if kind == "upload" and "/in-" in event[0]  # type: ignore[index]
    ]
    assert inline and max(inline) <= 48 * KiB, inline
    assert uploaded and min(uploaded) > 48 * KiB, uploaded
    assert max(inline) > 40 * KiB  # the 40 KiB response went in a call, not uploaded


async def test_without_inotify_the_spool_is_looked_at_every_50_ms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Uploads land in the sandbox side's spool; where the system has no
    inotify, the sandbox side looks every 50 ms (its look once a second
    would add half a second to a request on average)."""
    monkeypatch.setattr(mailbox_sandbox, "_inotify", lambda directory: None)
    async with (
        bridge(transport="mailbox", mailbox=MailboxOptions(wait=2.0, upload_input=True)) as b,
        httpx.AsyncClient(base_url=b.url, timeout=30) as client,
    ):
        assert (await client.post("/echo", content=b"warm up")).status_code == 200
        assert b.mailbox is not None
        uploads_before = b.mailbox.stats.uploads
        took = []
        for i in range(10):
            started = time.monotonic()
            answer = await client.post("/echo", content=b"request %d" % i)
            took.append(time.monotonic() - started)
            assert answer.status_code == 200
        uploads = b.mailbox.stats.uploads - uploads_before
    assert uploads >= 10  # every request went up as an upload to the spool
    # One call's round trip carries the answer back (about 60-70 ms here);
    # the spool adds at most 50 ms; 0.2 s is the margin for a loaded machine.
    assert statistics.median(took) < 0.05 + 0.2, took


def test_mailbox_batch_on_the_command_line_reaches_the_calls(tmp_path: object) -> None:
    """``run --mailbox-batch BYTES``: the calls the sandbox sees ask for at most that."""
    need_bwrap()
    probe = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):  # the sandbox's own\n"
        "    try:\n"
        "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if b'--max-out' in argv:\n"
        "        print(argv[argv.index(b'--max-out') + 1].decode())\n"
    )
    with upstream_in_thread() as upstream, Running(
        "--upstream", upstream.url, "--sandbox", "bwrap", "--hide-cwd", "--transport", "mailbox",
        "--mailbox-batch", "8192", "--", "python3", "-c", probe, tmp=tmp_path,  # type: ignore[arg-type]
    ) as run:  # fmt: skip
        assert run.finish() == 0, run.stderr
    assert run.stdout and set(run.stdout) == {"8192"}, run.stdout  # the call waiting now
