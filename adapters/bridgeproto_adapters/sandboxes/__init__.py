"""Ways into a sandbox: run a command, read and write files, start a live process.

One module per family of backends:

- ``base``: the ``SandboxClient`` and ``LiveProcess`` protocols, their
  errors, ``check_result``, ``FilesThroughRun`` (files through ``run``),
  ``PipedProcess`` and ``HostCommandSandbox``, the base of the backends
  below that enter the sandbox by running a host command;
- ``offline``: ``BwrapSandbox`` and ``UnshareSandbox``, offline sandboxes on
  this machine that hold against the code inside them (``views``: what
  they show of the host);
- ``local``: ``LocalSandbox`` (no isolation, only when asked for by name)
  and ``CommandPrefixSandbox`` (``docker exec -i ID``, ``kubectl exec -i POD
  --``, ``ssh HOST``);
- ``harness``: ``HarnessSandbox``, for harness clients with
  ``execute_command``, ``read_file`` and ``upload_bytes`` (no live process);
- ``simulated``: ``SimulatedProvider``, a harness-style client over a real
  sandbox with the latency and faults of a remote provider (tests, benchmark).

``bridgeproto_adapters.providers`` names them for ``--sandbox NAME``.
"""

from .base import (
    Command,
    CommandResult,
    CommandTimeout,
    FilesThroughRun,
    HostCommandSandbox,
    LiveProcess,
    NotSupported,
    PipedProcess,
    SandboxClient,
    SandboxError,
    SandboxUnavailable,
    check_result,
    stop_process,
)
from .harness import CommandOutput, HarnessClient, HarnessSandbox
from .local import CommandPrefixSandbox, LocalSandbox
from .offline import BwrapSandbox, UnshareSandbox
from .simulated import Faults, SimulatedProvider

__all__ = [
    "BwrapSandbox",
    "Command",
    "CommandOutput",
    "CommandPrefixSandbox",
    "CommandResult",
    "CommandTimeout",
    "Faults",
    "FilesThroughRun",
    "HarnessClient",
    "HarnessSandbox",
    "HostCommandSandbox",
    "LiveProcess",
    "LocalSandbox",
    "NotSupported",
    "PipedProcess",
    "SandboxClient",
    "SandboxError",
    "SandboxUnavailable",
    "SimulatedProvider",
    "UnshareSandbox",
    "check_result",
    "stop_process",
]
