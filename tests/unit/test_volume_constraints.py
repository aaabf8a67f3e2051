"""Volume constraints: parsing, counters per scope and period, the replica's memory of full
counters, and the choice that moves on to the next best when the pick is capped (fakes)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.contracts.arbitration import CandidateExplanation
from libs.errors import Violations
from services.arbitration.exploration import Selection, choose_with_volume, select
from services.arbitration.model import ActionDefinition, Exploration
from services.arbitration.volume import (
    VolumeConstraint,
    VolumeGate,
    parse_volume_constraints,
    volume_claims,
    volume_constraint_to_document,
)
from tests.unit.fakes import FakeCatalogStore, arbitration_units

NOW = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
DAY = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())


def parse(raw: Any) -> tuple[tuple[VolumeConstraint, ...], list[tuple[str, str]]]:
    problems = Violations()
    constraints = parse_volume_constraints(raw, "volume", problems)
    return constraints, [(v.field, v.description) for v in problems.items]


def test_constraints_parse_with_their_defaults_and_print_back() -> None:
    constraints, problems = parse(
        [
            {"name": "daily_cap", "max": 1000, "per": "1d"},
            {"name": "w", "max": 5, "per": "7d", "scope": "group"},
        ]
    )
    assert problems == []
    assert constraints == (
        VolumeConstraint("daily_cap", 1000, "1d", "action", 86400),
        VolumeConstraint("w", 5, "7d", "group", 7 * 86400),
    )
    assert parse([volume_constraint_to_document(c) for c in constraints])[0] == constraints
    assert parse(None) == ((), [])


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"name": "v", "max": 10, "per": "1d", "every": 1}, ".every", "unknown"),
        ({"name": "v", "max": -1, "per": "1d"}, ".max", "integer"),
        ({"name": "v", "max": 0, "per": "1d"}, ".max", "integer"),
        ({"name": "v", "max": "10", "per": "1d"}, ".max", "integer"),
        ({"name": "v", "per": "1d"}, ".max", "required"),
        ({"name": "v", "max": 10, "per": "daily"}, ".per", "period"),
        ({"name": "v", "max": 10}, ".per", "required"),
        ({"name": "v", "max": 10, "per": "401d"}, ".per", "400d"),
        ({"name": "v", "max": 10, "per": "1d", "scope": "everyone"}, ".scope", "one of"),
        ({"name": "V!", "max": 10, "per": "1d"}, ".name", "required"),
    ],
)
def test_every_bad_field_is_named(raw: dict[str, Any], field: str, words: str) -> None:
    constraints, problems = parse([raw])
    assert constraints == ()
    assert any(f == f"volume[0] ({raw['name']}){field}" and words in d for f, d in problems), (
        problems
    )


def test_a_non_list_a_non_mapping_and_a_name_twice_are_refused() -> None:
    assert parse({"name": "v"})[1] == [("volume", "must be a list of volume constraints")]
    _, problems = parse(
        ["v", {"name": "v", "max": 1, "per": "1h"}, {"name": "v", "max": 2, "per": "1h"}]
    )
    assert [f for f, _ in problems] == ["volume[0]", "volume[2] (v).name"]


def test_claims_name_the_counter_of_each_scope_and_align_periods_on_utc() -> None:
    constraints = [
        VolumeConstraint("a", 5, "1d", "action", 86400),
        VolumeConstraint("g", 9, "1h", "group", 3600),
        VolumeConstraint("i", 7, "7d", "issue", 7 * 86400),
    ]
    claims = volume_claims(constraints, action_id="gold", issue="sales", group="cards", now=NOW)
    assert [(c.key, c.period_start, c.cap) for c in claims] == [
        ("a|action|gold", DAY, 5),
        ("g|group|sales/cards", DAY + 10 * 3600, 9),
        ("i|issue|sales", DAY - 2 * 86400, 7),  # epoch weeks start on Thursdays
    ]
    # The same name declared at two levels counts once, at the tighter cap.
    twice = [VolumeConstraint("a", 5, "1d"), VolumeConstraint("a", 3, "1d")]
    claimed = volume_claims(twice, action_id="gold", issue="sales", group="cards", now=NOW)
    assert [c.cap for c in claimed] == [3]


async def test_a_full_counter_is_remembered_until_its_period_ends_or_its_cap_rises() -> None:
    store = FakeCatalogStore()
    gate = VolumeGate(arbitration_units(store))
    cap = [VolumeConstraint("a", 1, "1d")]

    async def take(most: list[VolumeConstraint] = cap, at: datetime = NOW) -> bool:
        refusal = await gate.reserve(most, action_id="gold", issue="s", group="g", now=at)
        return refusal is None

    assert await take()
    commits = store.commits
    assert not await take()
    assert not await take()
    assert store.commits == commits  # nothing reserved
    store.volume.clear()  # were the database consulted, it would grant a unit now
    assert not await take()  # remembered as full: no round trip
    assert await take(at=NOW + timedelta(days=1))  # a new period
    assert await take([VolumeConstraint("a", 2, "1d")])  # a higher cap asks again
    assert await gate.reserve([], action_id="gold", issue="s", group="g", now=NOW) is None


def explanation(action_id: str, priority: float) -> CandidateExplanation:
    return CandidateExplanation(action_id, True, propensity=0.5, priority=priority)


async def test_the_next_best_is_served_when_the_pick_is_capped() -> None:
    store = FakeCatalogStore()
    gate = VolumeGate(arbitration_units(store))
    capped = (VolumeConstraint("daily_cap", 2, "1d"),)
    actions = {
        "gold": ActionDefinition("gold", "Gold", "sales", "cards", 10.0, volume=capped),
        "silver": ActionDefinition("silver", "Silver", "sales", "cards", 5.0, volume=capped),
        "bronze": ActionDefinition("bronze", "Bronze", "sales", "cards", 1.0),
    }
    contenders = (explanation("gold", 5.0), explanation("silver", 2.5), explanation("bronze", 0.5))

    def greedy(remaining: Sequence[CandidateExplanation]) -> Selection:
        return select(Exploration(), remaining, random.Random(1))

    served = []
    for _ in range(6):
        selection, refused = await choose_with_volume(gate, contenders, greedy, actions.get, NOW)
        assert selection.winner is not None and selection.probability == 1.0
        served.append((selection.winner.action_id, [r.action_id for r in refused]))
    assert served == [
        ("gold", []),
        ("gold", []),
        ("silver", ["gold"]),
        ("silver", ["gold"]),
        ("bronze", ["gold", "silver"]),
        ("bronze", ["gold", "silver"]),
    ]
    _, refused = await choose_with_volume(gate, contenders, greedy, actions.get, NOW)
    assert refused[0].removed_by == "volume:daily_cap" and not refused[0].eligible
    assert "chosen 2 times (the cap)" in refused[0].reason
    # Nothing left to serve: no action.
    selection, refused = await choose_with_volume(gate, contenders[:2], greedy, actions.get, NOW)
    assert selection.winner is None and len(refused) == 2


# ---------------------------------------------------------------------------- in arbitration

CATALOG_YAML = """
contact_policies:
  - {name: after_reject, suppress_after: [reject, dismiss], for: 30d}
