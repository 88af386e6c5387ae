"""The ``sandbox-side`` command, which the host runs in every sandbox.

    bridgeproto sandbox-side --session HEX [--settings JSON] [--daemon]

Its arguments are read by hand, not by ``cli``'s parser: a bridge's start
waits for this command's imports, and argparse with the rest of the command
line's modules were 8 ms of them. It runs the sandbox side over this
process's stdin and stdout, or as a daemon that takes channels on its
private socket (``--daemon``, see ``daemon.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import bridgeproto as bp

from . import eventloop
from .settings import SandboxSettings

USAGE = "usage: bridgeproto sandbox-side --session HEX [--settings JSON] [--daemon]"
HELP = f"""{USAGE}

Run the sandbox side (the host starts it in the sandbox).

  --session HEX    the session id, in hex
  --settings JSON  the settings record the host made
  --daemon         detach, and take channels on the private socket
"""


def main(argv: Sequence[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(HELP, end="")
        return 0
    daemon = "--daemon" in argv
    pairs = [arg for arg in argv if arg != "--daemon"]
    options = dict(zip(pairs[::2], pairs[1::2], strict=False))
    if len(pairs) % 2 or not set(options) <= {"--session", "--settings"}:
        return _error(f"unexpected arguments {list(argv)!r}; {USAGE}")
    try:
        session_id = bytes.fromhex(options.get("--session", ""))
        if len(session_id) != bp.SESSION_ID_BYTES:
            raise ValueError
    except ValueError:
        return _error(f"--session must be {bp.SESSION_ID_BYTES * 2} hex digits; {USAGE}")
    try:
        text = options.get("--settings")
        settings = SandboxSettings.from_json(text) if text else SandboxSettings()
    except ValueError as exc:
        return _error(str(exc))
    if daemon:
        from .daemon import start

        return start(session_id, settings)
    from .sandbox_side import run_sandbox_side
    from .streams import FdStream

    try:
        eventloop.run(run_sandbox_side, FdStream.stdio(), session_id, settings)
    except OSError as exc:
        return _error(f"the sandbox side cannot listen on {settings.listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130
    return 0


def _error(message: str) -> int:
    print(f"bridgeproto: {message}", file=sys.stderr)
    return 2
