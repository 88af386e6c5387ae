"""The sandbox side as one zipapp, built from the code installed here.

Host and sandbox always run the same code because the archive is made from
the modules this process imports, at run time, and named by the hash of its
contents (so it is built once per version and uploaded once per sandbox).
Only pure-Python packages go in; the sandbox needs nothing but Python 3.10+.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pathlib
import tempfile
import zipfile

# The sandbox side's import closure. Optional ones are skipped when absent.
PACKAGES = ("bridgeproto", "bridgeproto_adapters", "h11", "anyio", "attr", "attrs", "idna")
OPTIONAL = ("sniffio", "typing_extensions", "exceptiongroup")
MAIN = b"import sys\nfrom bridgeproto_adapters.cli import main\nsys.exit(main())\n"


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
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    )


def zipapp_bytes() -> tuple[bytes, str]:
    """The archive and its content hash (hex)."""
    files: list[tuple[str, pathlib.Path]] = []
    for name in PACKAGES:
        files += _sources(name)
    for name in OPTIONAL:
        if importlib.util.find_spec(name) is not None:
            files += _sources(name)
    digest = hashlib.sha256(MAIN)
    contents = []
    for arcname, path in files:
        data = path.read_bytes()
        digest.update(arcname.encode() + b"\0" + data)
        contents.append((arcname, data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("__main__.py", MAIN)
        for arcname, data in contents:
            archive.writestr(arcname, data)
    return buffer.getvalue(), digest.hexdigest()[:16]


def build_zipapp(cache_dir: str | None = None) -> pathlib.Path:
    """Build (or reuse) the archive in ``cache_dir``; returns its path."""
    data, digest = zipapp_bytes()
    directory = pathlib.Path(cache_dir or os.path.join(tempfile.gettempdir(), "bridgeproto-cache"))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"bridgeproto-{digest}.pyz"
    if not target.exists():
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)
    return target
