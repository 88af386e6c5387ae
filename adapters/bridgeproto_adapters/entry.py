"""Where the ``bridgeproto`` command starts: each subcommand is dispatched here once.

The commands the host runs in the sandbox go straight to their modules
before anything else is imported: ``channel`` and ``mailbox`` to
``sandbox_calls`` (standard library alone; the host runs it as source, not
from the archive), ``sandbox-side`` to ``sandbox_command``. Every other
subcommand goes to ``cli``.
The archive's ``__main__``, ``python -m bridgeproto_adapters`` and the
installed ``bridgeproto`` all start at ``main`` here (``cli`` never imports
this module: no circle).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run_fast(argv: Sequence[str]) -> int | None:
    """Run a command the host runs in the sandbox; None for any other."""
    if argv[:1] == ["sandbox-side"]:
        from .sandbox_command import main as run_sandbox_side

        return run_sandbox_side(argv[1:])
    if argv[:1] not in (["channel"], ["mailbox"]):
        return None
    from .sandbox_calls import main as run_call

    return run_call(list(argv))


def main() -> int:
    argv = sys.argv[1:]
    code = run_fast(argv)
    if code is not None:
        return code
    try:
        from .cli import main as cli_main
    except ImportError:  # the sandbox side's archive, which carries no command line
        print("bridgeproto: this archive runs the sandbox's commands only:"
              " sandbox-side, channel, mailbox", file=sys.stderr)  # fmt: skip
        return 2
    return cli_main(argv)
