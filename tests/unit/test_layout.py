"""The layout's dependency rules, read from the source (docs/architecture.md, "Layout").

The orchestrator depends on the ports it declares and on libs/ only: what it shares with
another service (the types crossing a port, their wire form, the fallback ranking, the
decision snapshot) lives in libs/. The composition root (services/app.py) is the one place
that wires the services together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; ``from a import b`` gives ``a.b``
    too, since ``b`` may be a module), with the line of the import."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's own package
                package = path.relative_to(ROOT).parent.parts
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(package: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.startswith(forbidden) and not module.startswith(allowed):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return problems


def test_the_orchestrator_imports_no_other_service() -> None:
    assert violations("services/orchestrator", ("services.orchestrator",), ("services",)) == []


def test_libs_import_no_service() -> None:
    assert violations("libs", (), ("services", "tools")) == []


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    """A forbidden import written any way Python allows is reported (else the two checks
    above could pass on a tree that breaks the rule)."""
    written = tmp_path / "written.py"
    written.write_text(
        "import services.context.model\n"
        "from services.scoring import model\n"
        "from services import identity\n"
        "def later():\n"
        "    from services.learning.snapshot import x\n"
    )
    modules = {module for _, module in imported_modules(written)}
    assert {
        "services.context.model",
        "services.scoring.model",
        "services.identity",
        "services.learning.snapshot",
    } <= modules


@pytest.mark.parametrize(
    "package", ["services/orchestrator", "libs/contracts"], ids=["orchestrator", "contracts"]
)
def test_the_checked_packages_exist(package: str) -> None:
    assert list((ROOT / package).glob("*.py")), f"{package} moved: update this test"
