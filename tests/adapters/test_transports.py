"""Transports as objects chosen once: the registry, ``check_channels`` on
both built-in transports, and a new transport (docs/adapters.md's TCP one,
as written there) added with one registry line and run through
``open_bridge`` and through ``bridgeproto run``."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import aclosing
from types import ModuleType

import anyio.abc
import pytest

import bridgeproto as bp
from bridge import free_port
from bridgeproto.wire import FrameType, encode_frame, frame_types
from bridgeproto_adapters.conformance import check_channels
from bridgeproto_adapters.errors import BridgeError
from bridgeproto_adapters.sandboxes import LocalSandbox
from bridgeproto_adapters.transports import NoChannel, registry
from bridgeproto_adapters.transports.mailbox_epoch import _urgent
from bridgeproto_adapters.transports.transport import Transport
from sandbox_kinds import make_sandbox
from upstream import upstream_in_thread

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "adapters.md"


def docs_tcp_module() -> str:
    """The TCP transport's module, as docs/adapters.md shows it."""
    example = DOCS.read_text().split("A complete transport of your own", 1)[1]
    return example.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def tcp_transport(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """docs/adapters.md's module saved as ``tcp_transport.py`` and its one
    registry line run; the registry is as it was afterwards."""
    (tmp_path / "tcp_transport.py").write_text(docs_tcp_module())
    monkeypatch.syspath_prepend(str(tmp_path))
    import tcp_transport

    registered = dict(registry._TRANSPORTS)
    registry.register(tcp_transport.TCP)  # the one line
    try:
        yield tcp_transport
    finally:
        registry._TRANSPORTS.clear()
        registry._TRANSPORTS.update(registered)
        sys.modules.pop("tcp_transport", None)


def test_the_registry_chooses_by_name_and_auto_by_live_processes() -> None:
    assert registry.choose("auto", live_processes=True) is registry.STREAM
    assert registry.choose("auto", live_processes=False) is registry.MAILBOX
    assert registry.choose("mailbox", live_processes=True) is registry.MAILBOX
    with pytest.raises(BridgeError, match=r"unknown transport 'tcp'; use stream, mailbox or auto"):
        registry.choose("tcp", live_processes=True)


def test_a_transport_names_its_ends_as_module_and_attribute() -> None:
    with pytest.raises(ValueError, match=r"host_end 'no_colon' is not 'module:attribute'"):
        Transport("x", "no_colon", "m:serve")


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["stream", "mailbox"])
async def test_check_channels_holds_both_built_in_transports(transport: str) -> None:
    async with make_sandbox("bwrap") as sandbox:
        await check_channels(sandbox, transport)


@pytest.mark.anyio
async def test_the_docs_tcp_transport_is_one_module_and_one_line_through_open_bridge(
    tcp_transport: ModuleType,
) -> None:
    """Through ``open_bridge`` by its name, with every check of a transport.
    (TCP from the host needs a sandbox that shares its loopback: the local one.)"""
    async with aclosing(LocalSandbox()) as sandbox:
        await check_channels(sandbox, "tcp", listen=("127.0.0.1", free_port()))


@pytest.mark.anyio
async def test_check_channels_fails_a_transport_that_never_says_the_sandbox_side_is_gone(
    tcp_transport: ModuleType,
) -> None:
    """The docs' TCP transport without its final word: trying until the
    resume deadline is a failure of the check, which says so."""

    class Hopeful(tcp_transport.TcpHostEnd):  # type: ignore[name-defined]
        async def next_channel(self) -> anyio.abc.ByteStream:
            try:
                return await super().next_channel()  # type: ignore[no-any-return]
            except NoChannel as exc:
                raise OSError(str(exc)) from None  # never final: the session tries again

    tcp_transport.Hopeful = Hopeful
    hopeful = Transport("hopeful", "tcp_transport:Hopeful", "tcp_transport:serve_tcp",
                        options=tcp_transport.TcpOptions())  # fmt: skip
    with pytest.raises(AssertionError, match=r"never said so \(NoChannel\(final=True\)\)"):
        async with aclosing(LocalSandbox()) as sandbox:
            await check_channels(
                sandbox, hopeful, listen=("127.0.0.1", free_port()), resume_timeout=1.0
            )


