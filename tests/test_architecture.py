"""The shape of the code, enforced: pure modules do no I/O, and the code stays lint-clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE_MODULES = [
    *sorted((ROOT / "tlsgate" / "protocol").glob("*.py")),
    ROOT / "tlsgate" / "sniff.py",
    ROOT / "tlsgate" / "config" / "model.py",
    ROOT / "tlsgate" / "config" / "parse.py",
    ROOT / "tlsgate" / "config" / "walk.py",
    ROOT / "tlsgate" / "config" / "tls_rules.py",
    ROOT / "tlsgate" / "tls" / "selection.py",
    ROOT / "tlsgate" / "observe" / "events.py",
    ROOT / "tlsgate" / "net" / "listener_diff.py",  # the reload diff: pure despite its package
    ROOT / "tlsgate" / "service" / "socket_match.py",  # socket activation's matching rule
]
IO_MODULES = {"trio", "socket", "ssl", "structlog", "prometheus_client", "time", "tlsgate.net"}
# STYLE.md asks for ~400; the TLS stream carries trio-style long comments on why, hence 600.
LINTED_DIRS = [name for name in ("tlsgate", "tests", "bench") if (ROOT / name).is_dir()]
MODULE_LINE_BUDGET = 600


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_pure_module_imports_nothing_that_does_io(path: Path) -> None:
    forbidden = {
        name
        for name in _imports(path)
        for io_module in IO_MODULES
        if name == io_module or name.startswith(io_module + ".")
    }
    assert not forbidden, f"{path.name} imports {sorted(forbidden)}"


def test_modules_stay_within_the_line_budget() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "tlsgate").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MODULE_LINE_BUDGET
    }
    assert not too_long


def test_ruff_is_clean() -> None:
    pytest.importorskip("ruff", reason="ruff comes with the test extra")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *LINTED_DIRS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    pytest.importorskip("mypy", reason="mypy comes with the test extra")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *LINTED_DIRS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
