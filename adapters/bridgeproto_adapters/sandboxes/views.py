"""What an offline sandbox shows of the host: the system view, and the paths
shown on purpose (with the Python of each virtual environment among them).

Each step is ``(kind, source, target)``: ``ro``/``rw`` binds, ``dev``
nodes, ``symlink``s and ``dir``s made open to all; both offline backends
build their view from the same steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from .base import SandboxUnavailable

__all__ = ["DEVICES", "DEVICE_LINKS", "SYSTEM_PATHS", "exposures", "system_view"]

# Host directories every sandbox sees read-only (the ones this machine has).
SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Device nodes one by one (bwrap's --dev would make a nested user namespace
# for an unprivileged user, which nsenter cannot join).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEVICE_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                "stderr": "/proc/self/fd/2"}  # fmt: skip


def system_view() -> list[tuple[str, str, str]]:
    """(kind, source, target) steps: ``ro`` binds, ``dev`` nodes and ``symlink``s."""
    steps = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            steps.append(("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            steps.append(("ro", path, path))
    steps += [("dev", f"/dev/{name}", f"/dev/{name}") for name in DEVICES]
    steps += [("symlink", target, f"/dev/{name}") for name, target in DEVICE_LINKS.items()]
    return steps


def exposures(ro: Sequence[str] = (), rw: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """The host paths to show inside at the same place, checked and resolved;
    with them, read-only, the Python of each virtual environment shown."""
    steps = []
    shown: list[str] = []
    for kind, paths in (("ro", ro), ("rw", rw)):
        for path in paths:
            real = os.path.realpath(path)
            if not os.path.exists(real):
                raise SandboxUnavailable(f"cannot expose {path!r} to the sandbox: no such path")
            if real == "/":
                raise SandboxUnavailable(
                    "exposing / would show the whole host to the sandbox; expose the"
                    " directories the command needs instead"
                )
            steps += _shown_at(kind, real)
            shown.append(real)
    visible = [*shown, *(p for p in SYSTEM_PATHS if os.path.isdir(p))]
    for base in _venv_bases(shown):
        if not any(base == v or base.startswith(v.rstrip("/") + "/") for v in visible):
            steps += _shown_at("ro", base)
            visible.append(base)
    return steps


def _shown_at(kind: str, real: str) -> list[tuple[str, str, str]]:
    """The steps that show ``real``: its parents made open to all (bwrap would
    make them 0700), then the path itself."""
    parents = [os.path.dirname(real)]
    while parents[-1] != "/":
        parents.append(os.path.dirname(parents[-1]))
    return [
        *(("dir", "", p) for p in reversed(parents) if p not in ("/", "/tmp")),
        (kind, real, real),
    ]


def _venv_bases(shown: Sequence[str]) -> list[str]:
    """The Python installations the virtual environments in ``shown`` (each
    path, or a directory right inside it such as ``.venv``) run from: a venv's
    ``python`` is a link into one, which may lie where nothing else is shown
    (a ``pyenv`` under a home directory only its owner may enter)."""
    bases = []
    for path in shown:
        configs = [os.path.join(path, "pyvenv.cfg")]
        if os.path.isdir(path):
            with contextlib.suppress(OSError):
                configs += [os.path.join(path, n, "pyvenv.cfg") for n in os.listdir(path)]
        for config in configs:
            try:
                with open(config) as file:
                    lines = file.read().splitlines()
            except OSError:
                continue
            for line in lines:
                key, _, value = line.partition("=")
                home = os.path.realpath(value.strip())
                if key.strip() == "home" and os.path.isdir(home):
                    bases.append(os.path.dirname(home) if home.endswith("/bin") else home)
    return bases
