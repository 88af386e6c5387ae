"""Where the ``bridgeproto`` command starts: each subcommand is dispatched here once.

``channel`` and ``mailbox`` go straight to their standard-library module
(``sandbox_calls``, which the host runs as source, not from the archive)
before anything else is imported; every other subcommand goes to ``cli``.
The archive's ``__main__``, ``python -m bridgeproto_adapters`` and the
installed ``bridgeproto`` all start at ``main`` here (``cli`` never imports
this module: no circle).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run_fast(argv: Sequence[str]) -> int | None:
    """Run ``channel`` or ``mailbox`` with the rest of ``argv``; None for any other."""
    if argv[:1] not in (["channel"], ["mailbox"]):
        return None
    from .sandbox_calls import main as run_call

    return run_call(list(argv))


def main() -> int:
    argv = sys.argv[1:]
    code = run_fast(argv)
    if code is not None:
        return code
    from .cli import main as cli_main

    return cli_main(argv)
