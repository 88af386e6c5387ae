"""Sandbox clients: the conformance suite for every backend, the offline
guarantee, and bridges into real offline sandboxes."""

from __future__ import annotations

import os
import pathlib
from contextlib import aclosing
from typing import Any, ClassVar

import anyio
import attrs
import pytest

from bridgeproto_adapters import packaging
from bridgeproto_adapters.conformance import check_sandbox_client
from bridgeproto_adapters.launch import BridgeStartError, open_bridge
from bridgeproto_adapters.sandboxes import (
    BwrapSandbox,
    CommandPrefixSandbox,
    HarnessSandbox,
    LocalSandbox,
    SandboxError,
    UnshareSandbox,
)
from bridgeproto_adapters.transports.live import ProcessChannels
from sandbox_kinds import make_sandbox, need_bwrap
from upstream import running_upstream

pytestmark = pytest.mark.anyio
OFFLINE = ["bwrap", "unshare"]
SECRET = b"Bearer real-secret-for-tests"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def interfaces(sandbox: Any) -> list[str]:
    """Network interfaces seen inside, from /proc/net/dev."""
    probe = await sandbox.run(["cat", "/proc/net/dev"])
    return [line.split(":")[0].strip() for line in probe.stdout.decode().splitlines()[2:]]


# ------------------------------------------------------------------ conformance


@pytest.mark.parametrize("kind", ["local", *OFFLINE])
async def test_conformance(kind: str) -> None:
    async with make_sandbox(kind) as sandbox:
        await check_sandbox_client(sandbox)


async def test_conformance_of_a_command_prefix_into_an_offline_namespace() -> None:
    # The namespace is made here, the way `docker exec -i` reaches a container.
    async with make_sandbox("unshare") as netns:
        prefix = ["nsenter", f"--target={netns.holder_pid}", "--net", "--"]  # type: ignore[attr-defined]
        sandbox = CommandPrefixSandbox(prefix)
        await check_sandbox_client(sandbox)
        assert await interfaces(sandbox) == ["lo"]  # really inside the offline namespace


@attrs.define
class _Result:
    exit_code: int
    stdout: str
    stderr: str


@attrs.define
class _Content:
    content: str


