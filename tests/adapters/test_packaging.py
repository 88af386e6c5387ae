"""The package as an index and a user see it: the wheel's metadata, the
version on the command line, and the sandbox side on another Python than
the host's."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import bridgeproto as bp
from sandbox_kinds import need_bwrap, skip_or_fail
from test_cli import BRIDGEPROTO
from upstream import upstream_in_thread

ROOT = pathlib.Path(__file__).parents[2]
PYENV = pathlib.Path(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "versions")


def test_the_wheel_has_the_metadata_an_index_shows(tmp_path: pathlib.Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    log = (build.stdout + build.stderr).lower()
    assert "is deprecated" not in log and "deprecationwarning" not in log
    (wheel,) = tmp_path.glob("bridgeproto-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert f"Version: {bp.__version__}" in metadata
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    for minor in (10, 11, 12, 13):
        assert f"Classifier: Programming Language :: Python :: 3.{minor}" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "bridgeproto/py.typed" in names and "bridgeproto_adapters/py.typed" in names
    assert any(name.endswith("licenses/LICENSE") for name in names)


def test_version_names_the_package_and_the_wire_protocol() -> None:
    result = subprocess.run([*BRIDGEPROTO, "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == (
        f"bridgeproto {bp.__version__} (wire protocol version {bp.PROTOCOL_VERSION})"
    )


def test_python_m_bridgeproto_points_at_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "bridgeproto"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "python -m bridgeproto_adapters" in result.stderr


def other_python() -> pathlib.Path | None:
    """A Python 3.10+ of another minor version than this one, oldest first
    (pyenv's, or the system's), for a sandbox that is not the host's twin."""
    found = []
    for minor in range(10, 14):
        if minor == sys.version_info.minor:
            continue
        found += sorted(PYENV.glob(f"3.{minor}.*/bin/python3.{minor}"))
        found += [pathlib.Path(p) for p in [shutil.which(f"python3.{minor}")] if p]
    return found[0] if found else None


def test_host_and_sandbox_on_different_python_versions() -> None:
    """The host side on this Python runs ``bridgeproto run`` into a sandbox
    whose Python is another minor version (the oldest one supported if it can)."""
    need_bwrap()
    sandbox_python = other_python()
    if sandbox_python is None:
        skip_or_fail(
            f"no Python 3.10+ other than 3.{sys.version_info.minor} was found under {PYENV}"
            " or on PATH (pyenv install 3.10)"
        )
    version = subprocess.run(
        [str(sandbox_python), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    prefix = str(sandbox_python.resolve().parent.parent)
    agent = "import sys, os, urllib.request as u; u.urlopen(os.environ['BRIDGEPROTO_URL'] + '/json'); print(sys.version_info[:2])"  # noqa: E501
    with upstream_in_thread() as upstream:
        result = subprocess.run(
            [*BRIDGEPROTO, "run", "--upstream", upstream.url,
             "--sandbox", "bwrap", "--hide-cwd", "--ro", prefix, "--python", str(sandbox_python),
             "--", str(sandbox_python), "-c", agent],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == version != str(tuple(sys.version_info[:2]))
    assert "1 exchange," in result.stderr  # and the summary speaks of one in the singular


def test_the_sandbox_side_archive_carries_no_host_only_code() -> None:
    from bridgeproto_adapters import packaging

    with zipfile.ZipFile(packaging.build_zipapp()) as archive:
        names = archive.namelist()
    assert "bridgeproto_adapters/sandbox_calls.py" in names
    assert "bridgeproto/_connection.py" in names
    left_out = [name for name in names if name.startswith(packaging.HOST_ONLY)]
    assert not left_out and not [name for name in names if name.startswith("idna/")]
    assert "bridgeproto_adapters/cli.py" not in names and "anyio/_backends/_trio.py" not in names
    # A registered transport's module may import any of the rest (the daemon imports it).
    assert "bridgeproto_adapters/sandboxes/__init__.py" in names


def test_the_archive_holds_everything_the_sandbox_runs() -> None:
    """Every module the sandbox side's commands import, on both transports,
    imports from the archive alone (isolated, without site); anything else
    the archive is asked to run says what it runs instead."""
    from bridgeproto_adapters import packaging

    archive = str(packaging.build_zipapp())
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        " import bridgeproto_adapters.sandbox_command, bridgeproto_adapters.daemon,"
        " bridgeproto_adapters.sandbox_calls, bridgeproto_adapters.transports.live_sandbox,"
        " bridgeproto_adapters.transports.mailbox_sandbox, anyio._backends._asyncio;"
        " print('imported')"
    )
    python = shutil.which("python3") or "python3"
    done = subprocess.run(
        [python, "-I", "-S", "-c", probe, archive], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "imported", done.stderr
    other = subprocess.run(
        [python, "-I", "-S", archive, "run"], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 2
    assert "runs the sandbox's commands only: sandbox-side, channel, mailbox" in other.stderr


def test_a_sandbox_python_of_the_hosts_version_imports_the_archives_bytecode() -> None:
    """Each module rides with its bytecode for the host's Python; a sandbox
    Python with the same bytecode version imports that, without compiling
    (one of another version compiles the source: the test above)."""
    from bridgeproto_adapters import packaging

    archive = packaging.build_zipapp()
    with zipfile.ZipFile(archive) as files:
        names = set(files.namelist())
    sources = {n for n in names if n.endswith(".py") and n != "__main__.py"}
    assert sources and {n + "c" for n in sources} <= names
    probe = (
        "import importlib.util, sys; sys.path.insert(0, sys.argv[1]);"
        " import bridgeproto._connection as m;"
        " print(importlib.util.MAGIC_NUMBER.hex(), m.__file__.rsplit('.', 1)[1])"
    )
    python = shutil.which("python3") or "python3"
    seen = subprocess.run(
        [python, "-I", "-c", probe, str(archive)], capture_output=True, text=True, timeout=60
    )
    assert seen.returncode == 0, seen.stderr
    magic, loaded_from = seen.stdout.split()
    assert loaded_from == ("pyc" if magic == importlib.util.MAGIC_NUMBER.hex() else "py")
