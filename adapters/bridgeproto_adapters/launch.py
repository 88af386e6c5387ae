"""Start a bridge into a sandbox, and stop it.

``open_bridge`` uploads the sandbox side (once per sandbox), starts it there
as a daemon (in one call; the sandbox's Python is examined only if that
fails, to say why), opens the first channel (with the stream transport, a
process whose stdin and stdout this side holds, and which hands them to the
daemon: started first, it waits for the daemon, so that the two start
together; with the mailbox transport, an epoch of long-polled calls) and
returns only when the handshake is done, which means the daemon's listener
already accepts connections. When a channel breaks, the session opens
another and resumes (``transports``). It yields a ``Bridge`` with the URL
and environment to give commands in the sandbox; it changes nothing of the
caller's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from anyio.lowlevel import RunVar
from exceptiongroup import BaseExceptionGroup

import bridgeproto as bp
from bridgeproto.http import Upstream

from .agents import serve
from .bridge_settings import BridgeKeywords, BridgeSettings
from .errors import BridgeError, BridgeStartError, found_in
from .host_side import HostSide, run_host_side
from .packaging import build_zipapp
from .sandbox_side import SandboxSide
from .sandbox_start import ATTEMPTS, MIN_PYTHON, check_python, start_daemon
from .sandbox_start import reap_daemon as _reap_daemon  # (tests time it here)
from .sandboxes import SandboxClient, SandboxError
from .session import Session
from .settings import AgentLimits, SandboxSettings, http_policy
from .transports import registry
from .transports.registry import MAILBOX_LIMITS
from .transports.transport import ChannelPlace, HostChannels

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "MAILBOX_LIMITS",
    "MIN_PYTHON",
    "PLACEHOLDER_KEY",
    "STARTING_AT_ONCE",
    "Bridge",
    "BridgeSettings",
    "BridgeStartError",
    "check_python",
    "open_bridge",
    "parse_upstream",
    "sandbox_env",
]

PLACEHOLDER_KEY = "bridgeproto-placeholder-key"


@attrs.define
class Bridge:
    """A running bridge: where agents in the sandbox connect, and how to stop it.

    Routes both ways can be added while it runs: ``add_route`` gives code
    inside a URL for another host service, ``expose`` gives the host a URL
    for a server inside.
    """

    url: str  # e.g. http://127.0.0.1:13131/rollout/abc
    env: Mapping[str, str]  # for commands run in the sandbox
    session: Session
    sandbox: SandboxClient
    channels: HostChannels
    _stopped: bool = False
    _host: HostSide | None = None
    _task_group: anyio.abc.TaskGroup | None = None
    _listen: tuple[str, int] = ("127.0.0.1", 13131)
    _listeners: list[anyio.CancelScope] = attrs.field(factory=list)
    exposed: dict[int, str] = attrs.field(factory=dict)  # port inside -> URL on the host

    def add_route(
        self,
        upstream_url: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        allowed_prefixes: Sequence[str] | None = None,
    ) -> str:
        """Make a host service reachable from inside; returns the URL inside.

        ``headers`` are added on the host side to each request on the route
        (its credentials; they never enter the sandbox); the allowlist
        defaults to the URL's path. Synchronous, and in force for the very
        next request: the URL carries the route's number (``/_routes/N/``),
        which the host side looks up as each request arrives. The same URL
        and headers asked for again give the same route.
        """
        if self._host is None or self._stopped:
            raise BridgeError("add_route on a bridge that is not running")
        try:
            host, port, path = parse_upstream(upstream_url)
            bp.RequestHead(1, b"GET", b"/", headers)  # the headers' names and values, checked
        except (BridgeError, bp.LocalProtocolError) as exc:
            raise BridgeError(f"add_route({upstream_url!r}): {exc}") from None
        policy = http_policy(self.session.conn.config, allowed_prefixes or [path or "/"])
        route = self._host.add_route(Upstream(host, port, policy, tuple(headers)))
        return f"http://{self._listen[0]}:{self._listen[1]}/_routes/{route}{path}"

    async def expose(self, port: int, host_port: int = 0) -> str:
        """Make the server on loopback ``port`` inside the sandbox reachable
        from the host; returns its URL on the host (``http://127.0.0.1:P``).

        The host listener binds 127.0.0.1 only, on ``host_port`` (0: a free
        one). Requests to it cross the bridge as exchanges on an inward
        route declared for ``port``; the sandbox side forwards them to
        127.0.0.1:``port`` inside and to nothing else. Exposing a port again
        returns the URL it already has.
        """
        if self._task_group is None or self._stopped:
            raise BridgeError("expose on a bridge that is not running")
        if not 0 < port < 65536 or not 0 <= host_port < 65536:
            raise BridgeError(
                f"expose({port}, {host_port}): ports are 1-65535 (host_port 0 picks a free one)"
            )
        known = self.exposed.get(port)
        if known is not None and host_port in (0, int(known.rsplit(":", 1)[1])):
            return known
        conn = self.session.conn
        route = next(
            (r for r, p in conn.routes.items() if p == port), max(conn.routes, default=0) + 1
        )
        try:  # (a declared route is never withdrawn: harmless if listening fails below)
            conn.declare_route(route, port)
        except bp.LocalProtocolError as exc:
            raise BridgeError(f"expose({port}): the bridge is down ({exc})") from None
        self.session.core_changed()
        try:
            listener = await anyio.create_tcp_listener(
                local_host="127.0.0.1", local_port=host_port, reuse_port=False
            )
        except OSError as exc:
            raise BridgeError(
                f"cannot listen on 127.0.0.1:{host_port} for port {port} inside:"
                f" {exc.strerror or exc}; choose another host port, or 0 for a free one"
            ) from None
        side = SandboxSide(self.session, http_policy(conn.config), route=route)
        scope = await self._task_group.start(_serve, listener, side)
        self._listeners.append(scope)
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        url = self.exposed[port] = f"http://127.0.0.1:{bound}"
        return url

    async def stop(self, grace: float | None = None) -> None:
        """Shut the bridge down within a bounded time; safe to call again.

        Goaway and drain (at most the grace period), then the channel process
        is stopped and the daemon is given a few seconds to answer its agents
        and exit before it is killed (at once after the session failed: the
        daemon cannot have heard the goaway; if the control plane cannot reach it
        for that, a ``RuntimeWarning`` says so: the daemon ends by itself with
        its session). Each step is idempotent, so a stop interrupted by an
        error can be retried and finishes the job.
        """
        if self._stopped:
            return
        grace = self.session.conn.config.shutdown_grace if grace is None else grace
        with anyio.CancelScope(shield=True):
            if not self.session.finished.is_set():
                with anyio.move_on_after(grace + 2):
                    await self.session.close(grace=grace)
            for scope in self._listeners:  # drained: the host listeners go
                scope.cancel()
            await self.session.wait_final_flush()  # the sandbox side's last acknowledgement
            await self.channels.aclose()
            # A failed session cannot tell the daemon to finish: no waiting for it.
            patience = 50 if self.session.failure is None else 0
            try:
                await _reap_daemon(self.sandbox, self.session.conn.session_id, patience)
            except SandboxError as exc:
                # The reap only hastens the daemon's end: it exits by itself
                # once its session is over (at once after a clean close, at
                # the peer timeout otherwise). A stop is not failed for it.
                warnings.warn(
                    f"bridgeproto: the sandbox side could not be reaped ({exc}); it exits by"
                    " itself when its session ends",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self._stopped = True


async def _serve(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
    side: SandboxSide,
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a host listener for an inward route until the bridge stops."""
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        async with listener:
            await serve(listener, side.handle_agent)


class _StartFailed(Exception):
    """What ``start_daemon`` raised (its cause), marked to leave the task group as raised."""


def _bridge_failure(exc: BaseException) -> BaseException | None:
    """The bridge error or timeout in ``exc`` (a start that fails is one
    ``BridgeStartError``, never nested groups)."""
    return found_in(exc, (BridgeError, TimeoutError))


# Bridges that start at once in one event loop; the others queue. Starts are
# CPU-bound on the sandbox's side (a Python start each) and a start that
# takes longer than the handshake timeout fails: 256 started together on two
# cores took over 30 s each and many failed; in turns they all start.
STARTING_AT_ONCE = 16
_STARTING: RunVar[anyio.CapacityLimiter] = RunVar("bridgeproto_starting")


def _start_limiter() -> anyio.CapacityLimiter:
    try:
        return _STARTING.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(STARTING_AT_ONCE)
        _STARTING.set(limiter)
        return limiter


def sandbox_env(url: str) -> dict[str, str]:
    """What commands in the sandbox get: URLs and placeholder keys, never a secret."""
    return {
        "BRIDGEPROTO_URL": url,
        "OPENAI_BASE_URL": f"{url}/v1",
        "ANTHROPIC_BASE_URL": url,
        "OPENAI_API_KEY": PLACEHOLDER_KEY,
        "ANTHROPIC_API_KEY": PLACEHOLDER_KEY,
    }


def parse_upstream(url: str) -> tuple[str, int, str]:
    """Host, port and path of an ``http://`` upstream URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BridgeStartError(
            f"the upstream {url!r} is not an http:// URL; give e.g."
            " http://127.0.0.1:8000/rollout/abc (TLS upstreams are not supported)"
        )
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


@asynccontextmanager
async def open_bridge(
    sandbox: SandboxClient,
    upstream_url: str | None,
    settings: BridgeSettings | None = None,
    **keywords: Unpack[BridgeKeywords],
) -> AsyncIterator[Bridge]:
    """Run a bridge into ``sandbox`` forwarding to ``upstream_url``.

    ``settings`` (``BridgeSettings``) holds every option below; keywords of
    the same names change its fields (``open_bridge(sandbox, url,
    transport="mailbox")``).

    With ``upstream_url`` None the bridge has no default upstream: only the
    routes added with ``Bridge.add_route`` (and ``Bridge.expose``) carry.

    ``headers`` are added on the host side to every forwarded request (the
    upstream's credentials); they never enter the sandbox. The path allowlist
    defaults to the upstream URL's path. ``env`` is the environment the
    sandbox side runs with (its PATH decides which ``python`` is found).
    ``limits`` bounds what agents may cost the sandbox side; ``resume_timeout``
    how long a broken channel may take to come back; ``on_channel`` hears of
    every channel that breaks or comes up. ``transport`` names a transport of
    the registry (``transports.registry``): ``stream`` (a live process per
    channel), ``mailbox`` (calls only; ``mailbox`` tunes them), one
    registered there, or ``auto``: stream where the sandbox has live
    processes, mailbox otherwise; or it is the ``Transport`` itself.
    Without a ``config``, the bridge uses the transport's limits (a mailbox
    bridge: ``MAILBOX_LIMITS``, windows of 16 MiB per exchange and 32 MiB
    per session).
    """
    try:
        settings = attrs.evolve(settings or BridgeSettings(), **keywords)
        chosen = registry.choose(
            settings.transport, live_processes=getattr(sandbox, "live_processes", True)
        )
    except (TypeError, ValueError, BridgeError) as exc:
        raise BridgeStartError(f"open_bridge: {exc}") from None
    listen, config, python, env = settings.listen, settings.config, settings.python, settings.env
    if settings.mailbox is not None and chosen.name == registry.MAILBOX.name:
        chosen = chosen.with_options(settings.mailbox)
    host, port, path = parse_upstream(upstream_url) if upstream_url else ("", 0, "")
    if config is None:
        config = bp.Config(limits=chosen.limits)
    policy = http_policy(config, settings.allowed_prefixes or [path or "/"])
    upstream = Upstream(host, port, policy, tuple(settings.headers)) if upstream_url else None
    host_side = HostSide(upstream, settings.options)
    archive = build_zipapp(extra=chosen.modules())
    remote = f"/tmp/{archive.name}"
    session_id = os.urandom(bp.SESSION_ID_BYTES)
    limits = settings.limits or AgentLimits()
    for_sandbox = SandboxSettings(
        config, policy, limits, listen, settings.resume_timeout, chosen.sandbox_settings()
    )
    arguments = [
        "sandbox-side", "--daemon", "--session", session_id.hex(),
        "--settings", for_sandbox.to_json(),
    ]  # fmt: skip
    # (The first channel may wait for the daemon as long as its start may take.)
    place = ChannelPlace(
        sandbox, session_id, python, remote, env, ATTEMPTS * config.handshake_timeout
    )
    channels = chosen.host_channels(place)
    url = f"http://{listen[0]}:{listen[1]}{path}"
    bridge: Bridge | None = None
    starting = _start_limiter()
    await starting.acquire()
    held = True
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(channels.run)  # before the daemon: a first channel may start early
            try:
                await start_daemon(
                    sandbox, archive, python, remote, arguments, env, config.handshake_timeout
                )
            except Exception as exc:
                raise _StartFailed() from exc
            session = await tg.start(
                functools.partial(
                    run_host_side, channels, session_id, host_side, config=config,
                    options=settings.options, tracer=settings.tracer,
                    resume_timeout=settings.resume_timeout, on_channel=settings.on_channel,
                )
            )  # fmt: skip
            starting.release()  # started: the next may
            held = False
            agent_env = sandbox_env(url) if upstream_url else {"BRIDGEPROTO_URL": url}
            bridge = Bridge(
                url,
                agent_env,
                session,
                sandbox,
                channels,
                host=host_side,
                task_group=tg,
                listen=listen,
            )
            try:
                yield bridge
            finally:
                await bridge.stop()
    except BaseExceptionGroup as group:  # the task group's; start_daemon's pass as raised
        failed = found_in(group, _StartFailed)
        if failed is not None and failed.__cause__ is not None:
            raise failed.__cause__ from None
        cause = _bridge_failure(group) if bridge is None else None
        if cause is None:
            raise
        if isinstance(cause, BridgeStartError):
            raise cause from None
        said = str(cause) or type(cause).__name__
        raise BridgeStartError(f"the sandbox side did not answer ({said})") from None
    finally:
        if held:
            starting.release()
        if bridge is None:  # it never started: leave nothing behind
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                # (A cleanup that fails too must not hide why the start failed.)
                await channels.aclose()
                await _reap_daemon(sandbox, session_id, patience=0)  # it has no agents
