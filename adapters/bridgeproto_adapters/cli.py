"""The ``bridgeproto`` command.

    bridgeproto run --upstream URL [options] -- CMD [ARG...]
    bridgeproto demo
    bridgeproto decode TRACE
    bridgeproto sandbox-side --session HEX --settings JSON [--daemon]
    bridgeproto channel --session HEX            (these three started by the host side
    bridgeproto mailbox --session HEX --epoch N --in K --wait MS --max-out BYTES [...]
                                                 and dispatched by entry.py)

Every failure to start prints one line naming the cause and the fix and
exits 2; otherwise ``run`` exits as ``run.py`` describes (the command's own
status, 128 + the signal that stopped it, or 3 when the bridge went down).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import NoReturn

import bridgeproto as bp

from . import eventloop, providers
from .errors import BridgeError
from .headers import parse_header
from .transports import registry

EXIT_START_FAILED = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_START_FAILED, f"bridgeproto: {message} (see {self.prog} --help)\n")


def _error(message: str) -> int:
    """Say what stopped the command; the exit status for it."""
    print(f"bridgeproto: {message}", file=sys.stderr)
    return EXIT_START_FAILED


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:13131)")
    return host, int(port)


def _expose_spec(text: str) -> tuple[int, int]:
    """``PORT`` or ``HOSTPORT:PORT`` (host side first, as docker -p writes it):
    (host port, 0 for a free one; port inside)."""
    host_port, _, port = text.rpartition(":")
    numbers = [host_port or "0", port]
    if not all(n.isdigit() for n in numbers) or not (
        0 <= int(numbers[0]) < 65536 and 0 < int(numbers[1]) < 65536
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PORT or HOSTPORT:PORT (e.g. 8000, or 9000:8000 for host port"
            " 9000 to port 8000 inside)"
        )
    return int(numbers[0]), int(numbers[1])


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _batch_bytes(text: str) -> int:
    value = int(text)
    if value < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: a batch must be at least 1024 bytes")
    return value


def _body_bytes(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a body limit must be 1 byte or more")
    return value


def _calls(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at least 2 (one call waits for output while another carries input)"
        )
    return value


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from .run import run_command

    if not args.command:
        return _error(
            "no command given; put it after --, e.g. bridgeproto run --upstream URL -- curl ..."
        )
    if not args.upstream and not args.expose:
        return _error("give --upstream URL, --expose PORT, or both")
    try:
        return eventloop.run(run_command, args)
    except BridgeError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 130


# ---------------------------------------------------------------- bench


def bench(args: argparse.Namespace) -> int:
    import attrs

    from .bench import report, runner

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _error("--plot needs matplotlib: pip install 'bridgeproto[bench]'")
    sizes = runner.QUICK if args.quick else runner.FULL
    if args.bridges is not None:
        sizes = attrs.evolve(sizes, bridges=args.bridges)
    only = args.only.split(",") if args.only else runner.SCENARIOS
    unknown = set(only) - set(runner.SCENARIOS)
    if unknown:
        return _error(
            f"no bench scenario {', '.join(sorted(unknown))}; choose from"
            f" {', '.join(runner.SCENARIOS)}"
        )
    say = functools.partial(print, file=sys.stderr)
    bench_run = runner.Bench(sizes, args.sandbox, say, only)
    try:
        results = eventloop.run(bench_run.run)
    except BridgeError as exc:
        return _error(str(exc))
    print(report.table(results))
    if args.json:
        report.write_json(results, args.json)
    if args.plot:
        report.plot(results, args.plot)
    return 0


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(
        prog="bridgeproto",
        description="Carry HTTP between an offline sandbox and services on its host.",
        epilog="The host also runs 'sandbox-side', 'channel' and 'mailbox' inside the sandbox"
        " (see entry.py).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"bridgeproto {bp.__version__} (wire protocol version {bp.PROTOCOL_VERSION})",
    )
    commands = parser.add_subparsers(dest="command_name", required=True, parser_class=_Parser)

    run_p = commands.add_parser(
        "run", help="run a command in an offline sandbox with the bridge up",
        description="Run CMD in an offline sandbox. Inside, BRIDGEPROTO_URL, OPENAI_BASE_URL and"
        " ANTHROPIC_BASE_URL point at the bridge, and the API keys are placeholders; the"
        " upstream's credentials (--header-file) are added on the host side only. CMD runs in"
        " the current directory, shown read-only, with the system directories and a private"
        " /tmp; nothing else of the host is visible. See docs/security.md.",
    )  # fmt: skip
    run_p.add_argument("--upstream", help="the upstream inside reaches, http://HOST:PORT/PATH")
    run_p.add_argument(
        "--expose",
        type=_expose_spec,
        action="append",
        default=[],
        metavar="[HOSTPORT:]PORT",
        help="make loopback PORT inside reachable from the host at 127.0.0.1:HOSTPORT (a free"
        " port without HOSTPORT); the URL is printed before CMD starts; repeatable",
    )
    run_p.add_argument(
        "--sandbox",
        choices=providers.names(),
        default="auto",
        help="the sandbox provider; auto picks the first isolated one this host has (bwrap,"
        " else unshare); local has no isolation",
    )
    run_p.add_argument(
        "--transport",
        choices=["auto", *registry.names()],
        default="auto",
        help="stream: a live process per channel; mailbox: only run-a-command calls, long-polled;"
        " or one registered in transports.registry; auto: stream where the sandbox has live"
        " processes (default)",
    )
    run_p.add_argument(
        "--mailbox-wait",
        type=_seconds,
        default=15.0,
        help="mailbox: seconds a call may wait in the sandbox for output (default 15)",
    )
    run_p.add_argument(
        "--mailbox-batch",
        type=_batch_bytes,
        default=1 << 20,
        metavar="BYTES",
        help="mailbox: the most bytes one call brings back, under the provider's output"
        " limit (default 1048576)",
    )
    run_p.add_argument(
        "--mailbox-calls",
        type=_calls,
        default=2,
        metavar="N",
        help="mailbox: calls in flight at once, at least 2 (default 2)",
    )
    run_p.add_argument(
        "--mailbox-input",
        choices=["upload", "call"],
        default="upload",
        help="mailbox: how input that cannot wait travels: uploaded to the sandbox side's"
        " spool (default; lower latency) or in calls only (fewer operations per request)",
    )
    run_p.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 13131),
        help="where the bridge listens inside the sandbox (default 127.0.0.1:13131)",
    )
    run_p.add_argument(
        "--header-file",
        action="append",
        default=[],
        metavar="FILE",
        help="'Name: value' lines added to every forwarded request, on the host side; the way"
        " to pass credentials (e.g. --header-file <(printf 'Authorization: Bearer %%s' \"$KEY\"))",
    )
    run_p.add_argument(
        "--header",
        type=parse_header,
        action="append",
        default=[],
        help="one 'Name: value' header, like --header-file; it shows in the host's process"
        " list, so never use it for a secret",
    )
    run_p.add_argument(
        "--ro",
        action="append",
        default=[],
        metavar="PATH",
        help="show a host path read-only inside, at the same place (repeatable)",
    )
    run_p.add_argument(
        "--rw",
        action="append",
        default=[],
        metavar="PATH",
        help="show a host path writable inside, at the same place (repeatable)",
    )
    run_p.add_argument(
        "--hide-cwd",
        action="store_true",
        help="do not show the current directory; CMD then runs in /tmp/work",
    )
    run_p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=300.0,
        help="seconds an exchange may go without bytes either way (default 300)",
    )
    run_p.add_argument(
        "--timeout", type=_seconds, default=None, help="total seconds per exchange (default: none)"
    )
    run_p.add_argument(
        "--head-timeout",
        type=_seconds,
        default=60.0,  # AgentLimits' (the sandbox side is not imported for help)
        help="seconds an agent's connection may take to send a whole request head; a part"
        " of one then gets 408 (default 60)",
    )
    run_p.add_argument(
        "--max-body",
        type=_body_bytes,
        default=None,
        metavar="BYTES",
        help="largest request or response body (default: no limit); larger ones get 413",
    )
    run_p.add_argument(
        "--resume-timeout",
        type=_seconds,
        default=30.0,
        help="seconds a broken channel may take to come back before the bridge is down"
        " (default 30)",
    )
    run_p.add_argument(
        "--grace",
        type=_seconds,
        default=5.0,
        help="seconds to drain exchanges in flight when stopping (default 5)",
    )
    run_p.add_argument(
        "--python",
        default="python3",
        help="the sandbox's Python 3.10+ for the sandbox side (default python3 on its PATH)",
    )
    run_p.add_argument("--trace", help="record every frame to this file (read it with decode)")
    run_p.add_argument("-v", "--verbose", action="store_true", help="print the summary live")
    run_p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")

    demo_p = commands.add_parser("demo", help="the whole bridge end to end, with nothing else")
    demo_p.add_argument("--sandbox", choices=providers.names(), default="auto")

    bench_p = commands.add_parser(
        "bench", help="measure direct, bridged and a polling baseline side by side"
    )
    bench_p.add_argument(
        "--quick", action="store_true", help="every scenario, small (about a minute)"
    )
    bench_p.add_argument("--json", help="write every figure and the machine to this file")
    bench_p.add_argument("--plot", help="write latency and streaming plots to this PNG")
    bench_p.add_argument("--bridges", type=int, help="bridges for the scale scenario")
    bench_p.add_argument("--sandbox", choices=providers.names(isolated_only=True), default="auto")
    bench_p.add_argument(
        "--only", metavar="NAMES", help="comma-separated scenarios to run (default: all)"
    )

    decode_p = commands.add_parser("decode", help="print a --trace file, one line per frame")
    decode_p.add_argument("trace")

    args = parser.parse_args(argv)
    if args.command_name == "run":
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        return run(args)
    if args.command_name == "demo":
        from .demo import run_demo

        try:
            return eventloop.run(run_demo, args.sandbox)
        except BridgeError as exc:
            return _error(str(exc))
    if args.command_name == "decode":
        from .traces import decode

        try:
            for line in decode(args.trace):
                print(line)
        except BridgeError as exc:
            return _error(str(exc))
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
