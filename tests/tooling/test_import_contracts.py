"""The import contracts of design.md (``[tool.importlinter]`` in pyproject.toml), checked with ``lint-imports``.

Each contract is checked on the tree as it is, and each is shown to fail when one forbidden import is added to a
copy of the tree, so a contract that cannot fail (a typo in a module name, a too-wide ignore) is caught here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = (
    "screener-never-imports-connectors",
    "pure-core-no-io",
    "events-state-no-paths",
    "connectors-use-the-sdk",
)
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` run in ``cwd`` (its pyproject.toml, its packages first on the path), no cache."""
    args = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("contract", CONTRACTS)
def test_the_tree_keeps_the_contract(contract: str) -> None:
    result = lint_imports(ROOT, contract)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and pyproject.toml in a temporary folder, to add a forbidden import to."""
    dest = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("screener", "connectors"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


@pytest.mark.parametrize(
    ("contract", "module", "line", "edge"),
    [
        ("screener-never-imports-connectors", "screener/cli.py", "import connectors.hl7v2", "connectors.hl7v2"),
        ("pure-core-no-io", "screener/rules/screen.py", "import kafka", "kafka"),
        ("pure-core-no-io", "screener/events.py", "import sqlite3", "sqlite3"),
        ("pure-core-no-io", "screener/rules/compiler.py", "from screener import bus", "screener.bus"),
        ("events-state-no-paths", "screener/events.py", "from pathlib import Path", "pathlib"),
        (
            "connectors-use-the-sdk",
            "connectors/fhir/__init__.py",
            "from screener.engine import Engine",
            "screener.engine",
        ),
        ("connectors-use-the-sdk", "connectors/hl7v2/parse.py", "import screener.settings", "screener.settings"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tree_copy: Path, contract: str, module: str, line: str, edge: str
) -> None:
    """One import appended to a real module of the copy: the contract breaks and the report names that import."""
    path = tree_copy / module
    original = path.read_text(encoding="utf-8")
    path.write_text(f"{original}\n{line}\n", encoding="utf-8")
    try:
        result = lint_imports(tree_copy, contract)
    finally:
        path.write_text(original, encoding="utf-8")
    importer = module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert result.returncode == 1, result.stdout[-4000:]
    assert "0 kept, 1 broken" in result.stdout
    assert f"{importer} -> {edge} (l.{original.count(chr(10)) + 2})" in result.stdout, result.stdout[-4000:]
