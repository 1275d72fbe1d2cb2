"""The import direction of ARCHITECTURE.md, checked on the source: formats -> policy ->
build/verify/node/attest -> cli; only tools.py runs programs; formats does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "ultraviolet"
LAYER = {
    "errors": 0,
    "formats": 1,
    "policy": 2,
    "tools": 2,
    "diskimage": 2,  # read-only mapping of image files, used by build and verify
    "build": 3,
    "verify": 3,
    "node": 3,
    "attest": 3,
    "testbed": 3,
    "cli": 4,
}
FORBIDDEN_IN_FORMATS = {
    "subprocess",
    "os",
    "pathlib",
    "shutil",
    "socket",
    "mmap",
    "logging",
    "ultraviolet.tools",
}


def _modules() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def _layer_of(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else "errors"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SOURCE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    own = _layer_of(path)
    for name in _imports(path):
        if not name.startswith("ultraviolet."):
            continue
        target = name.split(".")[1]
        if target in LAYER and target != own:
            assert LAYER[target] < LAYER[own] or own == "cli", f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sorted((SOURCE / "formats").rglob("*.py")), ids=lambda p: p.name)
def test_formats_are_pure(path: Path) -> None:
    imported = _imports(path)
    assert not imported & FORBIDDEN_IN_FORMATS, (
        f"{path.name} imports {imported & FORBIDDEN_IN_FORMATS}"
    )
    assert "open(" not in path.read_text()


def test_only_tools_runs_programs() -> None:
    for path in _modules():
        if path.name == "tools.py" and path.parent == SOURCE:
            continue
        assert "subprocess" not in _imports(path), f"{path} runs programs itself"
