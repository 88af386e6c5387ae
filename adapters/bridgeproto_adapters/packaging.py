"""The sandbox side as one zipapp, built from the code installed here.

Host and sandbox always run the same code because the archive is made from
the modules this process imports, at run time, and named by the hash of its
contents (so it is built once per version and uploaded once per sandbox).
Only pure-Python packages go in; the sandbox needs nothing but Python 3.10+.
Each module goes in with its bytecode for this Python beside it, which a
sandbox Python of the same version imports without compiling (about 70 ms
of every start), stored uncompressed (15-20 ms of CPU more); another
version ignores it and compiles the source.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import marshal
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Sequence

# The sandbox side's import closure. Optional ones are skipped when absent.
PACKAGES = ("bridgeproto", "bridgeproto_adapters", "h11", "anyio", "attr", "attrs")
OPTIONAL = ("sniffio", "typing_extensions", "exceptiongroup")
# What the sandbox never runs, left out: the archive is uploaded to every
# sandbox. The host's command line and bench (the rest of the adapters stays:
# a registered transport's module, which the daemon imports, may import any
# of them), anyio's trio backend and test plugin. (anyio needs idna only for
# a host name that is not ASCII, which the sandbox side never dials.)
_HOST_MODULES = ("bench/", "verifiers/", "cli.py", "run.py", "demo.py")
HOST_ONLY = (
    *(f"bridgeproto_adapters/{name}" for name in _HOST_MODULES),
    "anyio/_backends/_trio.py",
    "anyio/pytest_plugin.py",
)
# The archive starts where the installed command does (``entry``).
MAIN = b"""import sys
from bridgeproto_adapters.entry import main
sys.exit(main())
"""


def _sources(name: str) -> list[tuple[str, pathlib.Path]]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{name} is not installed; reinstall bridgeproto")
    origin = pathlib.Path(spec.origin)
    if spec.submodule_search_locations is None:  # a single-file module
        return [(origin.name, origin)]
    root = origin.parent
    return sorted(
        (str(path.relative_to(root.parent)), path)
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix in (".py", ".typed")
        and "__pycache__" not in path.parts
        and not str(path.relative_to(root.parent)).startswith(HOST_ONLY)
    )


@functools.cache
def _contents(extra: tuple[str, ...] = ()) -> tuple[list[tuple[str, bytes]], str]:
    """Every file of the archive (name, bytes) and their content hash (hex).

    Read once per process: the installed code does not change under it, and
    a harness may open hundreds of bridges.
    """
    files: list[tuple[str, pathlib.Path]] = []
    for name in PACKAGES:
        files += _sources(name)
    for name in dict.fromkeys(module.partition(".")[0] for module in extra):
        if name not in PACKAGES + OPTIONAL:  # a transport's package of its own
            files += _sources(name)
    for name in OPTIONAL:
        if importlib.util.find_spec(name) is not None:
            files += _sources(name)
    digest = hashlib.sha256(MAIN + importlib.util.MAGIC_NUMBER)  # bytecode is for this Python
    contents = [("__main__.py", MAIN)]
    for arcname, path in files:
        data = path.read_bytes()
        digest.update(arcname.encode() + b"\0" + data)
        contents.append((arcname, data))
    return contents, digest.hexdigest()[:16]


def _bytecode(arcname: str, source: bytes) -> bytes:
    """A ``.pyc`` that is never checked against its source (PEP 552: hash
    based, unchecked): the archive's sources never change under it."""
    code = compile(source, arcname, "exec", dont_inherit=True)
    flags = (0b01).to_bytes(4, "little")
    return (
        importlib.util.MAGIC_NUMBER
        + flags
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )


def build_zipapp(cache_dir: str | None = None, extra: Sequence[str] = ()) -> pathlib.Path:
    """Build (or reuse) the archive in ``cache_dir``; returns its path.
    ``extra``: modules it holds besides the sandbox side's own (a registered
    transport's, which may live in a package of its own), whole packages."""
    contents, digest = _contents(tuple(sorted(extra)))
    directory = pathlib.Path(cache_dir or os.path.join(tempfile.gettempdir(), "bridgeproto-cache"))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"bridgeproto-{digest}.pyz"
    if not target.exists():  # compress only what is not cached yet
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for arcname, data in contents:
                archive.writestr(arcname, data)
                if arcname.endswith(".py") and arcname != "__main__.py":
                    # Stored, not compressed: every start reads them, and
                    # inflating them was a tenth of the daemon's imports.
                    archive.writestr(arcname + "c", _bytecode(arcname, data), zipfile.ZIP_STORED)
        partial = target.with_suffix(".partial")
        partial.write_bytes(buffer.getvalue())
        partial.replace(target)
    return target
