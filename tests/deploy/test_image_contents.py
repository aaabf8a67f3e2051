"""The serving image holds the hub and nothing that drives it from outside: tools/ (benchmarks,
data generator, fault runs) and tests/ never reach it, by the Dockerfile's COPY lines and by
the build context .dockerignore leaves."""

from __future__ import annotations

from pathlib import Path

import dockerfile
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# What `pip install .` builds the serving image from.
SHIPPED = {"pyproject.toml", "README.md", "libs", "services"}
KEPT_OUT = ("tools", "tests")


def copied_from_context(text: str) -> list[str]:
    """The build-context paths every COPY and ADD of ``text`` takes (not ``--from`` a stage)."""
    sources: list[str] = []
    for command in dockerfile.parse_string(text):
        if command.cmd.upper() not in ("COPY", "ADD"):
            continue
        if any(flag.startswith("--from") for flag in command.flags):
            continue
        *found, _destination = command.value
        sources += [source.removeprefix("./").rstrip("/") or "." for source in found]
    return sources


def refused(sources: list[str]) -> list[str]:
    """Sources that are not one of the shipped paths (a parent such as "." or a glob would
    take tools/ or tests/ along)."""
    return [source for source in sources if source.split("/")[0] not in SHIPPED]


def test_the_dockerfile_copies_only_the_shipped_paths() -> None:
    sources = copied_from_context(DOCKERFILE.read_text())
    assert {source.split("/")[0] for source in sources} == SHIPPED
    assert refused(sources) == []


@pytest.mark.parametrize(
    "line",
    ["COPY . .", "COPY ./ /src/", "COPY tools ./tools", "ADD tests /src/tests", "COPY * ./"],
)
def test_a_copy_that_takes_tools_or_tests_along_is_refused(line: str) -> None:
    text = DOCKERFILE.read_text().replace(
        "COPY services ./services", f"{line}\nCOPY services ./services"
    )
    assert refused(copied_from_context(text)) != []


def test_the_build_context_leaves_tools_and_tests_out() -> None:
    # .dockerignore excludes everything first, then lets back only what is shipped: a new
    # top-level folder stays out of the context (and of the image) unless it is named here.
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].strip("/") for rule in rules if rule.startswith("!")}
    assert allowed <= SHIPPED
    assert not any(rule.lstrip("!").startswith(KEPT_OUT) for rule in rules)
