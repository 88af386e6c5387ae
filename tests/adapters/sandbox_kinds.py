"""Real sandboxes for tests, and the fixtures that make them."""

from __future__ import annotations

import os
import pwd
import shutil
import site
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import pytest

from bridgeproto_adapters.sandboxes import (
    BwrapSandbox,
    HostCommandSandbox,
    LocalSandbox,
    UnshareSandbox,
)

REQUIRE_BWRAP = os.environ.get("BRIDGEPROTO_REQUIRE_BWRAP") == "1"
# This venv's packages: shown read-only in a sandbox whose agents import
# real clients (openai, websockets, ...).
SITE_PACKAGES = site.getsitepackages()[0]


def skip_or_fail(why: str) -> NoReturn:
    """Skip a test this machine cannot run, unless CI said it must run
    everything (BRIDGEPROTO_REQUIRE_BWRAP=1): then a skip would hide it, so fail."""
    if REQUIRE_BWRAP:
        pytest.fail(f"BRIDGEPROTO_REQUIRE_BWRAP=1 but {why}")
    pytest.skip(why)


def need_bwrap() -> None:
    """Skip without bwrap, unless CI said it must be there (then fail)."""
    if shutil.which("bwrap") is None:
        skip_or_fail("bwrap is not installed (apt-get install bubblewrap)")


@asynccontextmanager
async def make_sandbox(kind: str) -> AsyncIterator[HostCommandSandbox]:
    sandbox: HostCommandSandbox
    if kind == "bwrap":
        need_bwrap()
        sandbox = await BwrapSandbox.create()
    elif kind == "unshare":
        sandbox = await UnshareSandbox.create()
    else:
        sandbox = LocalSandbox()
    try:
        yield sandbox
    finally:
        await sandbox.aclose()


UNPRIVILEGED_USER = "bridgeproto-test"


def unprivileged_user() -> str:
    """A user without privileges (made here when the tests run as root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.fail("useradd is missing (apt-get install passwd): cannot make a user")
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", UNPRIVILEGED_USER],
            capture_output=True, text=True,
        )  # fmt: skip
        if made.returncode != 0:
            try:  # another test worker made it first
                pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                pytest.fail(f"useradd {UNPRIVILEGED_USER} failed: {made.stderr.strip()}")
    return UNPRIVILEGED_USER
