"""A whole bridge in a test: a real upstream, the host side, the sandbox side
listening on a real loopback port, and a transport between the two sides:
an in-memory pair, in-memory channels that can be cut or damaged and
replaced, two pipes (each side reading and writing descriptors), a real
subprocess's stdin and stdout, or the mailbox transport
(every call a real process in a real offline sandbox, talking to the
sandbox side's private socket)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import attrs

import bridgeproto as bp
import bridgeproto.http as bp_http
from bridgeproto_adapters.host_side import HostOptions, run_host_side
from bridgeproto_adapters.sandbox_calls import channel_dir, mailbox_socket
from bridgeproto_adapters.sandbox_side import AgentLimits, run_sandbox_side
from bridgeproto_adapters.sandboxes import BwrapSandbox, SandboxClient
from bridgeproto_adapters.sandboxes.offline import SANDBOX_UID
from bridgeproto_adapters.session import Session
from bridgeproto_adapters.settings import SandboxSettings
from bridgeproto_adapters.streams import FdStream, memory_stream_pair, process_stream
from bridgeproto_adapters.transports import (
    Acceptor,
    Channels,
    MemoryConnector,
    Wrap,
    memory_channels,
)
from bridgeproto_adapters.transports.mailbox import MailboxChannels, MailboxOptions, call_command
from bridgeproto_adapters.transports.mailbox_epoch import spool_dir
from bridgeproto_adapters.transports.mailbox_sandbox import serve_mailbox
from sandbox_kinds import need_bwrap
from upstream import Upstream, running_upstream


@attrs.define
class Bridge:
    url: str  # where agents connect, inside the sandbox
    upstream: Upstream
    session: Session  # the host side's session
    process: anyio.abc.Process | None = None
    connector: MemoryConnector | None = None  # with transport="channels"
    mailbox: MailboxChannels | None = None  # with transport="mailbox"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def bridge(
    *,
    transport: str = "memory",
    policy: bp_http.HttpPolicy | None = None,
    sandbox_config: bp.Config | None = None,
    host_config: bp.Config | None = None,
    options: HostOptions | None = None,
    added_headers: tuple[tuple[bytes, bytes], ...] = (),
    upstream_port: int | None = None,
    limits: AgentLimits | None = None,
    wrap: Wrap | None = None,
    resume_timeout: float = 30.0,
    mailbox: MailboxOptions | None = None,
    calls_through: SandboxClient | None = None,
) -> AsyncIterator[Bridge]:
    """``upstream_port`` sends the host side somewhere other than the test upstream."""
    async with running_upstream() as upstream:
        session_id = os.urandom(bp.SESSION_ID_BYTES)
        port = upstream_port or upstream.port
        target = bp_http.Upstream("127.0.0.1", port, policy or bp_http.HttpPolicy(), added_headers)
        settings = SandboxSettings(
            config=sandbox_config or bp.Config(),
            policy=policy or bp_http.HttpPolicy(),
            limits=limits or AgentLimits(),
            listen=("127.0.0.1", 0),
            resume_timeout=resume_timeout,
        )
        async with anyio.create_task_group() as tg:
            process = connector = mailbox_channels = owned_sandbox = None
            host_channels: Channels | anyio.abc.ByteStream
            if transport == "mailbox":
                acceptor = Acceptor()
                directory = channel_dir(session_id)
                os.mkdir(directory, 0o700)
                await tg.start(serve_mailbox, acceptor, session_id)
                if calls_through is None:
                    # Every call runs in a real offline sandbox that sees only
                    # this directory of the host's, as the daemon's own would.
                    need_bwrap()
                    if os.geteuid() == 0:  # the calls run as the sandbox's user
                        for path in (directory, mailbox_socket(session_id), spool_dir(session_id)):
                            os.chown(path, SANDBOX_UID, SANDBOX_UID)
                    calls_through = owned_sandbox = await BwrapSandbox.create(rw=[directory])
                host, port = await tg.start(
                    functools.partial(run_sandbox_side, acceptor, session_id, settings)
                )
                host_channels = mailbox_channels = MailboxChannels(
                    calls_through, call_command("python3"), session_id, options=mailbox
                )
                await tg.start(mailbox_channels.run)
            elif transport == "pipes":  # two pipes, each side's end a descriptor of its own
                to_sandbox, to_host = os.pipe(), os.pipe()
                sandbox_stream = FdStream(to_sandbox[0], to_host[1], owned=True)
                host_channels = FdStream(to_host[0], to_sandbox[1], owned=True)
                host, port = await tg.start(
                    functools.partial(run_sandbox_side, sandbox_stream, session_id, settings)
                )
            elif transport in ("memory", "channels"):
                sandbox_channels: Channels | anyio.abc.ByteStream
                if transport == "memory":
                    sandbox_channels, host_channels = memory_stream_pair()
                else:
                    connector, sandbox_channels = memory_channels(wrap)
                    host_channels = connector
                host, port = await tg.start(
                    functools.partial(run_sandbox_side, sandbox_channels, session_id, settings)
                )
            else:
                port = free_port()
                settings = attrs.evolve(settings, listen=("127.0.0.1", port))
                command = [
                    sys.executable, "-m", "bridgeproto_adapters", "sandbox-side",
                    "--session", session_id.hex(), "--settings", settings.to_json(),
                ]  # fmt: skip
                process = await anyio.open_process(command, stderr=None)
                host_channels = process_stream(process)
                host = "127.0.0.1"
            session = await tg.start(
                functools.partial(
                    run_host_side,
                    host_channels,
                    session_id,
                    target,
                    config=host_config,
                    options=options,
                    resume_timeout=resume_timeout,
                )
            )
            yield Bridge(
                f"http://{host}:{port}", upstream, session, process, connector, mailbox_channels
            )
            with anyio.fail_after(15):
                await session.close()
                if process is not None:
                    await process.wait()
                    await process.aclose()
            if mailbox_channels is not None:
                await mailbox_channels.aclose()
                tg.cancel_scope.cancel()  # the sandbox side's call listener
                shutil.rmtree(channel_dir(session_id), ignore_errors=True)
            if owned_sandbox is not None:
                await owned_sandbox.aclose()
