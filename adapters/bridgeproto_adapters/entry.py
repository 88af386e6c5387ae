"""Where the ``bridgeproto`` command starts: each subcommand is dispatched here once.

``channel`` and ``mailbox`` run inside the sandbox for every channel and
every call, so they go straight to their standard-library modules
(``relay``, ``mailbox_call``) before anything else is imported; every other
subcommand goes to ``cli``. The archive's ``__main__``, ``python -m
bridgeproto_adapters`` and the installed ``bridgeproto`` all start at
``main`` here (``cli`` never imports this module: no circle).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def run_fast(argv: Sequence[str]) -> int | None:
    """Run ``channel`` or ``mailbox`` with the rest of ``argv``; None for any other."""
    command: Callable[[list[str]], int]
    if argv[:1] == ["channel"]:
        from .relay import main as command
    elif argv[:1] == ["mailbox"]:
        from .mailbox_call import main as command
    else:
        return None
    return command(list(argv[1:]))


def main() -> int:
    argv = sys.argv[1:]
    code = run_fast(argv)
    if code is not None:
        return code
    from .cli import main as cli_main

    return cli_main(argv)
