"""The house's floors: `receiver/` and `workers/` stand on the core in `carbonhook/` and never
import each other; the core imports neither, nor the command line above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT


def imported_packages(path: Path) -> set[str]:
    """The top of every module path `path` imports (`carbonhook.cli` kept whole)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            found.add(".".join(parts[:2]) if parts[:2] == ["carbonhook", "cli"] else parts[0])
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("receiver", {"workers", "carbonhook.cli"}),
        ("workers", {"receiver", "carbonhook.cli"}),
    ],
)
def test_the_receiver_and_the_workers_never_import_each_other(package: str, forbidden: set[str]):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for path in modules(package)
        if imported_packages(path) & forbidden
    }
    assert offenders == {}


def test_the_core_imports_neither_the_receiver_nor_the_workers_nor_the_command_line():
    core = [
        path
        for path in modules("carbonhook")
        if "cli" not in path.relative_to(ROOT / "carbonhook").parts
        and path.name != "__main__.py"  # `python -m carbonhook` is the command line
    ]
    assert len(core) > 20
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            imported_packages(path) & {"receiver", "workers", "carbonhook.cli"}
        )
        for path in core
        if imported_packages(path) & {"receiver", "workers", "carbonhook.cli"}
    }
    assert offenders == {}


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("from workers.processing import Processor\nimport receiver.app\nfrom carbonhook.cli.bootstrap import x\n")
    assert imported_packages(module) == {"workers", "receiver", "carbonhook.cli"}
