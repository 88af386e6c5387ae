"""Real sandboxes for tests, and the fixtures that make them."""

from __future__ import annotations

import os
import shutil
import site
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


def need_bwrap() -> None:
    """Skip without bwrap, unless CI said it must be there (then fail)."""
    if shutil.which("bwrap") is None:
        if REQUIRE_BWRAP:
            pytest.fail("BRIDGEPROTO_REQUIRE_BWRAP=1 but bwrap is not installed")
        pytest.skip("bwrap is not installed (apt-get install bubblewrap)")


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
