"""A transport as one object with two ends, chosen once (see ``registry.py``).

A ``Transport`` names where its two ends live, as ``"module:attribute"``
strings imported only by the side that runs them (the daemon imports no
host end, the host no sandbox end):

- the **host end** makes the host's channels: ``host_end(place, options)``
  returns a ``HostChannels`` (``next_channel``, ``run``, ``aclose``);
- the **sandbox end** serves them inside, beside the daemon's session:
  ``await sandbox_end(acceptor, session_id, options, task_status=...)``
  offers each channel that arrives to the ``Acceptor``, and reports started
  once it takes channels.

``options`` is the transport's own record (an ``attrs`` class, or None); it
crosses to the sandbox side in its settings as ``attrs.asdict`` makes it,
so the sandbox end gets a plain mapping.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import attrs

import bridgeproto as bp

from ..sandbox_calls import channel_dir
from . import Channels

if TYPE_CHECKING:  # (the daemon imports this module, and no sandbox backend)
    from ..sandboxes.base import SandboxClient


def private_dir(session_id: bytes) -> str:
    """The sandbox side's directory for a session, only its user may enter:
    where a transport's sandbox end keeps what its host end reads (the
    daemon makes it before it starts the sandbox end, and removes it)."""
    return channel_dir(session_id)


@attrs.frozen
class ChannelPlace:
    """What a host end is given: where the sandbox side runs, and how to reach it."""

    sandbox: SandboxClient
    session_id: bytes
    python: str  # the sandbox's Python
    archive: str  # the sandbox side's archive, in the sandbox
    env: Mapping[str, str] | None = None
    start_wait: float = 0.0  # how long the daemon's start may take, at most


class HostChannels(Channels, Protocol):
    """The host end of a transport: channels, and their life beside the bridge."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Runs from before the daemon starts until ``aclose``: report
        started once ``next_channel`` may be called."""
        ...

    async def aclose(self) -> None:
        """Stop opening channels and close the one in use; idempotent."""
        ...


class HostEnd:
    """Defaults for a host end: ``run`` only waits for ``aclose``."""

    _closed: anyio.Event | None = None

    def _closed_event(self) -> anyio.Event:
        if self._closed is None:
            self._closed = anyio.Event()
        return self._closed

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await self._closed_event().wait()

    async def aclose(self) -> None:
        self._closed_event().set()


def _checked_reference(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    module, sep, name = value.partition(":")
    if not (module and sep and name.isidentifier()):
        raise ValueError(
            f"Transport.{attribute.name} {value!r} is not 'module:attribute'"
            " (e.g. 'my_package.tcp:TcpChannels')"
        )


def load(reference: str) -> Any:
    """The attribute a ``"module:attribute"`` reference names."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@attrs.frozen
class SandboxEnd:
    """What the sandbox side's settings hold of its transport: its name, the
    end the daemon serves, and the transport's options (as JSON)."""

    name: str
    serve: str = attrs.field(validator=_checked_reference)
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Transport:
    """A way to carry a session's channels between the host and the sandbox side.

    ``limits``: the core's limits a bridge over it uses when given no
    ``Config`` (a transport whose round trips are slow wants larger windows).
    ``options``: the transport's options record (or None), given to both ends.
    """

    name: str
    host_end: str = attrs.field(validator=_checked_reference)
    sandbox_end: str = attrs.field(validator=_checked_reference)
    limits: bp.Limits = attrs.field(factory=bp.Limits)
    options: Any = None

    def with_options(self, options: Any) -> Transport:
        return attrs.evolve(self, options=options)

    def sandbox_settings(self) -> SandboxEnd:
        """What crosses to the sandbox side, in its settings."""
        options = {} if self.options is None else attrs.asdict(self.options, recurse=True)
        return SandboxEnd(self.name, self.sandbox_end, options)

    def host_channels(self, place: ChannelPlace) -> HostChannels:
        made: HostChannels = load(self.host_end)(place, self.options)
        return made

    def modules(self) -> tuple[str, ...]:
        """The modules its ends live in (the sandbox side's archive holds them)."""
        ends = (self.host_end, self.sandbox_end)
        return tuple(dict.fromkeys(end.partition(":")[0] for end in ends))
