"""Start a bridge into a sandbox, and stop it.

``open_bridge`` checks the sandbox's Python, uploads the sandbox side (once
per sandbox), starts it as a live process, and returns only when the
handshake is done, which means its listener already accepts connections. It
yields a ``Bridge`` with the URL and environment to give commands in the
sandbox; it changes nothing of the caller's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs

import bridgeproto as bp

from .errors import BridgeError
from .host_side import HostOptions, run_host_side
from .packaging import build_zipapp
from .sandboxes import LiveProcess, SandboxClient, SandboxError
from .session import Session, Tracer

PLACEHOLDER_KEY = "bridgeproto-placeholder-key"
MIN_PYTHON = (3, 10)


class BridgeStartError(BridgeError):
    """The bridge could not start; the message names the cause and the fix."""


@attrs.define
class Bridge:
    """A running bridge: where agents in the sandbox connect, and how to stop it."""

    url: str  # e.g. http://127.0.0.1:13131/rollout/abc
    env: Mapping[str, str]  # for commands run in the sandbox
    session: Session
    process: LiveProcess
    _stopped: bool = False

    async def stop(self, grace: float | None = None) -> None:
        """Shut the bridge down within a bounded time; safe to call again.

        Each step is idempotent, so a stop interrupted by an error can be
        retried and finishes the job.
        """
        if self._stopped:
            return
        grace = self.session.conn.config.shutdown_grace if grace is None else grace
        with anyio.CancelScope(shield=True):
            if not self.session.finished.is_set():
                with anyio.move_on_after(grace + 2):
                    await self.session.close()
            with anyio.move_on_after(2):
                await self.process.wait()
            await self.process.stop()
        self._stopped = True


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


async def check_python(
    sandbox: SandboxClient, python: str = "python3", env: Mapping[str, str] | None = None
) -> str:
    """The sandbox's Python version, or a ``BridgeStartError`` saying how to get one."""
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    fix = f"install python3 ({MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer) in the image or in setup"
    try:
        result = await sandbox.run([python, "-c", probe], env=env, timeout=30)
    except SandboxError as exc:
        raise BridgeStartError(f"cannot run {python} in the sandbox ({exc}); {fix}") from None
    found = result.stdout.decode(errors="replace").strip()
    if result.exit_code != 0 or not found.replace(".", "").isdigit():
        raise BridgeStartError(f"the sandbox has no working {python} on its PATH; {fix}")
    version = tuple(int(part) for part in found.split("."))
    if version < MIN_PYTHON:
        raise BridgeStartError(
            f"the sandbox has Python {found}, and the sandbox side needs"
            f" {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+; {fix}"
        )
    return found


@asynccontextmanager
async def open_bridge(
    sandbox: SandboxClient,
    upstream_url: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    listen: tuple[str, int] = ("127.0.0.1", 13131),
    allowed_prefixes: Sequence[str] | None = None,
    config: bp.Config | None = None,
    options: HostOptions | None = None,
    python: str = "python3",
    env: Mapping[str, str] | None = None,
    tracer: Tracer | None = None,
) -> AsyncIterator[Bridge]:
    """Run a bridge into ``sandbox`` forwarding to ``upstream_url``.

    ``headers`` are added on the host side to every forwarded request (the
    upstream's credentials); they never enter the sandbox. The path allowlist
    defaults to the upstream URL's path. ``env`` is the environment the
    sandbox side runs with (its PATH decides which ``python`` is found).
    """
    host, port, path = parse_upstream(upstream_url)
    policy = bp.HttpPolicy(allowed_prefixes=allowed_prefixes or [path or "/"])
    upstream = bp.Upstream(host, port, policy, tuple(headers))
    config = config or bp.Config()
    await check_python(sandbox, python, env)

    archive = build_zipapp()
    remote = f"/tmp/{archive.name}"
    present = await sandbox.run(["test", "-f", remote])
    if present.exit_code != 0:
        await sandbox.write_file(remote, archive.read_bytes())

    session_id = os.urandom(bp.SESSION_ID_BYTES)
    command = [
        python, remote, "sandbox-side", "--session", session_id.hex(),
        "--listen", f"{listen[0]}:{listen[1]}",
        "--idle-timeout", str(config.idle_timeout or 0),
        *[arg for prefix in policy.allowed_prefixes for arg in ("--allow", prefix.decode())],
    ]  # fmt: skip
    if config.exchange_timeout:
        command += ["--timeout", str(config.exchange_timeout)]
    process = await sandbox.open_process(command, env=env)
    url = f"http://{listen[0]}:{listen[1]}{path}"
    bridge: Bridge | None = None
    try:
        async with anyio.create_task_group() as tg:
            try:
                session = await tg.start(
                    functools.partial(
                        run_host_side,
                        process.stream,
                        session_id,
                        upstream,
                        config=config,
                        options=options,
                        tracer=tracer,
                    )
                )
            except (BridgeError, TimeoutError) as exc:
                raise BridgeStartError(
                    f"the sandbox side did not start ({exc}); its error output is above"
                ) from None
            bridge = Bridge(url, sandbox_env(url), session, process)
            try:
                yield bridge
            finally:
                await bridge.stop()
    finally:
        if bridge is None:
            await process.stop()
