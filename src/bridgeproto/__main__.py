"""``python -m bridgeproto`` says where the command is.

This package is the Sans-IO core and imports nothing of the adapters, which
hold the command line; so the command is ``bridgeproto`` (or
``python -m bridgeproto_adapters``).
"""

import sys

print(
    "bridgeproto: this is the protocol core; run the command as `bridgeproto ...`"
    " or `python -m bridgeproto_adapters ...`",
    file=sys.stderr,
)
sys.exit(2)
