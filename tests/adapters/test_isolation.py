"""The offline sandboxes, attacked from inside as untrusted code would: the
shipped isolation check, as root and as an unprivileged user, death with the
owner, terminal injection, exposed paths, and secrets kept out of argv."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator, Mapping
from contextlib import aclosing

import anyio
import pytest

from bridgeproto_adapters import packaging
from bridgeproto_adapters.conformance import check_offline_isolation
from bridgeproto_adapters.sandboxes import (
    BwrapSandbox,
    LocalSandbox,
    SandboxUnavailable,
    UnshareSandbox,
)
from processes import argv, descendants, wait_gone
from sandbox_kinds import make_sandbox, need_bwrap, skip_or_fail, unprivileged_user
from test_cli import BRIDGEPROTO
from upstream import upstream_in_thread

OFFLINE = ["bwrap", "unshare"]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", OFFLINE)
async def test_offline_sandboxes_hold_against_the_code_inside(kind: str) -> None:
    exposed = tempfile.mkdtemp()
    cls = BwrapSandbox if kind == "bwrap" else UnshareSandbox
    if kind == "bwrap":
        need_bwrap()
    sandbox = await cls.create(ro=[exposed])
    try:
        report = await check_offline_isolation(sandbox, forbidden=[exposed])
    finally:
        await sandbox.aclose()
        os.rmdir(exposed)
    assert report.held, report
    assert len(report.findings) == 15


@pytest.mark.anyio
async def test_the_check_finds_every_hole_of_a_sandbox_without_isolation() -> None:
    async with aclosing(LocalSandbox()) as sandbox:
        report = await check_offline_isolation(sandbox)
    holes = {finding.name for finding in report.holes}
    assert {
        "only loopback",
        "no TCP to the host",
        "no UDP to the host",
        "no host process is visible",
        "host command lines are unreadable",
        "host environments are unreadable",
        "no descriptor of the caller's inside",
        "no host Unix socket is reachable",
        "host files are unreadable",
    } <= holes, report
    if os.geteuid() == 0:  # and what root can do that nobody should
        assert {
            "no capabilities, no_new_privs",
            "cannot mount",
            "cannot change network configuration",
            "cannot write outside the allowed paths",
        } <= holes, report
    assert "HOLE  no TCP to the host: connected to 127.0.0.1:" in str(report)


class CarelessSandbox(LocalSandbox):
    """Starts commands with the caller's whole environment, as launchers used to."""

    def environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**os.environ, **super().environment(env)}


@pytest.mark.anyio
async def test_the_check_finds_a_launcher_that_hands_on_the_callers_environment() -> None:
    # The local sandbox starts commands with their own environment only, so
    # the caller's marker never reaches them; a launcher that passes
    # os.environ on is caught.
    async with aclosing(LocalSandbox()) as sandbox:
        held = {f.name: f.held for f in (await check_offline_isolation(sandbox)).findings}
    assert held["nothing of the caller's environment inside"]
    async with aclosing(CarelessSandbox()) as careless:
        report = await check_offline_isolation(careless)
    holes = {finding.name: finding.detail for finding in report.holes}
    assert "nothing of the caller's environment inside" in holes, report


# ------------------------------------------------------------------ unprivileged


