"""The serving image leaves tools/ out: there a tool's command says so, never a traceback."""

from __future__ import annotations

import sys

import pytest

from services import cli

TOOL_COMMANDS = [
    ["bench"],
    ["bench-ingest"],
    ["bench-identity"],
    ["bench-login"],
    ["bench-overload"],
    ["bench-apply"],
    ["bench-stream"],
    ["datagen", "--database-url", "sqlite://"],
    ["faults"],
]


@pytest.fixture
def without_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "tools" or m.startswith("tools.")]:
        monkeypatch.delitem(sys.modules, name)
    # None in sys.modules: importing the package fails as when it is not installed.
    monkeypatch.setitem(sys.modules, "tools", None)


@pytest.mark.parametrize("argv", TOOL_COMMANDS, ids=lambda argv: argv[0])
@pytest.mark.usefixtures("without_tools")
def test_a_tool_command_without_tools_names_what_is_missing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"nextbest {argv[0]}: a tool of the source tree (tools/)")
    assert "pip install -e ." in error


@pytest.mark.usefixtures("without_tools")
def test_the_serving_commands_do_not_need_tools(capsys: pytest.CaptureFixture[str]) -> None:
    # The parser of every command is built without importing tools/ (help lists them all).
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert "bench-apply" in capsys.readouterr().out


def test_an_import_error_of_anything_else_is_not_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A missing dependency of a tool is a real error: only tools/ itself missing is explained.
    for name in [m for m in sys.modules if m.startswith("tools.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ModuleNotFoundError) as error:
        cli.main(["bench-apply"])
    assert error.value.name == "numpy"
