"""Offline sandboxes on this machine: bubblewrap, or util-linux ``unshare``.

The command inside is untrusted (an agent under RL may be adversarial, and is
root when the user is). So each sandbox is built as a jail, not a network
filter:

- One **holder** process owns the sandbox's namespaces: network (only
  loopback), pid (its own ``/proc``; the holder is its init, so when the
  holder dies every process inside dies with it), ipc, uts and mount, with a
  minimal filesystem view: the system directories read-only, a private
  ``/tmp`` (work directory ``/tmp/work``), empty ``/run``, ``/var/tmp`` and
  ``/dev/shm``, a handful of device nodes, and only the host paths exposed on
  purpose (``ro``/``rw``). The holder dies with its owner.
- Every command **enters all of those namespaces** with ``nsenter`` (so the
  sandbox side and the agent share one loopback and one ``/proc``), then
  drops every privilege with ``setpriv`` before anything of the caller runs:
  no capabilities (effective, permitted, inheritable, ambient and bounding
  set all empty), ``no_new_privs``, a new session (no terminal to inject
  keystrokes into). When the host user is root, commands also become
  ``nobody`` (uid 65534), so host files readable only by root stay
  unreadable; an unprivileged host user is root of a user namespace that
  maps only its own uid (so it owns nothing more inside than outside).

The two backends differ only in how the holder builds the view: bubblewrap
from its options, ``unshare`` from a short shell script of mounts ending in
``pivot_root``.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import TypeVar

import anyio
import anyio.abc

from ..processes import DEVNULL, start_process
from .base import SANDBOX_PATH, HostCommandSandbox, SandboxError, SandboxUnavailable
from .views import exposures, system_view

# The uid commands run as when the host user is root.
SANDBOX_UID = 65534


ROOT_PREFIX = "bridgeproto-sandbox-"


def _process_identity(pid: int) -> str:
    """A pid with its start time, so a reused pid is not taken for its predecessor."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return f"{pid} {stat.read().rpartition(')')[2].split()[19]}"
    except OSError:
        return ""