@pytest.mark.parametrize("kind", OFFLINE)
def test_offline_sandboxes_hold_for_an_unprivileged_user(kind: str, tmp_path: object) -> None:
    if kind == "bwrap":
        need_bwrap()
    with open("/proc/sys/user/max_user_namespaces") as limit:
        user_namespaces = int(limit.read())
    if user_namespaces == 0:
        skip_or_fail("user namespaces are off on this machine (user.max_user_namespaces = 0)")
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                           capture_output=True, text=True)  # fmt: skip
    if probe.stdout.strip() != "True":
        skip_or_fail(f"{python} (3.10+) is needed to run the host side as another user"
                     " (apt-get install python3)")  # fmt: skip
    user = unprivileged_user()
    # The sandbox side's archive carries everything the host side needs too.
    shared = tempfile.mkdtemp(prefix="bridgeproto-unprivileged-")
    os.chmod(shared, 0o755)
    archive = shutil.copy(packaging.build_zipapp(), shared)
    os.chmod(archive, 0o644)
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {archive!r})\n"
        "import anyio\n"
        "from bridgeproto_adapters.sandboxes import BwrapSandbox, UnshareSandbox\n"
        "from bridgeproto_adapters.conformance import check_offline_isolation\n"
        "async def main():\n"
        f"    sandbox = await {'BwrapSandbox' if kind == 'bwrap' else 'UnshareSandbox'}.create()\n"
        "    try:\n"
        "        report = await check_offline_isolation(sandbox)\n"
        "    finally:\n"
        "        await sandbox.aclose()\n"
        "    print(json.dumps([[f.name, f.held, f.detail] for f in report.findings]))\n"
        "anyio.run(main)\n"
    )
    setpriv = [] if os.geteuid() != 0 else ["setpriv", f"--reuid={user}", f"--regid={user}",
                                            "--clear-groups", "--"]  # fmt: skip
    try:
        result = subprocess.run(
            [*setpriv, python, "-c", script], capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": shared, "TMPDIR": shared},
            cwd=shared,
        )  # fmt: skip
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    if "could not build the sandbox" in result.stderr and "ermission" in result.stderr:
        # A machine that refuses unprivileged user namespaces (a sysctl, AppArmor)
        # looks just like a sandbox that broke: CI, which has them, fails instead.
        skip_or_fail(f"unprivileged user namespaces are refused here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)
    assert [(name, detail) for name, held, detail in findings if not held] == [], findings
    capabilities = dict((name, detail) for name, _, detail in findings)
    assert "CapEff 0000000000000000" in capabilities["no capabilities, no_new_privs"]


# ------------------------------------------------------------------ lifetime


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:  # gone, or a zombie
        return None


@pytest.mark.parametrize("kind", OFFLINE)
def test_everything_inside_dies_with_the_sandbox_owner(kind: str, tmp_path: pathlib.Path) -> None:
    if kind == "bwrap":
        need_bwrap()
    owner_script = (
        "import anyio, sys\n"
        "from bridgeproto_adapters.sandboxes import BwrapSandbox, UnshareSandbox\n"
        "async def main():\n"
        f"    sandbox = await {'BwrapSandbox' if kind == 'bwrap' else 'UnshareSandbox'}.create()\n"
        "    shell = 'sleep 1000 & sleep 1000 & echo up; wait'\n"
        "    live = await sandbox.open_process(['sh', '-c', shell])\n"
        "    assert await live.stream.receive() == b'up\\n'  # both sleeps are forked\n"
        "    print(sandbox.holder_pid, sandbox._root, flush=True)\n"
        "    await anyio.sleep(1000)\n"
        "anyio.run(main)\n"
    )  # fmt: skip
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script], stdout=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        pid, root = owner.stdout.readline().split()
        namespace = _pid_namespace(int(pid))
        assert namespace is not None
        started = descendants(owner.pid)  # the owner's own: the sandbox and its launchers
        inside = [pid for pid in started if _pid_namespace(pid) == namespace]
        assert len(inside) >= 4, inside  # init or holder, sh, and two sleeps
    finally:
        owner.kill()
        owner.wait()
    assert wait_gone(started, 10) == [], "processes of the sandbox outlived its owner"
    # Its directory is left behind, and the next sandbox made here sweeps it.
    assert os.path.isdir(root) and os.path.dirname(root) == str(tmp_path).encode()
    tempfile.tempdir = str(tmp_path)  # the next sandbox is made where the first was
    try:
        anyio.run(_make_and_close, kind)
    finally:
        tempfile.tempdir = None
    assert not os.path.exists(root)


async def _make_and_close(kind: str) -> None:
    async with make_sandbox(kind):
        pass


@pytest.mark.parametrize("kind", OFFLINE)
def test_the_command_cannot_type_into_the_terminal_it_was_started_from(kind: str) -> None:
    if kind == "bwrap":
        need_bwrap()
    inject = (
        "import fcntl, sys, termios\n"
        "try:\n"
        "    for c in b'echo pwned\\n': fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))\n"
        "    print('INJECTED', file=sys.stderr)\n"
        "except OSError as e:\n"
        "    print('refused', e.errno, file=sys.stderr)\n"
    )

    async def scenario() -> tuple[int, str, bytes]:
        async with make_sandbox(kind) as sandbox:
            launch = sandbox.launch(["python3", "-c", inject])
            _, terminal = os.openpty()

            def take_terminal() -> None:  # as a shell in that terminal would be
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

            result = subprocess.run(
                launch.argv, env=launch.env, stdin=terminal, stdout=terminal,
                stderr=subprocess.PIPE, text=True, start_new_session=True,
                preexec_fn=take_terminal, timeout=60,
            )  # fmt: skip
            os.set_blocking(terminal, False)
            try:
                typed = os.read(terminal, 1024)
            except BlockingIOError:
                typed = b""
            os.close(terminal)
            return result.returncode, result.stderr, typed

    _, stderr, typed = anyio.run(scenario)
    assert stderr.startswith("refused"), stderr
    assert int(stderr.split()[1]) in (errno.EPERM, errno.EIO, errno.ENOTTY)
    assert typed == b""  # nothing waits in the terminal's input


