"""Nothing of the host crosses into a sandbox by inheritance.

A host process with a marker in its environment and two inheritable
descriptors (a file, and a TCP connection to its upstream) runs bridges into
an offline sandbox on both transports, agents' requests, and a hundred more
commands each, while a scanner inside reads every visible process's
environment, command line and descriptors in a loop. The scanner must never
see the marker or one of those descriptors: bwrap and unshare, uvloop and
asyncio, the host as root (commands run as nobody) and as an unprivileged
user (whose sandbox user is itself, and so can read every process inside).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from bridgeproto_adapters import packaging
from sandbox_kinds import need_bwrap, unprivileged_user

PYTHON = "/usr/bin/python3"  # a Python every user may run, with the archive on its path
SCENARIO = Path(__file__).with_name("handoff_scenario.py")


@pytest.fixture(scope="module")
def shared() -> Iterator[str]:
    """A directory any user can read: the code (the archive's, unpacked, so
    that it can build the archive again), uvloop and the scenario."""
    directory = tempfile.mkdtemp(prefix="bridgeproto-handoff-")
    os.chmod(directory, 0o755)
    with zipfile.ZipFile(packaging.build_zipapp()) as archive:
        archive.extractall(os.path.join(directory, "lib"))
    shutil.copytree(Path(uvloop.__file__).parent, os.path.join(directory, "lib", "uvloop"))
    shutil.copy(SCENARIO, directory)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def run_scenario(shared: str, kind: str, loop: str, *, as_user: str | None) -> dict[str, object]:
    if kind == "bwrap":
        need_bwrap()
    marker = f"host-secret-{secrets.token_hex(12)}"
    secret = tempfile.NamedTemporaryFile(dir=shared, prefix="marker-")  # noqa: SIM115
    secret.write(marker.encode())
    secret.flush()
    descriptor = os.dup(secret.fileno())  # inheritable: passed on to the scenario
    os.set_inheritable(descriptor, True)
    setpriv = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", "--"]
    try:
        result = subprocess.run(
            [*(setpriv if as_user else []), PYTHON, "handoff_scenario.py", kind,
             "stream,mailbox", loop],
            env={
                "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                "HOME": shared, "TMPDIR": shared,
                "PYTHONPATH": f"{shared}/lib",
                "HANDOFF_MARKER": marker, "HANDOFF_FD": str(descriptor),
                "MODEL_KEY": f"sk-{marker}",  # as a harness's key would be
            },
            cwd=shared, pass_fds=(descriptor,), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(descriptor)
        secret.close()
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    assert report["transports"] == ["stream", "mailbox"]
    assert report["loop"] == ("uvloop" if loop == "uvloop" else "asyncio.unix_events")
    # The scanner raced the host: it saw the commands' processes come and go
    # (200 commands and the mailbox's calls start well over 200; a busy
    # machine lets it catch fewer of the short ones, never under 100).
    assert isinstance(report["pids"], int) and report["pids"] > 100, report
    return report


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("kind", ["bwrap", "unshare"])
def test_nothing_of_a_root_host_reaches_the_sandbox(shared: str, kind: str, loop: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the host runs as root here only when the tests do")
    report = run_scenario(shared, kind, loop, as_user=None)
    assert report["hits"] == [], report


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("kind", ["bwrap", "unshare"])
def test_nothing_of_an_unprivileged_host_reaches_the_sandbox(
    shared: str, kind: str, loop: str
) -> None:
    with open("/proc/sys/user/max_user_namespaces") as limit:
        if int(limit.read()) == 0:
            pytest.fail("user namespaces are off (user.max_user_namespaces = 0)")
    user = unprivileged_user() if os.geteuid() == 0 else None
    report = run_scenario(shared, kind, loop, as_user=user)
    assert report["hits"] == [], report