issues:
  sales:
    groups:
      cards:
        volume:
          - {name: daily_cap, max: 1, per: 1d}
      loans: {}
actions:
  - {id: gold, issue: sales, group: cards, value: 10}
  - {id: silver, issue: sales, group: cards, value: 5}
  - {id: loan, issue: sales, group: loans, value: 1}
"""


async def test_prioritize_removes_rejected_and_capped_actions_with_their_reasons() -> None:
    from libs.contracts.arbitration import ScoredCandidate
    from libs.contracts.context import Contact, ProfileContext
    from services.arbitration.catalog import parse_catalog_yaml
    from services.arbitration.service import ArbitrationService

    service = ArbitrationService(arbitration_units(FakeCatalogStore()), clock=lambda: NOW)
    await service.apply_catalog(parse_catalog_yaml(CATALOG_YAML))
    scored = [ScoredCandidate(a, 0.5) for a in ("gold", "silver", "loan")]
    rejected = ProfileContext(
        "p1", contacts=(Contact("gold", "web", "reject", NOW - timedelta(days=1)),)
    )
    first = await service.prioritize(scored, "email", explain=True, context=rejected)
    assert first.winner is not None and first.winner.action_id == "silver"
    gold = next(c for c in first.ranked if c.action_id == "gold")
    assert gold.removed_by == "contact:after_reject" and "reject of gold on web" in gold.reason
    # silver took the daily unit of its own counter; gold (not rejected by p2) has its own.
    second = await service.prioritize(scored, "email", explain=True, context=ProfileContext("p2"))
    assert second.winner is not None and second.winner.action_id == "gold"
    third = await service.prioritize(scored, "email", explain=True, context=ProfileContext("p3"))
    assert third.winner is not None and third.winner.action_id == "loan"
    assert [(c.action_id, c.removed_by, c.rank) for c in third.ranked] == [
        ("loan", "", 1),
        ("gold", "volume:daily_cap", 0),
        ("silver", "volume:daily_cap", 0),
    ]
