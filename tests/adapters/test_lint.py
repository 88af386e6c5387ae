"""mypy (strict) and ruff are part of the suite, so CI keeps them clean."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[2]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_mypy_strict_over_src_and_adapters() -> None:
    result = run(sys.executable, "-m", "mypy")  # files and strictness come from mypy.ini
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or "ruff"
    result = run(ruff, "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(ruff, "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_py_typed_ships_with_both_packages() -> None:
    assert (ROOT / "src/bridgeproto/py.typed").exists()
    assert (ROOT / "adapters/bridgeproto_adapters/py.typed").exists()
