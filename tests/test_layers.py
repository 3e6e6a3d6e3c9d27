"""Imports flow one way: ``plugins/`` and ``telephony/`` sit below the worker and never import
it (nor ``infra``, which the worker drives). Every import statement counts, including those
inside functions, so a lazy import cannot slip an upward dependency past the test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER = ("plugins", "telephony")
ABOVE = {"worker", "infra", "tests", "benchmarks"}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in one file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_packages(path):
            if name in ABOVE:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_never_import_the_worker(package: str) -> None:
    assert upward_imports(package) == []


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The scanner itself: an import of the worker inside a function is found."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from worker.settings import Settings\n")
    assert (4, "worker") in imported_packages(f)
