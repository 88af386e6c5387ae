"""The sandbox providers, by name: what ``--sandbox`` offers and ``open_sandbox`` opens.

A provider is a module with a function that makes its sandbox
(``create(*, ro, rw)``, returning any ``SandboxClient``). One line makes it
known to ``open_sandbox``, ``bridgeproto run``, ``demo`` and ``bench``: an
entry in ``PROVIDERS`` below, or a ``register`` call (from a plugin or a
test). The built-in ones import their module only when opened, so the
command line starts without them.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from .errors import BridgeError

if TYPE_CHECKING:
    from .sandboxes import HostCommandSandbox, SandboxClient


__all__ = [
    "PROVIDERS",
    "Create",
    "Provider",
    "SandboxChoiceError",
    "names",
    "open_host_sandbox",
    "open_sandbox",
    "provider",
    "register",
]


class SandboxChoiceError(BridgeError):
    """No provider by that name, or none that fits."""


class Create(Protocol):
    """Makes a sandbox showing the host paths ``ro`` (read-only) and ``rw``
    inside at the same place; raises ``SandboxUnavailable`` naming the fix
    when it cannot (a tool missing, paths it cannot show)."""

    def __call__(self, *, ro: Sequence[str], rw: Sequence[str]) -> Awaitable[SandboxClient]: ...


@attrs.frozen
class Provider:
    """A kind of sandbox, under the name ``--sandbox`` takes.

    ``isolated``: the command sees only loopback and the host paths it is
    shown (``auto`` and ``bench`` pick only these, and ``run`` shows such a
    sandbox the current directory); ``auto`` tries the isolated ones in
    order, skipping one whose ``needs`` (host programs) are missing.
    ``note`` is what the user is told when it is picked.
    """

    name: str
    create: Create
    note: str
    isolated: bool = True
    needs: tuple[str, ...] = ()


async def _bwrap(*, ro: Sequence[str], rw: Sequence[str]) -> SandboxClient:
    from .sandboxes.offline import BwrapSandbox

    return await BwrapSandbox.create(ro=ro, rw=rw)


async def _unshare(*, ro: Sequence[str], rw: Sequence[str]) -> SandboxClient:
    from .sandboxes.offline import UnshareSandbox

    return await UnshareSandbox.create(ro=ro, rw=rw)


async def _local(*, ro: Sequence[str], rw: Sequence[str]) -> SandboxClient:
    from .sandboxes.local import LocalSandbox

    return LocalSandbox()  # (it shows the whole host: ro and rw change nothing)


PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> None:
    """Make ``provider`` known by its name (the last registered under a name wins)."""
    if provider.name == "auto" or not provider.name.replace("-", "").isalnum():
        raise ValueError(
            f"a provider's name is letters, digits and dashes, and not 'auto': {provider.name!r}"
        )
    PROVIDERS[provider.name] = provider


register(Provider("bwrap", _bwrap, "offline", needs=("bwrap",)))
register(Provider("unshare", _unshare, "offline"))
register(
    Provider("local", _local, "NO ISOLATION: the command can reach the network", isolated=False)
)


def names(*, isolated_only: bool = False) -> list[str]:
    """``auto`` and every provider's name, for ``--sandbox``."""
    return ["auto", *(p.name for p in PROVIDERS.values() if p.isolated or not isolated_only)]


def provider(kind: str) -> Provider:
    """The provider ``kind`` names (``auto``: the first isolated one this host can run)."""
    if kind != "auto":
        if kind not in PROVIDERS:
            raise SandboxChoiceError(f"unknown sandbox {kind!r}; choose {', '.join(names())}")
        return PROVIDERS[kind]
    isolated = [p for p in PROVIDERS.values() if p.isolated]
    for choice in isolated:
        if all(shutil.which(tool) for tool in choice.needs):
            return choice
    raise SandboxChoiceError("no isolated sandbox provider is registered; choose one by name")


async def open_sandbox(
    kind: str = "auto", *, ro: Sequence[str] = (), rw: Sequence[str] = ()
) -> tuple[SandboxClient, str]:
    """A sandbox of ``kind`` showing ``ro``/``rw``, with a line for the user
    saying what was picked (and, for ``auto``, what was passed over)."""
    chosen = provider(kind)
    sandbox = await chosen.create(ro=ro, rw=rw)
    isolated = [p.name for p in PROVIDERS.values() if p.isolated]
    skipped = isolated[: isolated.index(chosen.name)] if kind == "auto" else []
    passed_over = f"; {', '.join(skipped)} not found" if skipped else ""
    if chosen.isolated:
        return sandbox, f"sandbox: {chosen.name} ({chosen.note}{passed_over})"
    return sandbox, f"sandbox: {chosen.name} -- {chosen.note}"


async def open_host_sandbox(
    kind: str = "auto", *, ro: Sequence[str] = (), rw: Sequence[str] = ()
) -> tuple[HostCommandSandbox, str]:
    """``open_sandbox`` for callers that start host commands into it (the
    benchmark, the offline verifiers runtime)."""
    from .sandboxes import HostCommandSandbox

    sandbox, note = await open_sandbox(kind, ro=ro, rw=rw)
    if not isinstance(sandbox, HostCommandSandbox):
        await sandbox.aclose()
        raise SandboxChoiceError(
            f"the {kind} sandbox is not entered by a host command, which this needs;"
            " choose bwrap or unshare"
        )
    return sandbox, note