def test_the_docs_tcp_transport_through_bridgeproto_run(tmp_path: pathlib.Path) -> None:
    """A real ``bridgeproto run`` process, whose one registry line is run first."""
    (tmp_path / "tcp_transport.py").write_text(docs_tcp_module())
    starter = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); import tcp_transport\n"
        "from bridgeproto_adapters.transports import registry\n"
        "registry.register(tcp_transport.TCP)\n"
        "from bridgeproto_adapters.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    script = (
        "import json, os, urllib.request\n"
        "seen = json.load(urllib.request.urlopen(os.environ['BRIDGEPROTO_URL'] + '/echo'))\n"
        "print(json.dumps(seen['target']))\n"
    )
    with upstream_in_thread() as upstream:
        result = subprocess.run(
            [sys.executable, "-c", starter, str(tmp_path), "run", "--upstream",
             upstream.url + "/rollout/k", "--sandbox", "local", "--transport", "tcp",
             "--listen", f"127.0.0.1:{free_port()}", "-v", "--", sys.executable, "-c", script],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        requests = upstream.requests
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == "/rollout/k/echo"
    assert [r["target"] for r in requests] == ["/rollout/k/echo"]


def test_frame_types_reads_whole_frames_from_their_headers() -> None:
    frames = [
        encode_frame(bp.Ack(7)),
        encode_frame(bp.Data(1, b"x" * 300), seq=3),
        encode_frame(bp.Ping(b"12345678")),
    ]
    data = b"".join(frames)
    assert frame_types(data) == [FrameType.ACK, FrameType.DATA, FrameType.PING]
    assert frame_types(b"") == []
    assert frame_types(data[:-1]) is None  # the last frame cut short
    assert frame_types(data + data[:10]) is None  # a header cut short
    assert frame_types(b"XX" + data[2:]) is None  # not a frame


def test_the_mailbox_lets_only_acks_pings_and_pongs_wait() -> None:
    quiet = encode_frame(bp.Ack(7)) + encode_frame(bp.Ping(b"12345678"))
    quiet += encode_frame(bp.Pong(b"12345678"))
    assert not _urgent(quiet)
    assert _urgent(quiet + encode_frame(bp.Data(1, b"x"), seq=4))
    assert _urgent(quiet[:-1])  # bytes that do not parse go at once, to be safe


@pytest.mark.parametrize(
    ("transport", "end"), [("stream", "live_sandbox"), ("mailbox", "mailbox_sandbox")]
)
def test_the_daemon_imports_its_transports_sandbox_end_and_no_other(
    transport: str, end: str
) -> None:
    """What a daemon serving ``transport`` holds of the transports: its own
    sandbox end (with what it shares), the registry's light records, and no
    host end, no other transport's end, no sandbox backend."""
    listing = (
        "import sys, bridgeproto_adapters.daemon as d\n"
        "from bridgeproto_adapters.transports import registry, transport\n"
        f"transport.load(registry.{transport.upper()}.sandbox_end)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bridgeproto_adapters.'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", listing], capture_output=True, text=True, check=True
    ).stdout.split()
    ours = {m.rsplit(".", 1)[1] for m in found if m.startswith("bridgeproto_adapters.transports.")}
    shared = {"registry", "transport", "mailbox_options"}  # the records settings carry
    assert ours == shared | {end} | ({"mailbox_epoch"} if transport == "mailbox" else set())
    assert not [m for m in found if m.startswith("bridgeproto_adapters.sandboxes")], found


def test_the_daemon_leaves_what_only_its_end_needs_unimported() -> None:
    """A bridge's start waits for the daemon's imports: shutil (and the
    fnmatch and compression modules it pulls in) only serves the cleanup."""
    listing = "import sys, bridgeproto_adapters.daemon\nprint(' '.join(sorted(sys.modules)))"
    found = subprocess.run(
        [sys.executable, "-I", "-c", listing], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "shutil" not in found
