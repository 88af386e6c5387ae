"""The core does no I/O and reads no clock: nothing in its import graph may."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import bridgeproto

FORBIDDEN = {
    "asyncio",
    "anyio",
    "socket",
    "subprocess",
    "threading",
    "time",
    "os",
    "selectors",
    "trio",
    "io",
    "datetime",
    "random",
    "select",
    "signal",
    "multiprocessing",
}
CORE = pathlib.Path(bridgeproto.__file__).parent


def imported(path: pathlib.Path) -> list[str]:
    """The absolute imports of a module's source, by module name."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_core_sources_import_nothing_forbidden() -> None:
    offenders = [
        f"{path.name}: {name}"
        for path in sorted(CORE.glob("*.py"))
        for name in imported(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert offenders == []


def test_importing_the_core_loads_no_io_module() -> None:
    # A fresh interpreter, so what other tests imported does not count. The
    # interpreter loads a few of these (os, io) at start-up and attrs loads
    # threading, so compare what is loaded before and after the core itself.
    probe = (
        "import sys, attrs; before = set(sys.modules); import bridgeproto; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {m.split(".")[0] for m in loaded} & FORBIDDEN == set()
    assert "bridgeproto._connection" in loaded  # the probe did see the core load


def test_the_protocol_layer_does_not_load_the_http_layer() -> None:
    probe = (
        "import sys, bridgeproto, bridgeproto.wire; "
        "print('h11' in sys.modules, 'bridgeproto._http' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
    import bridgeproto.http  # noqa: F401  (and the layer above does load it)

    assert "h11" in sys.modules


def test_the_core_tests_use_the_core_alone() -> None:
    """tests/core mirrors the purity rule: its tests import the core and test
    libraries, never the adapters or the adapters' test helpers, so the
    core's suite runs (and is mutation-tested) on the core alone."""
    here = pathlib.Path(__file__).parent
    adapters_helpers = {path.stem for path in (here.parent / "adapters").glob("*.py")}
    offenders = [
        f"{path.name} imports {name}"
        for path in sorted(here.glob("*.py"))
        for name in imported(path)
        if name.split(".")[0] == "bridgeproto_adapters" or name.split(".")[0] in adapters_helpers
    ]
    assert offenders == []
