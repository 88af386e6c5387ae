"""``BridgedRuntime``: a verifiers runtime whose programs reach host services
over a bridgeproto bridge instead of a network path.

verifiers asks a runtime, synchronously, for the URL a program inside uses to
reach each host service (``host_url``: the interception server's ``/v1``, its
``/tool`` and ``/state``, tool servers, browser endpoints), then awaits
``prepare_execution`` before the harness starts. So ``host_url`` only
decides: each loopback origin on the host gets a listen address inside
(``127.0.0.1:13131``, then ``:13132``, ...) and the URL returned keeps the
path; the bridges are opened, one per origin, by ``prepare_execution`` (or by
the next command, whichever comes first). A URL that is not loopback comes
back unchanged.

The runtime says it is local, so verifiers never opens a tunnel for it. The
bridges run into ``inner`` through its own contract (``RuntimeSandbox``):
the stream transport where it has live processes, else the mailbox. They
stop before ``inner`` does. Everything else is ``inner``'s, including its
``config`` (so verifiers' pairing checks, network policy and timeout caps
are those of the real box) and ``info``.

Nothing of the host enters: verifiers hands the agent its per-rollout secret
itself (on its command line), the agent sends it as its own
``Authorization``, and the bridge carries it through unchanged. The bridges
add no header and no environment variable.

State lives in the instance's ``__dict__``, which verifiers' ``with_env``
views share, so a rollout's view sees the bridges its owner opened.
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

FIRST_LISTEN_PORT = 13131


class HeldBridge:
    """A bridge kept open by a task of its own, so that it can be opened in
    one call (``prepare_execution``) and closed in another (``stop``)."""

    def __init__(self, origin: str, listen_port: int) -> None:
        self.origin = origin  # http://127.0.0.1:PORT on the host
        self.listen_port = listen_port  # 127.0.0.1:PORT inside
        self.bridge: Bridge | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, sandbox: RuntimeSandbox, transport: str) -> None:
        if self._ready.is_set():
            return
        if self._task is None or self._task.done():  # never opened, or failed: (re)open
            self._task = asyncio.create_task(self._hold(sandbox, transport))
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not self._ready.is_set():  # it failed before it was up: say why
            await self._task

    async def _hold(self, sandbox: RuntimeSandbox, transport: str) -> None:
        async with open_bridge(
            sandbox,
            self.origin,
            listen=("127.0.0.1", self.listen_port),
            allowed_prefixes=["/"],  # the service's own credentials guard its paths
            transport=transport,
        ) as bridge:
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
        stopped: bool

        def process_env(self, env: dict[str, str]) -> dict[str, str]: ...

    def __init__(
        self,
        inner: Any,
        *,
        transport: str = "auto",
        first_port: int = FIRST_LISTEN_PORT,
        name: str | None = None,
    ) -> None:
        """``inner``: any verifiers runtime, not yet started (this one starts
        and stops it). ``transport``: ``auto`` (stream where ``inner`` has
        live processes, else mailbox), ``stream`` or ``mailbox``."""
        if transport not in ("auto", "stream", "mailbox"):
            raise ValueError(f"transport={transport!r}: choose auto, stream or mailbox")
        cast(Any, super()).__init__(name or f"bridged-{inner.name}")
        self.inner = inner
        self.transport = transport
        self.first_port = first_port
        self.bridges: dict[str, HeldBridge] = {}
        self._opening = asyncio.Lock()

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
    def supports_user(self) -> bool:
        return False

    async def start(self) -> None:
        await self.inner.start()

    def host_url(self, url: str) -> str:
        """The URL inside that reaches host ``url``: loopback URLs through a
        bridge (opened before the next command), anything else unchanged."""
        if not is_loopback(url):
            return url
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise self._vf.sandbox_error(
                f"{self.name}: cannot bridge {url}: only http:// host services are carried"
            )
        origin = f"http://{parts.hostname}:{parts.port or 80}"
        held = self.bridges.get(origin)
        if held is None:
            held = HeldBridge(origin, self.first_port + len(self.bridges))
            self.bridges[origin] = held
        return urlunsplit(("http", f"127.0.0.1:{held.listen_port}", *parts[2:]))

    async def open_bridges(self) -> None:
        """Open the bridge of every origin ``host_url`` has handed out."""
        async with self._opening:
            sandbox = RuntimeSandbox(self.inner)
            for held in list(self.bridges.values()):
                await held.open(sandbox, self.transport)

    async def prepare_execution(self, routes: list[str] | None) -> None:
        await self.open_bridges()
        await self.inner.prepare_execution(routes)

    async def prepare_setup(self) -> None:
        await self.inner.prepare_setup()

    async def run(self, argv: list[str], env: dict[str, str]) -> ProgramResultLike:
        await self.open_bridges()
        return cast(ProgramResultLike, await self.inner.run(argv, self.process_env(env)))

    async def run_program(self, argv: list[str], env: dict[str, str]) -> ProgramResultLike:
        await self.open_bridges()
        result = await self.inner.run_program(argv, self.process_env(env))
        return cast(ProgramResultLike, result)

    async def open_process(self, argv: list[str], env: dict[str, str]) -> RuntimeProcessLike:
        await self.open_bridges()
        return cast(RuntimeProcessLike, await self.inner.open_process(argv, self.process_env(env)))

    async def run_background(self, argv: list[str], env: dict[str, str], log: str) -> None:
        await self.open_bridges()
        await self.inner.run_background(argv, self.process_env(env), log)

    async def _read(self, path: str, max_bytes: int | None = None) -> bytes:
        return cast(bytes, await self.inner._read(path, max_bytes))

    async def write(self, path: str, data: bytes) -> None:
        await self.inner.write(path, data)

    async def expose(self, port: int) -> str:
        raise self._vf.sandbox_error(
            f"{self.name}: expose({port}) needs bridgeproto's inward routes, which this"
            " release does not have yet"
        )

    async def teardown(self) -> None:
        """The bridges first (their last calls need ``inner``), then ``inner``."""
        bridges, self.bridges = list(self.bridges.values()), {}
        await asyncio.gather(*(held.close() for held in bridges))
        await self.inner.stop()

    def cleanup(self) -> None:
        self.inner.cleanup()
