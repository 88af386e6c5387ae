"""The ``bridgeproto`` command.

Until the sandbox adapters exist, ``bridgeproto demo`` shows the core at work:
a sandbox-side and a host-side connection carry one streamed exchange to each
other in memory, and every frame is printed as it crosses.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import bridgeproto as bp


def _cross(label: str, sender: bp.Connection, receiver: bp.Connection, now: float) -> None:
    data = sender.data_to_send()
    decoder = bp.FrameDecoder(1 << 24)
    decoder.receive_data(data)
    while isinstance(frame := decoder.next_frame(), bp.Frame):
        print(f"  {label} seq={frame.seq:<3} {_describe(frame.record)}")
    for event in receiver.receive_data(data, now):
        if isinstance(event, bp.Data):
            print(f"      -> delivered {event.data.decode()!r}")


def _describe(record: bp.Record) -> str:
    if isinstance(record, bp.Data):
        return f"Data(exchange {record.exchange_id}, {len(record.data)} bytes)"
    if isinstance(record, bp.Hello):
        return f"Hello(version {record.version}, {record.role.name.lower()} side)"
    return repr(record)


def demo() -> int:
    session_id = os.urandom(bp.SESSION_ID_BYTES)
    sandbox = bp.Connection(bp.Role.SANDBOX, session_id)
    host = bp.Connection(bp.Role.HOST, session_id)
    now = 0.0
    sandbox.start(now)
    host.start(now)
    print("handshake:")
    _cross("sandbox -> host", sandbox, host, now)
    _cross("host -> sandbox", host, sandbox, now)
    print("a streamed chat completion:")
    xid = sandbox.start_exchange(
        b"POST", b"/v1/chat/completions", [(b"content-type", b"application/json")], now
    )
    sandbox.send_data(xid, b'{"stream": true}', now)
    sandbox.send_end(xid, now)
    _cross("sandbox -> host", sandbox, host, now)
    host.send_response(xid, 200, b"OK", [(b"content-type", b"text/event-stream")], now)
    for token in ("Hello", ",", " world"):
        host.send_data(xid, f"data: {token}\n\n".encode(), now)
        _cross("host -> sandbox", host, sandbox, now)
    host.send_end(xid, now)
    _cross("host -> sandbox", host, sandbox, now)
    print("shutdown:")
    sandbox.close(now)
    _cross("sandbox -> host", sandbox, host, now)
    _cross("host -> sandbox", host, sandbox, now)
    _cross("sandbox -> host", sandbox, host, now)
    print(f"sandbox side {sandbox.state.value}, host side {host.state.value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridgeproto", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="carry one streamed exchange through the core, in memory")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