class FakeHarnessClient:
    """A harness-style client over real processes, answering as such clients do:
    ``str`` output, and ``read_file`` results with ``.content``."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.sandbox = sandbox
        self.calls: list[str] = []

    async def execute_command(self, sandbox_id: str, command: str, timeout: Any = None) -> _Result:
        self.calls.append("execute_command")
        result = await self.sandbox.run(command, timeout=timeout)
        return _Result(result.exit_code, result.stdout.decode("latin-1"), result.stderr.decode())

    async def read_file(self, sandbox_id: str, file_path: str) -> _Content:
        self.calls.append("read_file")
        data = await self.sandbox.read_file(file_path)
        return _Content(data.decode("latin-1"))

    async def upload_bytes(
        self, sandbox_id: str, file_path: str, file_bytes: bytes, filename: str
    ) -> None:
        self.calls.append("upload_bytes")
        await self.sandbox.write_file(file_path, file_bytes)


async def test_conformance_of_the_harness_wrapper() -> None:
    # The fake answers as such clients do (text, not bytes), and the wrapper
    # still passes as it is: every byte value round-trips through files.
    async with aclosing(LocalSandbox()) as local:
        client = FakeHarnessClient(local)
        await check_sandbox_client(HarnessSandbox(client, "sb-1"), live_process=False)
    assert {"execute_command", "upload_bytes"} <= set(client.calls)


async def test_the_local_sandbox_removes_the_directory_it_made_and_only_that(
    tmp_path: pathlib.Path,
) -> None:
    made = LocalSandbox()
    await made.run(["touch", "left-behind"])
    assert os.listdir(made.workdir) == ["left-behind"]
    await made.aclose()
    assert not os.path.exists(made.workdir)
    given = LocalSandbox(str(tmp_path))
    await given.run(["touch", "kept"])
    await given.aclose()
    assert os.listdir(tmp_path) == ["kept"]


async def test_harness_errors_are_mapped() -> None:
    class Broken:
        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the provider is down")

    sandbox = HarnessSandbox(Broken(), "sb-2")  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="execute_command failed: RuntimeError"):
        await sandbox.run(["true"])


async def test_harness_results_may_be_text_or_bytes() -> None:
    class Client:
        answer: Any = None

        async def execute_command(self, sandbox_id: str, command: str, timeout: Any = None) -> Any:
            return self.answer

    client = Client()
    for client.answer in (_Result(0, "dGV4dA==\n", ""), _Result(0, b"dGV4dA==\n", b"")):  # type: ignore[arg-type]
        assert await HarnessSandbox(client, "x").read_file("/f") == b"text"  # type: ignore[arg-type]
    client.answer = _Result(0, "not base64 at all!", "")
    with pytest.raises(SandboxError, match="gave no base64 back"):
        await HarnessSandbox(client, "x").read_file("/f")  # type: ignore[arg-type]


async def test_harness_runs_pass_the_timeout_asked_for_and_need_an_exit_status() -> None:
    """``timeout=None`` means no limit (docs/sandboxes.md): the client is
    asked for none, not for 60 s; others go in whole seconds; an answer
    without an exit status is an error, never a success."""

    class Client:
        timeouts: ClassVar[list[Any]] = []
        answer: Any = _Result(0, "", "")

        async def execute_command(self, sandbox_id: str, command: str, timeout: Any = None) -> Any:
            self.timeouts.append(timeout)
            return self.answer

    client = Client()
    sandbox = HarnessSandbox(client, "x")  # type: ignore[arg-type]
    await sandbox.run(["true"])
    await sandbox.run(["true"], timeout=4.2)
    assert client.timeouts == [None, 5]  # whole seconds, as such clients take them
    client.answer = _Result(None, "", "")  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="answered no exit_code"):
        await sandbox.run(["true"])


# ------------------------------------------------------------------ offline


@pytest.mark.parametrize("kind", OFFLINE)
async def test_offline_sandboxes_cannot_reach_the_host(kind: str) -> None:
    async with running_upstream() as upstream, make_sandbox(kind) as sandbox:
        script = (
            "import socket, sys\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {upstream.port}), timeout=3)\n"
            "except OSError as e:\n    print('unreachable', e.errno)\n"
            "else:\n    print('REACHABLE')\n"
        )
        result = await sandbox.run(["python3", "-c", script])
        assert result.stdout.startswith(b"unreachable"), result
        assert upstream.connections == 0
        assert await interfaces(sandbox) == ["lo"]


async def test_bwrap_sees_the_host_read_only_with_a_private_tmp() -> None:
    async with make_sandbox("bwrap") as sandbox:
        denied = await sandbox.run(["sh", "-c", "echo x > /etc/bridgeproto-test"])
        assert denied.exit_code != 0 and b"Read-only" in denied.stderr
        await sandbox.run(["sh", "-c", "echo inside > /tmp/private"])
        assert not os.path.exists("/tmp/private")  # the host's /tmp is untouched
        assert await sandbox.read_file("/tmp/private") == b"inside\n"


@pytest.mark.parametrize("kind", OFFLINE)
async def test_a_venv_shown_runs_inside_though_its_python_lies_under_a_closed_home(
    kind: str, tmp_path: pathlib.Path
) -> None:
    """A venv's python is a link into the Python it was made from (here, a
    pyenv under a 0700 home); showing the venv, or a directory holding it,
    shows that Python too, read-only, and nothing else of the home."""
    import subprocess
    import sys

    from bridgeproto_adapters.sandboxes.views import SYSTEM_PATHS

    base = os.path.realpath(sys.base_prefix)
    if any(base == p or base.startswith(p + "/") for p in SYSTEM_PATHS):
        pytest.skip(f"this Python lies in the system view ({base}): nothing to show")
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", project / ".venv"], check=True)
    (tmp_path / "home-secret").write_text("not shown")
    if kind == "bwrap":
        need_bwrap()
    for shown in (project / ".venv", project):
        kinds = {"bwrap": BwrapSandbox, "unshare": UnshareSandbox}
        sandbox = await kinds[kind].create(ro=[str(shown)])
        try:
            probe = "import sys; print(sys.prefix, sys.base_prefix)"
            result = await sandbox.run([f"{project}/.venv/bin/python", "-c", probe])
            assert result.exit_code == 0, result
            assert result.stdout.split() == [str(project / ".venv").encode(), base.encode()]
            hidden = await sandbox.run(["cat", str(tmp_path / "home-secret")])
            assert hidden.exit_code != 0
        finally:
            await sandbox.aclose()


# ------------------------------------------------------------------ bridges


@pytest.mark.parametrize("kind", OFFLINE)
async def test_bridge_into_an_offline_sandbox(kind: str) -> None:
    client_script = (
        "import json, os, socket, urllib.request\n"
        "answer = json.load(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/echo'))\n"
        "print(answer['method'], answer['target'])\n"
        "for name, value in answer['headers']:\n"
        "    if name.lower() == 'authorization': print('upstream saw', value)\n"
    )
    async with running_upstream() as upstream, make_sandbox(kind) as sandbox:
        url = f"{upstream.url}/rollout/k1"
        async with open_bridge(sandbox, url, headers=[(b"authorization", SECRET)]) as bridge:
            assert bridge.url == "http://127.0.0.1:13131/rollout/k1"
            # Started next, the command finds the listener ready.
            env = {**bridge.env, "OPENAI_API_KEY": bridge.env["OPENAI_API_KEY"]}
            result = await sandbox.run(["python3", "-c", client_script], env=env)
            assert result.stdout.splitlines() == [
                b"GET /rollout/k1/echo",
                b"upstream saw " + SECRET,
            ], result
            # What the sandbox holds: placeholders, never the secret.
            inside = await sandbox.run(["env"], env=bridge.env)
            assert b"OPENAI_API_KEY=bridgeproto-placeholder-key" in inside.stdout
            assert b"ANTHROPIC_BASE_URL=http://127.0.0.1:13131/rollout/k1" in inside.stdout
            assert b"OPENAI_BASE_URL=http://127.0.0.1:13131/rollout/k1/v1" in inside.stdout
            assert b"real-secret" not in inside.stdout
            written = await sandbox.run("ls /tmp/bridgeproto-*.pyz && grep -rl real-secret /tmp")
            assert b".pyz" in written.stdout  # the bridge's files are there, and
            assert written.exit_code == 1  # none of them holds the secret
            # Another rollout's routes are refused inside the sandbox.
            other = await sandbox.run(
                ["python3", "-c",
                 "import urllib.request, urllib.error\n"
                 "try: urllib.request.urlopen('http://127.0.0.1:13131/rollout/k2/echo')\n"
                 "except urllib.error.HTTPError as e: print(e.code, e.headers['x-bridge-error'])"],
            )  # fmt: skip
            assert other.stdout.strip() == b"403 path-not-allowed"
        assert bridge.session.stats.exchanges == 1  # the refusal never reached the host


@pytest.mark.parametrize("kind", OFFLINE)
async def test_files_written_from_the_host_are_the_sandbox_users_and_follow_no_link_out(
    kind: str, tmp_path: pathlib.Path
) -> None:
    """Files under the private /tmp are written from the host, not by a
    command inside: code in the sandbox plants links to host paths, and
    nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    async with make_sandbox(kind) as sandbox:
        await sandbox.write_file("/tmp/new/dirs/file", b"whole")
        seen = await sandbox.run(
            "cat /tmp/new/dirs/file; echo; stat -c %u /tmp/new/dirs/file /tmp/new/dirs; id -u"
        )
        content, *owners = seen.stdout.decode().split()
        assert content == "whole" and len(set(owners)) == 1, seen.stdout
        planted = await sandbox.run(
            f"ln -s {outside} /tmp/away && mkdir /tmp/here && ln -s {outside}/f /tmp/here/file"
        )
        assert planted.exit_code == 0, planted.stderr
        with pytest.raises(SandboxError, match="cannot write /tmp/away/x"):
            await sandbox.write_file("/tmp/away/x", b"must not land on the host")
        await sandbox.write_file("/tmp/here/file", b"replaces the link")
        inside = await sandbox.run("[ -L /tmp/here/file ] || cat /tmp/here/file")
        assert inside.stdout == b"replaces the link"
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("kind", OFFLINE)
async def test_a_write_that_fails_is_a_sandbox_error(kind: str) -> None:
    async with make_sandbox(kind) as sandbox:
        pass
    with pytest.raises(SandboxError, match="cannot write /tmp/late"):
        await sandbox.write_file("/tmp/late", b"after the sandbox was closed")


