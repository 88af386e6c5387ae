"""Sandboxes entered by a plain host command: none at all, or an ``exec -i`` prefix."""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence

from .base import HostCommandSandbox


class LocalSandbox(HostCommandSandbox):
    """No isolation: commands run on the host as they are. Only by name.

    Without ``workdir`` it makes a temporary one, which ``aclose`` removes."""

    name = "local (no isolation)"
    enters_directly = True

    def __init__(self, workdir: str | None = None) -> None:
        self._made = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="bridgeproto-local-")

    async def aclose(self) -> None:
        if self._made:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return super().environment({"HOME": self.workdir, **(env or {})})

    def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
        return ["sh", "-c", 'cd "$0" && exec "$@"', cwd or self.workdir, *argv]


class CommandPrefixSandbox(HostCommandSandbox):
    """Any sandbox reached through an ``exec -i``-style command prefix."""

    def __init__(self, prefix: Sequence[str], workdir: str = "/tmp") -> None:
        if not prefix:
            raise ValueError(
                "the command prefix is empty; give e.g. ['docker', 'exec', '-i', 'ID']"
            )
        self.prefix = list(prefix)
        self.workdir = workdir
        self.name = f"prefix {shlex.join(self.prefix)}"

    def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
        return [*self.prefix, "sh", "-c", 'cd "$0" && exec "$@"', cwd or self.workdir, *argv]