# ------------------------------------------------------------------ exposed paths


@pytest.mark.anyio
@pytest.mark.parametrize("kind", OFFLINE)
async def test_exposed_paths_are_read_only_or_writable_as_asked(kind: str) -> None:
    if kind == "bwrap":
        need_bwrap()
    read_only, writable, sibling = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    for directory in (read_only, writable):
        os.chmod(directory, 0o777)  # the sandbox's user is not this one when root
        with open(os.path.join(directory, "note"), "w") as file:
            file.write("from the host")
    cls = BwrapSandbox if kind == "bwrap" else UnshareSandbox
    sandbox = await cls.create(ro=[read_only], rw=[writable])
    try:
        seen = await sandbox.run(["cat", f"{read_only}/note", f"{writable}/note"])
        assert seen.stdout == b"from the hostfrom the host"
        denied = await sandbox.run(["sh", "-c", f"echo x > {read_only}/new"])
        assert denied.exit_code != 0 and b"Read-only" in denied.stderr
        allowed = await sandbox.run(["sh", "-c", f"echo x > {writable}/new"], cwd=writable)
        assert allowed.exit_code == 0, allowed
        assert pathlib.Path(writable, "new").read_text() == "x\n"
        # Of the host's temp directory, only what was exposed shows.
        listing = (await sandbox.run(["ls", os.path.dirname(read_only)])).stdout.split()
        assert {os.path.basename(p).encode() for p in (read_only, writable)} <= set(listing)
        assert os.path.basename(sibling).encode() not in listing
    finally:
        await sandbox.aclose()
        for directory in (read_only, writable, sibling):
            shutil.rmtree(directory)


@pytest.mark.anyio
async def test_exposing_a_missing_path_or_the_whole_host_is_refused() -> None:
    with pytest.raises(SandboxUnavailable, match="no such path"):
        await UnshareSandbox.create(ro=["/nonexistent/bridgeproto"])
    with pytest.raises(SandboxUnavailable, match="would show the whole host"):
        await UnshareSandbox.create(rw=["/"])


# ------------------------------------------------------------------ secrets


def _command_lines() -> Iterator[bytes]:
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as file:
                yield file.read()
        except OSError:
            continue


