"""Lists of named declarations in the catalog (contact policies, volume constraints): the
same shape rules for each, so a catalog author gets the same messages for both."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, Protocol, TypeVar

from libs.errors import Violations


class Named(Protocol):
    @property
    def name(self) -> str: ...


NamedT = TypeVar("NamedT", bound=Named)
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def open_declaration(
    raw: Any, where: str, problems: Violations, *, keys: Collection[Any], shape: str
) -> tuple[str, str] | None:
    """The checks every named declaration starts with: a mapping (``shape`` says what it
    holds), a valid ``name``, no unknown key. Returns (name, where naming it), or None when
    ``raw`` is not a mapping at all."""
    if not isinstance(raw, dict):
        problems.add(where, f"must be a mapping ({shape})")
        return None
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"{where} ({name})"
    if not isinstance(name, str) or not NAME.match(name):
        problems.add(f"{where}.name", "required: lower-case letters, digits, _ . - (max 64)")
    for key in sorted(set(raw) - set(keys), key=str):
        # YAML 1.1 reads a bare `on:` key as true.
        hint = " (write only_on: YAML reads `on` as true)" if key is True else ""
        problems.add(f"{where}.{key}", f"unknown field{hint}")
    return (name if isinstance(name, str) else ""), where


def parse_named_list(
    raw: Any,
    where: str,
    problems: Violations,
    parse_one: Callable[[Any, str, Violations], NamedT | None],
    *,
    what: str,
    limit: int,
) -> tuple[NamedT, ...]:
    """Validate a list of ``what`` at ``where``: a list, at most ``limit`` items, each parsed by
    ``parse_one`` at ``<where>[<index>]``, names unique at this level."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add(where, f"must be a list of {what}")
        return ()
    if len(raw) > limit:
        problems.add(where, f"at most {limit} {what}")
    parsed: list[NamedT] = []
    for index, item in enumerate(raw[:limit]):
        one = parse_one(item, f"{where}[{index}]", problems)
        if one is None:
            continue
        if any(p.name == one.name for p in parsed):
            problems.add(f"{where}[{index}] ({one.name}).name", "declared twice at this level")
            continue
        parsed.append(one)
    return tuple(parsed)
