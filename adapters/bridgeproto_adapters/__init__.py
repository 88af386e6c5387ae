"""Adapters: I/O for the bridgeproto core (anyio streams, sandbox clients, the command line)."""