def test_credentials_from_a_header_file_appear_in_no_command_line(tmp_path: object) -> None:
    need_bwrap()
    secret = "Bearer sk-never-in-argv-4242"
    private, workspace = tempfile.mkdtemp(), tempfile.mkdtemp()
    os.chmod(workspace, 0o755)  # the command runs here, as nobody when we are root
    header_file = os.path.join(private, "headers")
    with open(header_file, "w") as file:
        file.write(f"# the upstream's key\nAuthorization: {secret}\n")
    os.chmod(header_file, 0o600)
    agent = (
        "import json, os, sys, urllib.request\n"
        "mine = [open(f'/proc/{p}/cmdline', 'rb').read() for p in os.listdir('/proc')"
        " if p.isdigit()]\n"
        "needle = b'never-in' + b'-argv'  # spelled apart: this script is an argv too\n"
        "print('inside sees it' if any(needle in c for c in mine) else 'hidden')\n"
        "seen = json.load(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/echo'))\n"
        "print([v for n, v in seen['headers'] if n == 'authorization'][0])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with upstream_in_thread() as upstream:
        url = upstream.url
        run = subprocess.Popen(
            [*BRIDGEPROTO, "run", "--upstream", url, "--header-file", header_file,
             "--sandbox", "bwrap", "--", "python3", "-c", agent],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=workspace,
        )  # fmt: skip
        assert run.stdout is not None and run.stdin is not None
        lines = [run.stdout.readline() for _ in range(3)]
        # While the bridge and the command run, no process on the host shows it.
        leaked = [line for line in _command_lines() if b"never-in-argv" in line]
        _, stderr = run.communicate("done\n", timeout=30)
    shutil.rmtree(private)
    shutil.rmtree(workspace)
    assert lines == ["hidden\n", f"{secret}\n", "ready\n"], stderr
    assert leaked == []
    assert run.returncode == 0


def test_a_header_file_the_sandbox_could_read_is_refused(tmp_path: object) -> None:
    shown = tempfile.mkdtemp()
    header_file = os.path.join(shown, "headers")
    with open(header_file, "w") as file:
        file.write("Authorization: Bearer sk-do-not-show\nnot a header line\n")
    try:
        exposed = subprocess.run(
            [*BRIDGEPROTO, "run", "--upstream", "http://127.0.0.1:9/", "--header-file",
             header_file, "--", "true"],
            capture_output=True, text=True, cwd=shown, timeout=60,
        )  # fmt: skip
        hidden = subprocess.run(
            [*BRIDGEPROTO, "run", "--upstream", "http://127.0.0.1:9/", "--hide-cwd",
             "--header-file", header_file, "--", "true"],
            capture_output=True, text=True, cwd=shown, timeout=60,
        )  # fmt: skip
    finally:
        shutil.rmtree(shown)
    assert exposed.returncode == 2
    assert f"--header-file {header_file} lies in {shown}, which the sandbox can read" in (
        exposed.stderr
    )
    assert hidden.returncode == 2
    assert f"{header_file}:2 is not a 'Name: value' header line" in hidden.stderr
    assert "sk-do-not-show" not in exposed.stderr + hidden.stderr


STAY = "import time; print('started', flush=True); time.sleep(1000)"


def test_run_stops_with_its_sandbox_when_killed() -> None:
    """SIGKILL of ``bridgeproto run`` itself: the sandbox goes with it."""
    need_bwrap()
    with upstream_in_thread() as upstream:
        url = upstream.url
        run = subprocess.Popen(
            [*BRIDGEPROTO, "run", "--upstream", url, "--hide-cwd", "--sandbox", "bwrap", "--",
             "python3", "-c", STAY],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert run.stdout is not None
        assert run.stdout.readline() == "started\n"
        started = descendants(run.pid)  # the sandbox, the bridge's processes, the command
        assert [pid for pid in started if argv(pid)[-1:] == [STAY.encode()]], started
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert wait_gone(started, 10) == []


def test_docs_security_names_what_the_code_does() -> None:
    from bridgeproto_adapters import isolation_probe
    from bridgeproto_adapters.sandboxes import offline, views

    text = (pathlib.Path(__file__).parents[2] / "docs" / "security.md").read_text()
    for directory in isolation_probe.WRITE_TARGETS:
        if directory not in ("/", "/usr/local/bin"):
            assert f"`{directory}`" in text, directory
    for device in views.DEVICES:
        assert f"`{device}`" in text or f"`/dev/{device}`" in text, device
    assert f"`nobody` ({offline.SANDBOX_UID})" in text
    for tool in offline.UnshareSandbox.tools:
        assert f"`{tool}`" in text, tool


def test_run_shows_the_current_directory_read_only_and_rw_paths_writable() -> None:
    """``bridgeproto run -- python3 agent.py`` from a project directory works
    as the README says; ``--rw`` is writable, the rest of the host invisible."""
    need_bwrap()
    project, output = tempfile.mkdtemp(), tempfile.mkdtemp()
    for directory in (project, output):
        os.chmod(directory, 0o777)
    pathlib.Path(project, "agent.py").write_text(
        "import os, sys\n"
        "print(os.getcwd())\n"
        "open(sys.argv[1] + '/result', 'w').write('written inside')\n"
        "try:\n"
        "    open('new-file', 'w')\n"
        "except OSError as e:\n"
        "    print('cwd is read-only:', e.strerror)\n"
        "print(os.path.exists(os.path.expanduser('~root/.bashrc')), os.path.exists('/root'))\n"
    )
    trace = os.path.join(output, "trace")
    try:
        with upstream_in_thread() as upstream:
            result = subprocess.run(
                [*BRIDGEPROTO, "run", "--upstream", upstream.url, "--sandbox", "bwrap",
                 "--rw", output, "--", "python3", "agent.py", output],
                capture_output=True, text=True, cwd=project, timeout=60,
            )  # fmt: skip
            refused = subprocess.run(
                [*BRIDGEPROTO, "run", "--upstream", upstream.url, "--sandbox", "bwrap",
                 "--rw", output, "--trace", trace, "--", "true"],
                capture_output=True, text=True, cwd=project, timeout=60,
            )  # fmt: skip
            traced = subprocess.run(
                [*BRIDGEPROTO, "run", "--upstream", upstream.url, "--sandbox", "bwrap",
                 "--hide-cwd", "--trace", os.path.join(project, "trace"), "--", "true"],
                capture_output=True, text=True, cwd=output, timeout=60,
            )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            project,
            "cwd is read-only: Read-only file system",
            "False False",
        ]
        assert pathlib.Path(output, "result").read_text() == "written inside"
        assert refused.returncode == 2 and "--trace" in refused.stderr
        assert "which the sandbox can read" in refused.stderr
        assert traced.returncode == 0, traced.stderr
        assert os.stat(os.path.join(project, "trace")).st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(project)
        shutil.rmtree(output)