@pytest.mark.parametrize("kind", OFFLINE)
async def test_python_missing_or_too_old_is_a_clear_error(kind: str) -> None:
    async with running_upstream() as upstream, make_sandbox(kind) as sandbox:
        with pytest.raises(BridgeStartError, match=r"no working python3 on its PATH; install"):
            async with open_bridge(sandbox, upstream.url, env={"PATH": "/nonexistent"}):
                pass
        await sandbox.write_file("/tmp/oldpy/python3", b"#!/bin/sh\necho 3.8\n")
        await sandbox.run(["chmod", "+x", "/tmp/oldpy/python3"])
        with pytest.raises(
            BridgeStartError, match=r"has Python 3.8, and the sandbox side needs 3.10"
        ):
            async with open_bridge(sandbox, upstream.url, env={"PATH": "/tmp/oldpy:/usr/bin:/bin"}):
                pass


async def test_the_sandbox_side_is_uploaded_once_and_started_in_few_calls() -> None:
    """Control-plane calls to start a bridge: the first in a sandbox opens
    the channel (its process waits for the sandbox side), uploads, starts
    (3); later ones open the channel and start (2): the two Python starts run
    at once. An archive removed since (by the code inside) is put back: one
    start that says so, the upload, the start (4). No channel is lost on the
    way. Stopping costs one call."""
    need_bwrap()
    calls: list[str] = []

    class Counting(BwrapSandbox):
        async def run(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("run")
            return await super().run(*args, **kwargs)

        async def write_file(self, path: str, data: bytes) -> None:
            calls.append(f"write {path}")
            await super().write_file(path, data)

        async def open_process(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("open_process")
            return await super().open_process(*args, **kwargs)

    archive = packaging.build_zipapp()
    assert packaging.build_zipapp() == archive  # cached by content hash
    started: list[list[str]] = []
    async with running_upstream() as upstream:
        plain = await BwrapSandbox.create()
        sandbox = Counting(plain._holder, plain._root, plain.view)
        try:
            for number in range(3):
                if number == 2:
                    await sandbox.run(["rm", f"/tmp/{archive.name}"])
                calls.clear()
                heard: list[str] = []
                async with open_bridge(sandbox, upstream.url, on_channel=heard.append) as bridge:
                    assert bridge.session.ready.is_set()
                    started.append(list(calls))
                assert calls[len(started[-1]) :] == ["run"]  # the stop
                assert heard == []
        finally:
            await sandbox.aclose()
    # The archive goes into the private /tmp from the host: no command runs for it.
    upload = [f"write /tmp/{archive.name}"]
    assert started == [
        ["open_process", *upload, "run"],
        ["open_process", "run"],
        ["open_process", "run", *upload, "run"],
    ]


async def test_a_first_channel_that_gave_up_waiting_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first channel process waits for the sandbox side only so long (a
    host starting hundreds of bridges can take longer): when it has given
    up, another is started once the sandbox side is there, and the bridge
    starts as usual."""
    need_bwrap()
    opened: list[str] = []
    early = ProcessChannels.start_early

    async def impatient(self: ProcessChannels, wait: float) -> None:
        await early(self, wait=0.2)

    monkeypatch.setattr(ProcessChannels, "start_early", impatient)

    class SlowToStart(BwrapSandbox):
        async def run(self, command: Any, **kwargs: Any) -> Any:
            if "--daemon" in " ".join(command):
                await anyio.sleep(1.0)  # the early channel process gives up meanwhile
            return await super().run(command, **kwargs)

        async def open_process(self, *args: Any, **kwargs: Any) -> Any:
            opened.append("channel")
            return await super().open_process(*args, **kwargs)

    async with running_upstream() as upstream:
        sandbox = await SlowToStart.create()
        try:
            heard: list[str] = []
            async with open_bridge(sandbox, upstream.url, on_channel=heard.append) as bridge:
                answer = await sandbox.run(
                    ["python3", "-c", "import urllib.request, os; print(urllib.request.urlopen("
                     "os.environ['BRIDGEPROTO_URL'] + '/json').status)"],
                    env=bridge.env,
                )  # fmt: skip
        finally:
            await sandbox.aclose()
    assert answer.stdout.strip() == b"200", answer
    assert opened == ["channel", "channel"] and heard == [], (opened, heard)


async def test_a_failed_stop_can_be_retried_and_leaves_nothing_running() -> None:
    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, upstream.url) as bridge,
    ):
        real_close, failures = bridge.channels.aclose, []

        async def flaky_close() -> None:
            if not failures:
                failures.append(1)
                raise OSError("the provider dropped the call")
            await real_close()

        bridge.channels.aclose = flaky_close  # type: ignore[method-assign]
        with pytest.raises(OSError):
            await bridge.stop()
        await bridge.stop()  # the retry finishes the job
        assert bridge.channels.current is not None
        assert bridge.channels.current.process.returncode is not None
        left = await sandbox.run(["sh", "-c", "ls /tmp; ps -eo stat=,args="])
        assert b"bridgeproto-" + bridge.session.conn.session_id.hex().encode() not in left.stdout
        running = [line for line in left.stdout.decode().splitlines() if "python" in line]
        assert all(line.startswith("Z") for line in running), left.stdout  # nothing but zombies


@pytest.mark.parametrize("kind", OFFLINE)
async def test_stop_with_requests_in_flight_is_bounded(kind: str) -> None:
    async with running_upstream() as upstream, make_sandbox(kind) as sandbox:
        config_grace = 1.0
        import bridgeproto as bp

        async with open_bridge(
            sandbox, upstream.url, config=bp.Config(shutdown_grace=config_grace)
        ) as bridge:
            waiting = await sandbox.open_process(
                ["python3", "-c",
                 "import urllib.request, urllib.error\n"
                 "try: urllib.request.urlopen('http://127.0.0.1:13131/hang', timeout=30)\n"
                 "except urllib.error.HTTPError as e: print(e.code, e.headers['x-bridge-error'])"],
            )  # fmt: skip
            with anyio.fail_after(10):
                await upstream.hang_started.wait()
            started = anyio.current_time()
            # Documented (docs/adapters.md, "Session"): within the grace plus 1 s;
            # two more seconds are the margin for a loaded machine (as test_run_lifecycle's:
            # with another bridge and two CPU-bound processes beside the suite it took 3.06 s).
            with anyio.fail_after(config_grace + 1 + 2):
                await bridge.stop()
            await bridge.stop()  # a second stop does nothing
            elapsed = anyio.current_time() - started
            output = b""
            with anyio.fail_after(10):
                while True:
                    try:
                        output += await waiting.stream.receive()
                    except anyio.EndOfStream:
                        break
            await waiting.stop()
        assert elapsed < config_grace + 1 + 2
        assert output.strip() == b"503 shutting-down"


async def test_a_daemon_that_does_not_exit_is_killed_after_5_s() -> None:
    """The stop's last step (docs/sandboxes.md): one command that waits up to
    5 s for the daemon to exit, and kills it otherwise. A daemon frozen with
    SIGSTOP never exits on its own."""
    import signal

    from bridgeproto_adapters.launch import _reap_daemon
    from processes import is_python, started_by, wait_gone

    async with (
        running_upstream() as upstream,
        make_sandbox("bwrap") as sandbox,
        open_bridge(sandbox, upstream.url, resume_timeout=0.5) as bridge,
    ):
        (daemon,) = started_by(os.getpid(), lambda command: is_python(command, b"--daemon"))
        os.kill(daemon, signal.SIGSTOP)
        started = anyio.current_time()
        await _reap_daemon(sandbox, bridge.session.conn.session_id)
        elapsed = anyio.current_time() - started
        gone = await anyio.to_thread.run_sync(wait_gone, [daemon], 1)
        assert gone == []  # killed (a stopped process dies of SIGKILL)
    # The 5 s, and one more for the command's own start and its checks on a busy machine.
    assert 5 <= elapsed < 5 + 1, elapsed


@pytest.mark.parametrize("kind", OFFLINE)
async def test_orphans_inside_are_reaped(kind: str) -> None:
    # The sandbox side is such an orphan: a daemon left a zombie looks alive
    # to the stop, which then waited 5 s to kill it.
    async with make_sandbox(kind) as sandbox:
        for _ in range(3):
            await sandbox.run(["sh", "-c", "(sleep 0.1 &)"])
        states: list[str] = []
        for _ in range(200):  # 10 s at most
            listed = await sandbox.run(["ps", "-eo", "stat=,args="])
            states = listed.stdout.decode().splitlines()
            if not any("sleep 0.1" in line or line.startswith("Z") for line in states):
                break
            await anyio.sleep(0.05)
        assert not any(line.startswith("Z") for line in states), states
