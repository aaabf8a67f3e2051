"""The import graph of libs/, services/ and tools/ (grimp: every import statement, those
under TYPE_CHECKING and inside functions included): no cycle among the modules of libs/ and
services/, and nothing that ships in the serving image imports tools/, which it leaves out."""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

SHIPPED = ("libs", "services")
# The CLI wires the tools' commands (benchmarks, datagen, fault runs) and imports each one
# when its command runs; without tools/ that command says so (test_cli_without_tools.py).
WIRES_TOOLS = "services.cli"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("libs", "services", "tools", cache_dir=None)


def _shipped(module: str) -> bool:
    return module.split(".")[0] in SHIPPED


def cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One cycle through each import of a shipped module that is part of one: the import
    a -> b, then the shortest chain from b back to a."""
    found: dict[frozenset[str], tuple[str, ...]] = {}
    for importer in sorted(m for m in graph.modules if _shipped(m)):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if not _shipped(imported):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycle = (importer, *back)
                found.setdefault(frozenset(cycle), cycle)
    return list(found.values())


def test_no_import_cycle_among_libs_and_services(graph: grimp.ImportGraph) -> None:
    assert [" -> ".join(cycle) for cycle in cycles(graph)] == []


def test_a_cycle_is_found(graph: grimp.ImportGraph) -> None:
    # The check itself: an import from volume back to exploration closes a cycle (the one
    # arbitration had: exploration -> volume, and volume -> exploration for its types).
    graph.add_import(
        importer="services.arbitration.volume",
        imported="services.arbitration.exploration",
    )
    try:
        found = cycles(graph)
    finally:
        graph.remove_import(
            importer="services.arbitration.volume",
            imported="services.arbitration.exploration",
        )
    assert any(
        {"services.arbitration.volume", "services.arbitration.exploration"} <= set(cycle)
        for cycle in found
    )


def test_only_the_cli_imports_tools(graph: grimp.ImportGraph) -> None:
    importers = {
        importer
        for importer in graph.modules
        if _shipped(importer)
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.split(".")[0] == "tools"
    }
    assert importers <= {WIRES_TOOLS}


def test_the_cli_imports_no_tool_until_a_tool_command_runs() -> None:
    code = (
        "import sys, services.cli; print(sorted(m for m in sys.modules if m.startswith('tools')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
