"""``bridgeproto run``: a command in an offline sandbox, with the bridge up.

Every way a run can end, and what it does:

- **The command exits.** The bridge drains and stops; ``run`` exits with the
  command's status.
- **SIGINT or SIGTERM.** The bridge takes no new requests and drains those in
  flight within the grace period (agents get their answers, or 503
  ``shutting-down``); then the command and everything else in the sandbox is
  stopped. Exit 130 or 143.
- **A second signal.** The sandbox is killed at once, which ends the bridge
  too; same exit status.
- **The bridge goes down** (the sandbox side died, its link broke): one line
  on stderr says why; the command has the grace period to finish on its own,
  then it is stopped and ``run`` exits 3.

However it ends, everything the run made (the sandbox and its directory) is
removed before ``run`` exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

import anyio
import anyio.abc

import bridgeproto as bp

from .bridge_settings import BridgeSettings
from .errors import BridgeError
from .foreground import Foreground, start_foreground
from .headers import read_header_file
from .launch import Bridge, open_bridge, parse_upstream
from .providers import open_sandbox, provider
from .sandboxes import HostCommandSandbox, SandboxClient
from .session import Session, first_of
from .settings import AgentLimits
from .traces import TraceWriter
from .transports import registry
from .transports.mailbox_options import MailboxOptions

EXIT_BRIDGE_DOWN = 3


def say(message: str) -> None:
    print(f"bridgeproto: {message}", file=sys.stderr, flush=True)


def expose_cwd(args: argparse.Namespace) -> None:
    """Show the current directory read-only and run the command there, as
    the user expects of ``run -- python3 my_agent.py``; unless told not to, or
    it would show the whole host or the host's shared temp directory."""
    cwd = os.path.realpath(os.getcwd())
    args.cwd = None
    if args.hide_cwd:
        return
    shared = os.path.realpath(tempfile.gettempdir())
    if cwd == "/" or shared == cwd or shared.startswith(cwd + "/"):
        say(
            f"the current directory {cwd} is not shown to the sandbox (it holds the host's"
            " shared files); use --ro PATH for what the command needs"
        )
        return
    if provider(args.sandbox).isolated:  # (one that is not sees the whole host)
        args.ro.append(cwd)
    args.cwd = cwd


def refuse_if_exposed(path: str, option: str, exposed: Sequence[str]) -> None:
    """Host-only files (credentials, the trace) must not lie where the sandbox reads."""
    real = os.path.realpath(path)
    for shown in exposed:
        root = os.path.realpath(shown)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            raise BridgeError(
                f"{option} {path} lies in {root}, which the sandbox can read; keep it"
                " elsewhere (or pass --hide-cwd)"
            )


def _private_file(path: str) -> TextIO:
    """A new file only this user can read."""
    try:
        return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    except OSError as exc:
        raise BridgeError(f"cannot write {path}: {exc.strerror}") from None


async def upstream_reachable(url: str) -> str | None:
    host, port, _ = parse_upstream(url)
    try:
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp(host, port)
        await stream.aclose()
    except (OSError, TimeoutError) as exc:
        return f"cannot reach the upstream {host}:{port} ({exc}); is it running?"
    return None


async def run_command(args: argparse.Namespace) -> int:
    """Check what can be checked before anything starts, then run."""
    expose_cwd(args)
    headers = list(args.header)
    for path in args.header_file:
        refuse_if_exposed(path, "--header-file", args.ro + args.rw)
        headers += read_header_file(path)
    if args.trace:
        refuse_if_exposed(args.trace, "--trace", args.ro + args.rw)
    unreachable = await upstream_reachable(args.upstream) if args.upstream else None
    if unreachable:
        raise BridgeError(unreachable)
    return await Run(args, headers).main()


