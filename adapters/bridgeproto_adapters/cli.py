"""The ``bridgeproto`` command.

Until the sandbox adapters exist, ``bridgeproto demo`` shows the core at work:
a sandbox-side and a host-side connection carry one streamed exchange to each
other in memory, and every frame is printed as it crosses.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

import anyio

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


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:13131)")
    return host, int(port)


def sandbox_side(args: argparse.Namespace) -> int:
    """Run the sandbox side over this process's stdin and stdout."""
    from .sandbox_side import run_sandbox_side
    from .streams import FdStream

    try:
        session_id = bytes.fromhex(args.session)
        if len(session_id) != bp.SESSION_ID_BYTES:
            raise ValueError
    except ValueError:
        print(
            f"bridgeproto: --session must be {bp.SESSION_ID_BYTES * 2} hex digits", file=sys.stderr
        )
        return 2
    policy = bp.HttpPolicy(allowed_prefixes=args.allow or ["/"])
    config = bp.Config(idle_timeout=args.idle_timeout or None, exchange_timeout=args.timeout)
    listen: str | tuple[str, int] = args.unix or args.listen
    try:
        anyio.run(
            functools.partial(
                run_sandbox_side,
                FdStream.stdio(),
                session_id,
                listen=listen,
                policy=policy,
                config=config,
            )
        )
    except OSError as exc:
        print(f"bridgeproto: the sandbox side cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridgeproto", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="carry one streamed exchange through the core, in memory")
    side = commands.add_parser(
        "sandbox-side",
        help="run the sandbox side over stdin/stdout (started by the host side, not by hand)",
    )
    side.add_argument("--session", required=True, help="the session id, in hex")
    side.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 13131),
        help="HOST:PORT for agents (default 127.0.0.1:13131)",
    )
    side.add_argument("--unix", help="listen on this Unix socket path instead")
    side.add_argument("--allow", action="append", help="an allowed path prefix (repeatable)")
    side.add_argument("--idle-timeout", type=float, default=300.0, help="seconds (default 300)")
    side.add_argument("--timeout", type=float, default=None, help="total seconds per exchange")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return sandbox_side(args)


if __name__ == "__main__":
    sys.exit(main())
