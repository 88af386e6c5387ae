"""``BridgedRuntime``: a verifiers runtime whose programs reach host services,
and whose services the host reaches, over a bridgeproto bridge instead of a
network path.

When started, it starts ``inner`` and opens one bridge into it with no
default upstream (the stream transport where ``inner`` has live processes,
else the mailbox through its ``run`` and ``write``; ``RuntimeSandbox``).
verifiers then asks, synchronously, for the URL a program inside uses to
reach each host service (``host_url``: the interception server's ``/v1``,
its ``/tool`` and ``/state``, tool servers, browser endpoints): each
loopback URL becomes an outward route of its own (``Bridge.add_route``), in
force for the next request, whose allowlist is that URL's path; any other
URL comes back unchanged. ``expose(port)`` is an inward route: a loopback
URL on the host for a server inside. The bridge stops before ``inner``
does.

The runtime says it is local, so verifiers never opens a tunnel for it.
Everything else is ``inner``'s, including its ``config`` (so verifiers'
pairing checks, network policy and timeout caps are those of the real box)
and ``info``.

Nothing of the host enters: verifiers hands the agent its per-rollout secret
itself (on its command line), the agent sends it as its own
``Authorization``, and the bridge carries it through unchanged. The routes
add no header and the runtime no environment variable.

State lives in the instance's ``__dict__``, which verifiers' ``with_env``
views share: a rollout's view uses the bridge its owner opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from ..launch import Bridge, open_bridge
from .contract import ProgramResultLike, RuntimeProcessLike, VerifiersTypes
from .offline import is_loopback
from .sandbox import RuntimeSandbox

LISTEN = ("127.0.0.1", 13131)
# Schemes carried, and the upstream scheme each crosses as (a WebSocket is
# an HTTP/1.1 upgrade: a browser's CDP endpoint, say).
SCHEMES = {"http": "http", "ws": "http"}


class HeldBridge:
    """A bridge kept open by a task of its own, so that it can be opened in
    one call (``start``) and closed in another (``stop``)."""

    def __init__(self) -> None:
        self.bridge: Bridge | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, sandbox: RuntimeSandbox, transport: str) -> Bridge:
        self._task = asyncio.create_task(self._hold(sandbox, transport))
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.bridge is None:  # it failed before it was up: say why
            await self._task
            raise AssertionError("the bridge's task ended without a bridge")
        return self.bridge

    async def _hold(self, sandbox: RuntimeSandbox, transport: str) -> None:
        async with open_bridge(sandbox, None, listen=LISTEN, transport=transport) as bridge:
            self.bridge = bridge
            self._ready.set()
            await self._stop.wait()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


class BridgedRuntimeBase:
    """The logic of ``BridgedRuntime`` (built on verifiers' ``Runtime`` when
    first imported from ``bridgeproto_adapters.verifiers``)."""

    is_local = True  # every host URL is answered through the bridge: no tunnel
    _vf: VerifiersTypes

    if TYPE_CHECKING:
        name: str
        env: dict[str, str]

        def process_env(self, env: dict[str, str]) -> dict[str, str]: ...

    def __init__(self, inner: Any, *, transport: str = "auto", name: str | None = None) -> None:
        """``inner``: any verifiers runtime, not yet started (this one starts
        and stops it). ``transport``: ``auto`` (stream where ``inner`` has
        live processes, else mailbox), ``stream`` or ``mailbox``."""
        if transport not in ("auto", "stream", "mailbox"):
            raise ValueError(f"transport={transport!r}: choose auto, stream or mailbox")
        cast(Any, super()).__init__(name or f"bridged-{inner.name}")
        self.inner = inner
        self.transport = transport
        self.held = HeldBridge()
        self.routes: dict[str, str] = {}  # host URL -> the URL inside, as handed out

    # What verifiers reads of a runtime: the real box's, except is_local.
    @property
    def config(self) -> Any:
        return self.inner.config

    @property
    def info(self) -> Any:
        return self.inner.info

    @property
    def supports_live_processes(self) -> bool:
        return bool(self.inner.supports_live_processes)

    @property
    def bridge(self) -> Bridge:
        if self.held.bridge is None:
            raise self._vf.sandbox_error(f"{self.name}: start() the runtime before using it")
        return self.held.bridge

    async def start(self) -> None:
        await self.inner.start()
        await self.held.open(RuntimeSandbox(self.inner), self.transport)

    def host_url(self, url: str) -> str:
        """The URL inside that reaches host ``url``: a loopback URL through a
        route of its own (its path the route's allowlist), anything else
        unchanged."""
        if not is_loopback(url):
            return url
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise self._vf.sandbox_error(
                f"{self.name}: cannot carry {url}: only http:// and ws:// host services cross"
                " the bridge"
            )
        upstream = urlunsplit((SCHEMES[parts.scheme], parts.netloc, parts.path, "", ""))
        inside = urlsplit(self.bridge.add_route(upstream, allowed_prefixes=[parts.path or "/"]))
        answer = urlunsplit((parts.scheme, inside.netloc, inside.path, parts.query, parts.fragment))
        self.routes[url] = answer
        return answer

    async def expose(self, port: int) -> str:
        """A loopback URL on the host for the server on ``port`` inside."""
        return await self.bridge.expose(port)

    async def prepare_execution(self, routes: list[str] | None) -> None:
        await self.inner.prepare_execution(routes)

    async def prepare_setup(self) -> None:
        await self.inner.prepare_setup()

    async def run(self, argv: list[str], env: dict[str, str]) -> ProgramResultLike:
        return cast(ProgramResultLike, await self.inner.run(argv, self.process_env(env)))

    async def run_program(self, argv: list[str], env: dict[str, str]) -> ProgramResultLike:
        result = await self.inner.run_program(argv, self.process_env(env))
        return cast(ProgramResultLike, result)

    async def open_process(self, argv: list[str], env: dict[str, str]) -> RuntimeProcessLike:
        return cast(RuntimeProcessLike, await self.inner.open_process(argv, self.process_env(env)))

    async def run_background(self, argv: list[str], env: dict[str, str], log: str) -> None:
        await self.inner.run_background(argv, self.process_env(env), log)

    async def _read(self, path: str, max_bytes: int | None = None) -> bytes:
        return cast(bytes, await self.inner._read(path, max_bytes))

    async def write(self, path: str, data: bytes) -> None:
        await self.inner.write(path, data)

    async def teardown(self) -> None:
        """The bridge first (its last calls need ``inner``), then ``inner``."""
        await self.held.close()
        await self.inner.stop()

    def cleanup(self) -> None:
        self.inner.cleanup()
