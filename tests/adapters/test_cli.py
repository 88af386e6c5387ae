"""The bridgeproto command, run as a user would: a real process each time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import anyio
import pytest

from bridge import free_port
from sandbox_kinds import need_bwrap
from upstream import upstream_in_thread

BRIDGEPROTO = [sys.executable, "-m", "bridgeproto_adapters"]
# The agent reads the body: one that left after the head would cancel the
# exchange before the body's frame crossed (and the trace would lack it).
FETCH_JSON = (
    "import os, urllib.request as u; u.urlopen(os.environ['BRIDGEPROTO_URL'] + '/json').read()"
)


def bridgeproto(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BRIDGEPROTO, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("kind", "transport"),
    [("bwrap", "stream"), ("unshare", "stream"), ("bwrap", "mailbox"), ("bwrap", "mailbox:call")],
)
def test_run_passes_the_exit_status_and_streams_output_through(kind: str, transport: str) -> None:
    transport, _, mailbox_input = transport.partition(":")
    if kind == "bwrap":
        need_bwrap()
    script = (
        "import json, os, urllib.request\n"
        "seen = json.load(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/echo'))\n"
        "print([v for n, v in seen['headers'] if n == 'authorization'])\n"
        "print('key inside:', os.environ['OPENAI_API_KEY'])\n"
        "raise SystemExit(7)\n"
    )
    with upstream_in_thread() as upstream:
        url = upstream.url
        result = bridgeproto(
            "run", "--upstream", url + "/rollout/k", "--header", "Authorization: Bearer hush",
            "--sandbox", kind, "--transport", transport, "--mailbox-wait", "2",
            "--mailbox-input", mailbox_input or "upload", "--", "python3", "-c", script,
        )  # fmt: skip
    assert result.returncode == 7, result.stderr
    assert result.stdout.splitlines() == [
        "['Bearer hush']",
        "key inside: bridgeproto-placeholder-key",
    ]
    assert f"bridgeproto: sandbox: {kind} (offline)" in result.stderr
    assert "bridgeproto: 1 exchange," in result.stderr and "added latency median" in result.stderr


def test_trace_and_decode(tmp_path: object) -> None:
    need_bwrap()
    trace = os.path.join(str(tmp_path), "trace.txt")
    with upstream_in_thread() as upstream:
        url = upstream.url
        result = bridgeproto(
            "run", "--upstream", url, "--trace", trace, "--",
            "python3", "-c", FETCH_JSON,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    decoded = bridgeproto("decode", trace)
    assert decoded.returncode == 0, decoded.stderr
    lines = decoded.stdout.splitlines()
    assert any("host -> sandbox seq=0     Hello(version 2, host side" in line for line in lines)
    assert any(
        "host <- sandbox" in line
        and "RequestHead(exchange_id=1, method=b'GET', target=b'/json'" in line
        for line in lines
    )
    assert any("Data(exchange 1, 12 bytes: b'{\"ok\": true}')" in line for line in lines)
    assert any("GoAway" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["run", "--upstream", "http://127.0.0.1:1", "--listen", "nonsense", "--", "true"],
            {},
            "is not HOST:PORT",
        ),
        (
            ["run", "--upstream", "http://127.0.0.1:1", "--header", "no colon", "--", "true"],
            {},
            "is not 'Name: value'",
        ),
        (["run", "--upstream", "ftp://x/", "--", "true"], {}, "is not an http:// URL"),
        (
            ["run", "--upstream", "http://127.0.0.1:{port}/", "--", "true"],
            {},
            "cannot reach the upstream 127.0.0.1:",
        ),
        (
            ["run", "--upstream", "UP", "--mailbox-calls", "1", "--", "true"],
            {},
            "at least 2 (one call waits for output while another carries input)",
        ),
        (
            ["run", "--upstream", "UP", "--max-body", "0", "--", "true"],
            {},
            "'0': a body limit must be 1 byte or more",
        ),
        (["run", "--upstream", "http://127.0.0.1:1"], {}, "no command given"),
        (
            ["run", "--upstream", "UP", "--sandbox", "bwrap", "--", "true"],
            {"PATH": "/nonexistent"},
            "bwrap is not installed; install the bubblewrap package",
        ),
        (["decode", "/nonexistent/trace"], {}, "cannot read /nonexistent/trace"),
        (["frobnicate"], {}, "invalid choice"),
        (["sandbox-side", "--session", "xyz"], {}, "--session must be 32 hex digits; usage:"),
        (["sandbox-side"], {}, "--session must be 32 hex digits; usage:"),
        (["sandbox-side", "--session"], {}, "unexpected arguments ['--session']; usage:"),
        (
            ["sandbox-side", "--session", "00" * 16, "--settings", "{"],
            {},
            "the sandbox side's settings are not valid: JSONDecodeError",
        ),
    ],
)
def test_failures_are_one_clear_line_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    port = str(free_port())
    with upstream_in_thread() as upstream:
        url = upstream.url
        args = [a.replace("{port}", port).replace("UP", url) for a in args]
        if "PATH" in env:  # keep the interpreter reachable without the PATH
            result = subprocess.run(
                [*BRIDGEPROTO, *args], capture_output=True, text=True, timeout=60,
                env={**os.environ, **env},
            )  # fmt: skip
        else:
            result = bridgeproto(*args)
    assert result.returncode == 2, result
    assert message in one_line(result.stderr)


@pytest.mark.parametrize("command", [[], ["run"], ["demo"], ["decode"], ["sandbox-side"]])
def test_help_for_every_command(command: list[str]) -> None:
    result = bridgeproto(*command, "--help")
    assert result.returncode == 0 and "usage: bridgeproto" in result.stdout


def test_demo() -> None:
    if shutil.which("bwrap") is None:
        need_bwrap()
    result = bridgeproto("demo", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Hello from the host, one token at a time." in out
    assert "is unreachable directly" in out and "NOT offline" not in out
    assert "sandbox: bwrap (offline)" in out
    assert "bridgeproto: 1 exchange," in result.stderr


def test_verbose_prints_the_summary_while_running() -> None:
    from bridgeproto_adapters.run import _live_summary
    from bridgeproto_adapters.session import SessionStats

    class Session:
        stats = SessionStats(exchanges=3)

    async def scenario() -> None:
        with anyio.move_on_after(0.35):
            await _live_summary(Session(), interval=0.1)  # type: ignore[arg-type]

    import contextlib
    import io

    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        anyio.run(scenario)
    lines = captured.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("bridgeproto: 3 exchanges") for line in lines)


def test_the_command_runs_on_uvloop_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import importlib.util

    from bridgeproto_adapters import eventloop

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    try:
        monkeypatch.setenv("BRIDGEPROTO_UVLOOP", "0")
        eventloop.uvloop_in_use.cache_clear()
        assert not eventloop.uvloop_in_use()
        assert eventloop.run(loop_module).startswith("asyncio")
        monkeypatch.delenv("BRIDGEPROTO_UVLOOP")
        eventloop.uvloop_in_use.cache_clear()
        installed = importlib.util.find_spec("uvloop") is not None
        assert eventloop.uvloop_in_use() == installed  # the dev extra installs it
        assert eventloop.run(loop_module).startswith("uvloop") == installed
    finally:
        eventloop.uvloop_in_use.cache_clear()


def test_head_timeout_bounds_a_request_head_that_never_completes() -> None:
    need_bwrap()
    # Inside: a connection that sends half a head, and what it gets back.
    script = (
        "import os, socket\n"
        "host, port = os.environ['BRIDGEPROTO_URL'].split('/')[2].split(':')\n"
        "sock = socket.create_connection((host, int(port)))\n"
        "sock.sendall(b'GET /rollout/k/json HTTP/1.1\\r\\nHost: x\\r\\n')\n"
        "sock.settimeout(20)\n"  # well past --head-timeout, well short of the default 60 s
        "print(sock.recv(100).split(b'\\r\\n')[0].decode())\n"
    )
    with upstream_in_thread() as upstream:
        result = bridgeproto(
            "run", "--upstream", upstream.url + "/rollout/k", "--sandbox", "bwrap",
            "--head-timeout", "1", "--", "python3", "-c", script,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["HTTP/1.1", "408"]
    assert upstream.requests == []


def test_the_head_timeout_default_is_the_sandbox_sides() -> None:
    from bridgeproto_adapters.sandbox_side import AgentLimits

    shown = bridgeproto("run", "--help").stdout
    assert f"gets 408 (default {AgentLimits().head_timeout:g})" in " ".join(shown.split())


@pytest.mark.parametrize(
    "args",
    [
        ["channel", "--session", "00" * 16, "--wait", "0.1"],
        ["mailbox", "--session", "00" * 16, "--epoch", "1", "--in", "0", "--wait", "0",
         "--max-out", "4096", "--got", "0", "--rewind"],
    ],
)  # fmt: skip
def test_the_commands_the_host_runs_inside_take_every_option_the_host_gives(
    args: list[str],
) -> None:
    # The installed command and the archive's entry take the same options;
    # with no sandbox side for this session, both say so and exit 3.
    result = bridgeproto(*args)
    assert result.returncode == 3, result
    assert "the sandbox side is not running" in result.stderr
