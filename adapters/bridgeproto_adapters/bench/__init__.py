"""``bridgeproto bench``: direct, bridged and a polling baseline, side by side.

Not part of the bridge itself: the upstream, the agent that measures from
inside the sandbox, and the polling baseline live here so that the numbers
in docs/benchmarks.md can be reproduced with one command.
"""
