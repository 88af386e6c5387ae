"""A provider of one's own, as docs/adapters.md walks an author through it:
the page's 41-line live client, entering a real bubblewrap sandbox by its
``nsenter`` prefix, passes the conformance suite, and, made a provider with
one module and one registry line, carries a bridge through ``open_bridge``
and through ``bridgeproto run``."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from bridgeproto_adapters import providers
from bridgeproto_adapters.conformance import check_sandbox_client
from bridgeproto_adapters.launch import open_bridge
from bridgeproto_adapters.sandboxes import BwrapSandbox, stop_process
from sandbox_kinds import need_bwrap
from upstream import running_upstream, upstream_in_thread

ROOT = pathlib.Path(__file__).parents[2]
SECTION = "## A sandbox provider of your own"
# What an author writes besides the page's client: how to make one (here,
# over a bubblewrap sandbox of its own) and the one line that registers it.
PROVIDER = """
from bridgeproto_adapters.providers import Provider, register
from bridgeproto_adapters.sandboxes import BwrapSandbox, HarnessSandbox, SimulatedProvider
from bridgeproto_adapters.sandboxes.base import SANDBOX_PATH


class OwnedExecSandbox(ExecSandbox):
    def __init__(self, box: BwrapSandbox) -> None:
        # (env -i: the host's environment stays on the host, as docker exec's does)
        super().__init__(["env", "-i", f"PATH={SANDBOX_PATH}", *box.wrap([], None)])
        self.box = box

    async def aclose(self) -> None:
        await self.box.aclose()


async def create(*, ro, rw):
    return OwnedExecSandbox(await BwrapSandbox.create(ro=ro, rw=rw))


register(Provider("exec-bwrap", create, "offline"))


# And one with no live process at all: a harness client's calls (the mailbox).
class OwnedHarness(HarnessSandbox):
    def __init__(self, box: BwrapSandbox) -> None:
        super().__init__(SimulatedProvider(box), "sim")
        self.box = box

    async def aclose(self) -> None:
        await self.box.aclose()


async def create_harness(*, ro, rw):
    return OwnedHarness(await BwrapSandbox.create(ro=ro, rw=rw))


register(Provider("harness-bwrap", create_harness, "offline"))
"""


def the_client_in_the_docs() -> str:
    text = (ROOT / "docs" / "adapters.md").read_text()
    return text.split(SECTION, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def provider_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The provider as a module of its own in ``tmp_path``; its directory."""
    (tmp_path / "exec_provider.py").write_text(the_client_in_the_docs() + PROVIDER)
    monkeypatch.setattr(providers, "PROVIDERS", dict(providers.PROVIDERS))  # this test's only
    monkeypatch.syspath_prepend(str(tmp_path))
    yield str(tmp_path)
    sys.modules.pop("exec_provider", None)


def test_the_live_client_in_the_docs_fits_in_41_lines() -> None:
    lines = [line for line in the_client_in_the_docs().splitlines() if line.strip()]
    assert len(lines) <= 41, f"the example client has {len(lines)} lines"
    assert "class ExecProcess" in the_client_in_the_docs()  # a LiveProcess of its own


def test_the_live_client_in_the_docs_lets_go_of_its_pipes_once_stopped() -> None:
    """A child the process leaves behind still holds its stdout: stopping it
    must close our end anyway, not leave it to be closed when the pipe ends
    (by then the harness's loop may be gone)."""
    namespace: dict[str, Any] = {}
    exec(compile(the_client_in_the_docs(), "docs/adapters.md", "exec"), namespace)

    def descriptors() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    async def stop_one_whose_child_lingers() -> set[str]:
        before = descriptors()
        process = await anyio.open_process(["sh", "-c", "sleep 5 & exec sleep 30"], stderr=None)
        live = namespace["ExecProcess"](process)
        while not await _has_a_child(process.pid):
            await anyio.sleep(0.01)
        assert await stop_process(live) == -signal.SIGKILL
        return descriptors() - before

    assert anyio.run(stop_one_whose_child_lingers) == set()


async def _has_a_child(pid: int) -> bool:
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    return children.exists() and bool(children.read_text().split())


@pytest.mark.anyio
async def test_the_live_client_in_the_docs_passes_the_conformance_suite() -> None:
    need_bwrap()
    namespace: dict[str, Any] = {}
    exec(compile(the_client_in_the_docs(), "docs/adapters.md", "exec"), namespace)
    box = await BwrapSandbox.create()
    try:
        await check_sandbox_client(namespace["ExecSandbox"](box.wrap([], None)))
    finally:
        await box.aclose()


