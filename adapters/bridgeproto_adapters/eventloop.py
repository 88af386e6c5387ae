"""The event loop the command line and the sandbox side run on.

uvloop where it is installed (``pip install 'bridgeproto[fast]'`` on the
host; the sandbox side uses it only if the sandbox's own Python has it),
asyncio's own loop otherwise. ``BRIDGEPROTO_UVLOOP=0`` turns it off, to
compare. Code that embeds the bridge runs it on the embedder's loop.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


@functools.cache
def uvloop_in_use() -> bool:
    """Whether ``run`` runs on uvloop here: it is turned on and imports (an
    installed one built for another Python does not)."""
    if os.environ.get("BRIDGEPROTO_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run(func, *args)`` on the fastest loop at hand."""
    return anyio.run(func, *args, backend_options={"use_uvloop": uvloop_in_use()})