class Run:
    """One ``bridgeproto run``; ``main`` returns the exit status."""

    def __init__(self, args: argparse.Namespace, headers: list[tuple[bytes, bytes]]) -> None:
        self.args = args
        self.headers = headers
        self.signal: int | None = None  # the first signal that asked us to stop
        self.stop_requested = anyio.Event()
        self.hard_stop = anyio.CancelScope()  # cancelled when stopping at once
        self.sandbox: SandboxClient | None = None
        self.command: Foreground | None = None

    async def main(self) -> int:
        code: int | None = None
        error: BridgeError | None = None  # raised after the task group, not inside it
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals, signals)
                try:
                    with self.hard_stop:
                        code = await self._run()
                except BridgeError as exc:
                    error = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._stop_command()
                        if self.sandbox is not None:
                            await self.sandbox.aclose()
                    tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if self.signal is not None:
            return 128 + self.signal
        assert code is not None
        return code

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.signal is None:
                self.signal = signum
                if self.command is None:  # still starting: nothing to drain
                    say(f"{name}: stopping")
                    self.hard_stop.cancel()
                else:
                    say(f"{name}: draining the exchanges in flight; a second signal stops at once")
                    self.stop_requested.set()
            else:
                say(f"{name}: stopping at once")
                self.hard_stop.cancel()
                if isinstance(self.sandbox, HostCommandSandbox):
                    self.sandbox.kill()  # everything inside; the bridge ends with it
                if self.command is not None:
                    self.command.signal(signal.SIGKILL)

    async def _run(self) -> int:
        args = self.args
        self.sandbox, note = await open_sandbox(args.sandbox, ro=args.ro, rw=args.rw)
        say(note)
        transport = registry.choose(args.transport, live_processes=self.sandbox.live_processes)
        config = bp.Config(
            limits=transport.limits,
            idle_timeout=args.idle_timeout,
            exchange_timeout=args.timeout,
            shutdown_grace=args.grace,
            max_body_bytes=args.max_body,
        )
        trace = _private_file(args.trace) if args.trace else None
        try:
            settings = BridgeSettings(
                headers=self.headers, listen=args.listen, config=config, python=args.python,
                tracer=TraceWriter(trace) if trace else None,
                on_channel=say if args.verbose else None, resume_timeout=args.resume_timeout,
                limits=AgentLimits(head_timeout=args.head_timeout),
                transport=transport, mailbox=MailboxOptions(
                    wait=args.mailbox_wait, batch_bytes=args.mailbox_batch,
                    max_calls=args.mailbox_calls, upload_input=args.mailbox_input == "upload",
                ),
            )  # fmt: skip
            async with open_bridge(self.sandbox, args.upstream, settings) as bridge:
                exposed = [
                    f"port {port} inside is at {await bridge.expose(port, host_port)}"
                    for host_port, port in args.expose
                ]
                for line in exposed:  # before CMD starts, so the caller can wait for it
                    say(line)
                self.command = start_foreground(self.sandbox, args.command, bridge.env, args.cwd)
                code = await self._supervise(bridge, self.command)
            print(bridge.session.stats.summary(), file=sys.stderr)
            for line in exposed:
                say(line.replace(" is at ", " was at "))
            return code
        finally:
            if trace:
                trace.close()

    async def _supervise(self, bridge: Bridge, command: Foreground) -> int:
        exited = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def wait_for_command() -> None:
                await command.wait()
                exited.set()

            tg.start_soon(wait_for_command)
            if self.args.verbose:
                tg.start_soon(_live_summary, bridge.session)
            which = await first_of(exited, self.stop_requested, bridge.session.finished)
            if which == 1:  # a signal: drain (a second signal cancels this)
                await bridge.session.close()
            elif which == 2 and not exited.is_set():
                failure = bridge.session.failure
                why = failure.reason if failure else "the sandbox side ended the session"
                say(f"the bridge went down: {why}")
                with anyio.move_on_after(self.args.grace):
                    await exited.wait()
            tg.cancel_scope.cancel()
        if exited.is_set():
            assert command.returncode is not None
            return command.returncode
        return EXIT_BRIDGE_DOWN

    async def _stop_command(self) -> None:
        if self.command is not None:
            await self.command.stop()


async def _live_summary(session: Session, interval: float = 5.0) -> None:
    while True:
        await anyio.sleep(interval)
        print(session.stats.summary(), file=sys.stderr)