def _sweep_stale_roots() -> None:
    """Remove the directories of sandboxes whose owner died without cleaning up
    (killed with SIGKILL, say): their processes died with it, their files not."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        path = os.path.join(base, name)
        try:
            if not name.startswith(ROOT_PREFIX) or os.stat(path).st_uid != os.geteuid():
                continue
            with open(os.path.join(path, "owner")) as owner:
                identity = owner.read()
        except OSError:
            continue  # not ours, or still being made
        pid = identity.partition(" ")[0]
        if pid.isdigit() and _process_identity(int(pid)) != identity:
            shutil.rmtree(path, ignore_errors=True)


class _Holder:
    """The process that owns the sandbox's namespaces; ``pid`` is its host pid."""

    def __init__(self, process: anyio.abc.Process, pid: int) -> None:
        self.process = process
        self.pid = pid

    async def aclose(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()
            await self.process.aclose()


async def _start_holder(argv: list[str], what: str, info: tuple[int, int] | None) -> _Holder:
    """Start ``argv``, which prints ``ready`` once the sandbox is built, after
    ``{"child-pid": N}`` (on stdout, or on the pipe ``info``: read end, write end)."""
    try:  # the holder is the sandbox's first process: nothing of ours goes in with it
        passed = () if info is None else info[1:]
        process = start_process(argv, env={"PATH": SANDBOX_PATH}, stdin=DEVNULL, pass_fds=passed)
    except OSError as exc:
        raise SandboxUnavailable(f"{what}: cannot start {argv[0]}: {exc}") from None
    assert process.stdout is not None and process.stderr is not None
    output = b""
    with anyio.move_on_after(10):
        while not output.endswith(b"ready\n"):
            try:
                output += await process.stdout.receive()
            except anyio.EndOfStream:
                break
    if output.endswith(b"ready\n"):
        pid_json = output.removesuffix(b"ready\n") if info is None else _read_ready(info[0])
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return _Holder(process, int(json.loads(pid_json)["child-pid"]))
    if process.returncode is None:
        process.kill()
    stderr = b""
    with anyio.move_on_after(2):
        async for chunk in process.stderr:
            stderr += chunk
    await process.aclose()
    raise SandboxUnavailable(
        f"{what}: could not build the sandbox"
        f" ({stderr.decode(errors='replace').strip() or 'no output'})"
    )


def _read_ready(fd: int) -> bytes:
    """What is waiting in a pipe (written before the holder said ready)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


_Sandbox = TypeVar("_Sandbox", bound="_OfflineSandbox")


class _OfflineSandbox(HostCommandSandbox):
    """What both offline backends share: the holder, the host directory behind
    ``/tmp``, and how a command enters the sandbox."""

    workdir = "/tmp/work"
    enters_directly = True  # each launcher step holds only the command's environment
    tools: tuple[str, ...] = ("nsenter", "setpriv", "setsid")
    missing_tool_fix = "install util-linux"
    info_pipe = False  # does the holder report its pid on a pipe of its own?

    def __init__(self, holder: _Holder, root: str, view: list[tuple[str, str, str]]) -> None:
        self._holder = holder
        self._root = root
        self.view = view

    @property
    def holder_pid(self) -> int:
        """The host pid of a process inside (for ``nsenter`` from outside)."""
        return self._holder.pid

    @classmethod
    @abc.abstractmethod
    def holder_argv(cls, root: str, view: list[tuple[str, str, str]], info_fd: int) -> list[str]:
        """A command that builds the sandbox, reports the host pid of a process
        inside as JSON (on ``info_fd`` with ``info_pipe``, else on stdout), says
        ``ready`` on stdout and sleeps."""

    @classmethod
    async def create(
        cls: type[_Sandbox], *, ro: Sequence[str] = (), rw: Sequence[str] = ()
    ) -> _Sandbox:
        """Build a sandbox. ``ro``/``rw``: host paths to show inside at the same
        place, read-only or writable (by default none: only the system view)."""
        for tool in cls.tools:
            if shutil.which(tool) is None:
                raise SandboxUnavailable(f"{tool} is not installed; {cls.missing_tool_fix}")
        view = [*system_view(), *exposures(ro, rw)]
        _sweep_stale_roots()
        root = tempfile.mkdtemp(prefix=ROOT_PREFIX)
        try:
            with open(os.path.join(root, "owner"), "w") as owner:
                owner.write(_process_identity(os.getpid()))
            for directory in ("tmp/work", "rootfs"):
                os.makedirs(os.path.join(root, directory))
            if os.geteuid() == 0:  # the sandbox's user must own its /tmp
                for directory in ("tmp", "tmp/work"):
                    os.chown(os.path.join(root, directory), SANDBOX_UID, SANDBOX_UID)
            info = os.pipe() if cls.info_pipe else None
            try:
                argv = cls.holder_argv(root, view, info[1] if info else -1)
                holder = await _start_holder(argv, cls.name, info)
            finally:
                for fd in info or ():
                    os.close(fd)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(holder, root, view)

    def environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        # The host's HOME does not exist inside; the work directory does.
        return super().environment({"HOME": self.workdir, **(env or {})})

    def wrap(self, argv: list[str], cwd: str | None) -> list[str]:
        if os.geteuid() == 0:
            user = [f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
            namespaces = []
        else:  # the host user is root of the holder's user namespace: entering it
            user = []  # keeps the capabilities there until setpriv drops them
            namespaces = ["--user", "--preserve-credentials"]
        return [
            "nsenter", f"--target={self._holder.pid}", *namespaces,
            "--net", "--pid", "--ipc", "--uts", "--mount", "--root", "--",
            "setpriv", *user, "--nnp", "--inh-caps=-all", "--bounding-set=-all", "--",
            "setsid", "--wait", "--",
            "sh", "-c", 'cd "$0" && exec "$@"', cwd or self.workdir, *argv,
        ]  # fmt: skip

    async def write_file(self, path: str, data: bytes) -> None:
        """A file under the private ``/tmp`` is written from here, with no
        process to start, when every directory on the way is the sandbox
        user's own (symbolic links are not followed); anything else is
        written by a command inside, as in any sandbox."""
        write = functools.partial(self._write_in_tmp, path, data)
        try:
            done = write() if len(data) <= 1 << 20 else await anyio.to_thread.run_sync(write)
        except OSError as exc:  # a full disk, say, or a sandbox already closed
            raise SandboxError(f"{self.name}: cannot write {path}: {exc.strerror or exc}") from None
        if not done:
            await super().write_file(path, data)

    def _write_in_tmp(self, path: str, data: bytes) -> bool:
        parts = posixpath.normpath(path).split("/")
        if len(parts) < 3 or parts[:2] != ["", "tmp"]:
            return False
        inside = posixpath.join("/", *parts[1:])
        if any(
            kind in ("ro", "rw") and (inside + "/").startswith(target + "/")
            for kind, _, target in self.view
        ):
            return False  # a host path shown there: not ours to write from here
        owner, group = SANDBOX_UID, SANDBOX_UID
        if os.geteuid() != 0:  # (a user's group need not have its uid's number)
            owner, group = os.getuid(), os.getgid()
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        directory = os.open(os.path.join(self._root, "tmp"), flags)
        try:
            for name in parts[2:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=directory)
                    os.chown(name, owner, group, dir_fd=directory, follow_symlinks=False)
                try:
                    step = os.open(name, flags, dir_fd=directory)
                except OSError:
                    return False  # a link, or not a directory
                os.close(directory)
                directory = step
                if os.fstat(directory).st_uid != owner:
                    return False
            # Written under a hidden name of our own, then renamed into place:
            # the file appears whole, and a link already at its name is replaced.
            temporary = f".{parts[-1]}.{os.getpid()}.{os.urandom(4).hex()}"
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644, dir_fd=directory,
            )  # fmt: skip
            try:
                with os.fdopen(fd, "wb", closefd=False) as file:
                    file.write(data)
                os.fchown(fd, owner, group)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=directory)
                raise
            finally:
                os.close(fd)
            try:
                os.rename(temporary, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=directory)
                return False
            return True
        finally:
            os.close(directory)

    def kill(self) -> None:
        """Kill everything inside at once: the holder is the pid namespace's init."""
        if self._holder.process.returncode is None:
            self._holder.process.kill()

    async def aclose(self) -> None:
        await self._holder.aclose()
        shutil.rmtree(self._root, ignore_errors=True)


class BwrapSandbox(_OfflineSandbox):
    """An offline sandbox built by bubblewrap: ``await BwrapSandbox.create()``."""

    name = "bwrap"
    tools = ("bwrap", *_OfflineSandbox.tools)
    missing_tool_fix = (
        "install the bubblewrap package (apt-get install bubblewrap) or use --sandbox unshare"
    )

    info_pipe = True

    @classmethod
    def holder_argv(cls, root: str, view: list[tuple[str, str, str]], info_fd: int) -> list[str]:
        # An unprivileged user is root of a user namespace (mapped to itself),
        # as with unshare --map-root-user.
        user = [] if os.geteuid() == 0 else ["--unshare-user", "--uid", "0", "--gid", "0"]
        binds = {"ro": "--ro-bind", "rw": "--bind", "dev": "--dev-bind", "symlink": "--symlink"}
        mounts = [
            arg
            for kind, source, target in view
            for arg in (
                ("--perms", "0755", "--dir", target)
                if kind == "dir"
                else (binds[kind], source, target)
            )
        ]
        return [
            # pdeathsig: bwrap's own process dies with its owner too (its
            # --die-with-parent only ties the sandbox to bwrap).
            "setpriv", "--pdeathsig", "KILL", "--",
            "bwrap", "--die-with-parent", "--new-session",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "bridgeproto", *user,
            "--tmpfs", "/dev/shm", "--proc", "/proc",
            "--tmpfs", "/run", "--symlink", "../run", "/var/run", "--tmpfs", "/var/tmp",
            # the private /tmp first, so a path exposed under /tmp shows through it
            "--bind", os.path.join(root, "tmp"), "/tmp", *mounts,
            "--remount-ro", "/", "--cap-drop", "ALL", "--info-fd", str(info_fd),
            "--", "sh", "-c", "echo ready; exec sleep infinity",
        ]  # fmt: skip


# Run by the holder of an UnshareSandbox, in its new namespaces, before
# anything of the sandbox's runs. Arguments: ROOT TMP, then (kind, source,
# target) triples. It prints the holder's host pid (read from the host's /proc
# before the view replaces it), then ``ready``.
# The script ends as the pid namespace's init: its ``wait`` reaps every
# orphan inside too (the daemon, a call's leftovers), which ``exec sleep``
# never did: they stayed zombies, and a stop waited 5 s on a daemon gone.
_UNSHARE_VIEW = r"""
set -eu
read -r pid rest < /proc/self/stat
R=$1/rootfs T=$2; shift 2
ip link set lo up
mount -t tmpfs -o mode=755 bridgeproto "$R"
mkdir -p "$R/dev/shm" "$R/proc" "$R/tmp" "$R/run" "$R/var/tmp"
mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=755 run "$R/run"
ln -s ../run "$R/var/run"
mount -t tmpfs -o mode=1777 vartmp "$R/var/tmp"
mount --bind "$T" "$R/tmp"
while [ $# -gt 0 ]; do
    kind=$1 source=$2 target=$R$3; shift 3
    if [ "$kind" = symlink ]; then ln -s "$source" "$target"; continue; fi
    if [ "$kind" = dir ]; then mkdir -p -m 755 "$target"; continue; fi
    if [ -d "$source" ]; then mkdir -p "$target"; else mkdir -p "${target%/*}"; touch "$target"; fi
    mount --bind "$source" "$target"
    if [ "$kind" = ro ]; then mount -o remount,bind,ro "$target"; fi
done
cd "$R"; mkdir .old; pivot_root . .old; umount -l /.old; rmdir /.old
mount -o remount,bind,ro /
hostname bridgeproto
echo "{\"child-pid\": $pid}"
echo ready
sleep infinity & wait
"""


class UnshareSandbox(_OfflineSandbox):
    """The same sandbox built with util-linux alone, for machines without bwrap."""

    name = "unshare"
    tools = ("unshare", "pivot_root", "mount", "ip", *_OfflineSandbox.tools)
    missing_tool_fix = "install util-linux and iproute2"

    @classmethod
    def holder_argv(cls, root: str, view: list[tuple[str, str, str]], info_fd: int) -> list[str]:
        user = [] if os.geteuid() == 0 else ["--map-root-user"]
        return [
            # pdeathsig: the holder dies with its owner, and --kill-child takes
            # the pid namespace's init (and so everything inside) with it.
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--net", "--pid", "--fork", "--ipc", "--uts", "--mount",
            "--propagation", "private", "--kill-child", *user, "--",
            "sh", "-c", _UNSHARE_VIEW, "sh", root, os.path.join(root, "tmp"),
            *[part for step in view for part in step],
        ]  # fmt: skip
