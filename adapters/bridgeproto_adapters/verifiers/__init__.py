"""verifiers integration: rollouts in offline sandboxes reach their host over
a bridge (docs/verifiers.md).

- ``BridgedRuntime(inner)``: any verifiers runtime, its host URLs carried by
  bridges, so verifiers sees a local runtime and opens no tunnel;
- ``OfflineRuntime(...)``: a verifiers runtime on this project's offline
  sandboxes (bubblewrap, else unshare), live processes optional;
- ``RuntimeSandbox(runtime)``: any verifiers runtime as a bridgeproto
  ``SandboxClient``, for harnesses that use its runtimes alone.

The two runtime classes subclass verifiers' ``Runtime``, so they are built
the first time they are asked for, which needs verifiers 0.4 installed
(``pip install 'bridgeproto[verifiers]'``); ``RuntimeSandbox`` needs nothing
of verifiers.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

import attrs

from .sandbox import RuntimeLiveProcess, RuntimeSandbox

if TYPE_CHECKING:
    from .bridged import BridgedRuntimeBase as BridgedRuntime
    from .offline import OfflineRuntimeBase as OfflineRuntime

__all__ = ["BridgedRuntime", "OfflineRuntime", "RuntimeLiveProcess", "RuntimeSandbox"]


@attrs.frozen
class _Types:
    program_result: Any
    sandbox_error: Any
    subprocess_config: Any
    subprocess_info: Any


@functools.cache
def _classes() -> dict[str, type]:
    try:
        runtimes = importlib.import_module("verifiers.v1.runtimes")
        errors = importlib.import_module("verifiers.v1.errors")
    except ImportError as exc:
        raise ImportError(
            f"bridgeproto's verifiers runtimes need verifiers 0.4 ({exc});"
            " install it with: pip install 'bridgeproto[verifiers]'"
        ) from exc
    from .bridged import BridgedRuntimeBase
    from .offline import OfflineRuntimeBase

    types = _Types(
        runtimes.ProgramResult,
        errors.SandboxError,
        runtimes.SubprocessConfig,
        runtimes.SubprocessRuntimeInfo,
    )
    built: dict[str, type] = {}
    for name, logic in (
        ("BridgedRuntime", BridgedRuntimeBase),
        ("OfflineRuntime", OfflineRuntimeBase),
    ):
        namespace = {"__module__": __name__, "__doc__": logic.__doc__, "_vf": types}
        built[name] = type(name, (logic, runtimes.Runtime), namespace)
    return built


def __getattr__(name: str) -> Any:
    if name in ("BridgedRuntime", "OfflineRuntime"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
