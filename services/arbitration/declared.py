"""Lists of named declarations in the catalog (contact policies, volume constraints): the
same shape rules for each, so a catalog author gets the same messages for both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from libs.errors import Violations


class Named(Protocol):
    @property
    def name(self) -> str: ...


NamedT = TypeVar("NamedT", bound=Named)


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