@pytest.mark.anyio
async def test_a_new_provider_carries_a_bridge_through_open_bridge(provider_module: str) -> None:
    need_bwrap()
    assert "exec-bwrap" not in providers.names()
    importlib.import_module("exec_provider")
    assert "exec-bwrap" in providers.names()
    agent = (
        "import os, urllib.request as u;"
        " print(u.urlopen(os.environ['BRIDGEPROTO_URL'] + '/json').read().decode())"
    )
    sandbox, note = await providers.open_sandbox("exec-bwrap")
    try:
        assert (
            type(sandbox).__name__ == "OwnedExecSandbox" and note == "sandbox: exec-bwrap (offline)"
        )
        async with running_upstream() as upstream, open_bridge(sandbox, upstream.url) as bridge:
            assert type(bridge.channels).__name__ == "ProcessChannels"  # live: the stream transport
            result = await sandbox.run(["python3", "-c", agent], env=bridge.env, timeout=60)
            assert result.exit_code == 0, result.stderr
            async with httpx.AsyncClient() as client:  # the same answer, asked directly
                direct = (await client.get(f"{upstream.url}/json")).json()
            assert json.loads(result.stdout) == direct
            assert bridge.session.stats.exchanges == 1
    finally:
        await sandbox.aclose()


@pytest.mark.parametrize("name", ["exec-bwrap", "harness-bwrap"])
def test_a_new_provider_carries_a_bridge_through_bridgeproto_run(
    provider_module: str, name: str
) -> None:
    """Live processes (the stream transport) or none (the mailbox): either way
    the command runs through the provider's own client, and its status and
    output come back."""
    need_bwrap()
    script = (
        "import json, os, urllib.request\n"
        "seen = json.load(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/echo'))\n"
        "print([v for n, v in seen['headers'] if n == 'authorization'])\n"
        "print('in', os.getcwd())\n"
        "raise SystemExit(7)\n"
    )
    launcher = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); import exec_provider;"
        " from bridgeproto_adapters.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    with upstream_in_thread() as upstream:
        result = subprocess.run(
            [
                sys.executable, "-c", launcher, provider_module, "run", "--sandbox", name, "-v",
                "--upstream", upstream.url, "--header", "Authorization: Bearer hush",
                "--", "python3", "-c", script,
            ],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
    assert result.returncode == 7, result.stderr
    assert result.stdout.splitlines() == ["['Bearer hush']", f"in {ROOT}"]
    assert f"bridgeproto: sandbox: {name} (offline)" in result.stderr
    assert "bridgeproto: 1 exchange," in result.stderr


def test_an_unknown_provider_is_refused_naming_the_choices() -> None:
    with pytest.raises(providers.SandboxChoiceError, match="choose auto, bwrap, unshare, local"):
        providers.provider("nowhere")
    with pytest.raises(ValueError, match="not 'auto'"):
        providers.register(providers.Provider("auto", providers.PROVIDERS["bwrap"].create, "x"))


def test_open_bridge_takes_one_settings_record_and_its_fields_as_keywords() -> None:
    """``open_bridge``'s keywords are ``BridgeSettings``' fields, neither more
    nor less, so the calls written with keywords keep working."""
    import typing

    import attrs

    from bridgeproto_adapters.bridge_settings import BridgeKeywords, BridgeSettings

    fields = {field.name: field.type for field in attrs.fields(BridgeSettings)}
    keywords = typing.get_type_hints(BridgeKeywords)
    assert set(keywords) == set(fields)
    hints = typing.get_type_hints(BridgeSettings)
    assert all(keywords[name] == hints[name] for name in fields), (keywords, hints)


@pytest.mark.anyio
async def test_open_bridge_refuses_a_bad_option_naming_it() -> None:
    from bridgeproto_adapters.bridge_settings import BridgeSettings
    from bridgeproto_adapters.launch import BridgeStartError

    nowhere: Any = object()  # (never reached: the options are checked first)
    with pytest.raises(BridgeStartError, match="unknown transport 'pigeon'; use stream, mailbox"):
        async with open_bridge(nowhere, None, transport="pigeon"):  # type: ignore[typeddict-item]
            pass
    with pytest.raises(BridgeStartError, match="unexpected keyword argument 'listen_on'"):
        async with open_bridge(nowhere, None, BridgeSettings(), listen_on=("h", 1)):  # type: ignore[call-arg]
            pass
    with pytest.raises(BridgeStartError, match=r"listen is \(host, port\)"):
        async with open_bridge(nowhere, None, listen="127.0.0.1:1"):  # type: ignore[typeddict-item]
            pass
