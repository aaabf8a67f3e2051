"""Arbitration: ranking by P x C x V x L, catalog validation and versions, the service."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from libs.contracts.arbitration import ScoredCandidate
from libs.errors import InvalidArgument
from libs.priority import rank_candidates
from services.arbitration.catalog import catalog_to_document, parse_catalog, parse_catalog_yaml
from services.arbitration.model import ActionDefinition, Catalog
from services.arbitration.service import ArbitrationService
from tests.unit.fakes import FakeCatalogStore, arbitration_units

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def action(action_id: str, value: float, lever: float = 1.0, **extra: Any) -> ActionDefinition:
    return ActionDefinition(action_id, action_id.title(), "sales", "default", value, lever, **extra)


CATALOG = Catalog(
    actions=(action("gold", 10.0), action("silver", 4.0, 2.5), action("bronze", 2.0, 0.5)),
    min_priority=0.0,
    version="v1",
)


def fields_of(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


def violations_of(error: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.violations]


# ---------------------------------------------------------------------------- rank_candidates


def test_priority_is_p_times_c_times_v_times_l_best_first() -> None:
    ranked = rank_candidates(
        CATALOG.by_id,
        [
            ScoredCandidate("bronze", 0.9, "m:1"),  # 0.9 x 2 x 0.5 = 0.9
            ScoredCandidate("gold", 0.1, "m:1"),  # 0.1 x 10 x 1 = 1.0
            ScoredCandidate("silver", 0.2, "m:2"),  # 0.2 x 4 x 2.5 = 2.0
        ],
    )

    assert [r.action_id for r in ranked] == ["silver", "gold", "bronze"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    assert [r.priority for r in ranked] == pytest.approx([2.0, 1.0, 0.9])
    silver = ranked[0]
    assert (silver.propensity, silver.value, silver.lever) == (0.2, 4.0, 2.5)
    assert silver.context_weight == 1.0
    assert silver.model_version == "m:2"
    assert silver.eligible and not silver.won
    for r in ranked:
        assert r.priority == pytest.approx(r.propensity * r.context_weight * r.value * r.lever)


def test_ties_are_broken_by_action_id_whatever_the_input_order() -> None:
    catalog = Catalog(actions=(action("b", 2.0), action("a", 1.0), action("c", 4.0)))
    scored = [ScoredCandidate("c", 0.25), ScoredCandidate("b", 0.5), ScoredCandidate("a", 1.0)]

    forward = rank_candidates(catalog.by_id, scored)
    backward = rank_candidates(catalog.by_id, scored[::-1])

    assert [r.action_id for r in forward] == ["a", "b", "c"]
    assert forward == backward
    assert [r.rank for r in forward] == [1, 2, 3]


def test_nothing_scored_ranks_nothing() -> None:
    assert rank_candidates(CATALOG.by_id, []) == ()


def test_an_unknown_action_id_is_refused_naming_the_candidate() -> None:
    with pytest.raises(InvalidArgument) as caught:
        rank_candidates(
            CATALOG.by_id, [ScoredCandidate("gold", 0.1), ScoredCandidate("platinum", 0.1)]
        )

    assert violations_of(caught.value) == [("candidates[1].action_id", "not in the catalog")]


@pytest.mark.parametrize("propensity", [-0.01, 1.0001, math.nan, math.inf])
def test_a_propensity_outside_zero_one_is_refused(propensity: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        rank_candidates(
            CATALOG.by_id, [ScoredCandidate("gold", 0.5), ScoredCandidate("silver", propensity)]
        )

    assert fields_of(caught.value) == ["candidates[1].propensity"]


def test_propensities_zero_and_one_are_accepted() -> None:
    ranked = rank_candidates(
        CATALOG.by_id, [ScoredCandidate("gold", 0.0), ScoredCandidate("silver", 1.0)]
    )

    assert [r.priority for r in ranked] == [10.0, 0.0]


def test_every_bad_candidate_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as caught:
        rank_candidates(
            CATALOG.by_id,
            [
                ScoredCandidate("nope", 0.5),
                ScoredCandidate("gold", 0.5),
                ScoredCandidate("gold", 2),
            ],
        )

    assert fields_of(caught.value) == ["candidates[0].action_id", "candidates[2].propensity"]


# ------------------------------------------------------------------------------- parse_catalog

GOOD_YAML = """
min_priority: 1.5
actions:
  - id: loyalty_discount
    name: Loyalty discount
    issue: retention
    group: discounts
    channels: [web, mobile]
    value: 120
    lever: 0.8
    model: demo_propensity
    prior_propensity: 0.04
    treatments:
      default: {headline: Stay with us}
      web: {headline: Stay with us on the web}
  - id: plan_review
    issue: retention
    value: 60
"""


def test_a_valid_catalog_is_parsed_with_defaults() -> None:
    catalog = parse_catalog_yaml(GOOD_YAML)

    assert catalog.min_priority == 1.5
    assert [a.action_id for a in catalog.actions] == ["loyalty_discount", "plan_review"]
    first, second = catalog.actions
    assert first == ActionDefinition(
        action_id="loyalty_discount",
        name="Loyalty discount",
        issue="retention",
        group="discounts",
        value=120.0,
        lever=0.8,
        channels=("web", "mobile"),
        model="demo_propensity",
        enabled=True,
        treatments={
            "default": {"headline": "Stay with us"},
            "web": {"headline": "Stay with us on the web"},
        },
        prior_propensity=0.04,
    )
    assert (second.name, second.group, second.lever, second.channels) == (
        "plan_review",
        "default",
        1.0,
        (),
    )
    assert (second.enabled, second.prior_propensity, second.model) == (True, 0.05, "")
    assert isinstance(first.value, float)
    assert len(catalog.version) == 16
    assert catalog.applied_at is None


def test_every_problem_is_reported_at_once_naming_action_and_field() -> None:
    document = {
        "min_priority": -1,
        "actions": [
            {"id": "ok", "issue": "sales", "value": 1},
            {"id": "bad_one", "issue": "sales", "value": 5, "lever": -1, "colour": "red"},
            {"issue": "sales", "value": 5},
            "not a mapping",
            {"id": "ok", "issue": "Sales Team", "value": 5, "prior_propensity": 1.5},
            {
                "id": "flags",
                "issue": "sales",
                "value": 5,
                "enabled": "yes",
                "channels": "web",
                "treatments": ["x"],
            },
        ],
    }

    with pytest.raises(InvalidArgument) as caught:
        parse_catalog(document)

    assert fields_of(caught.value) == [
        "min_priority",
        "actions[1] (bad_one).colour",
        "actions[1] (bad_one).lever",
        "actions[2].id",
        "actions[3]",
        "actions[4] (ok).id",
        "actions[4] (ok).issue",
        "actions[4] (ok).prior_propensity",
        "actions[5] (flags).channels",
        "actions[5] (flags).treatments",
        "actions[5] (flags).enabled",
    ]
    described = dict(violations_of(caught.value))
    assert described["actions[1] (bad_one).colour"] == "unknown field"
    assert described["actions[4] (ok).id"] == "duplicated action id"
    assert described["actions[1] (bad_one).lever"] == "must be >= 0"


def test_unknown_fields_are_each_named() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog({"actions": [{"id": "a", "issue": "s", "value": 1, "zeta": 1, "alpha": 2}]})

    assert violations_of(caught.value) == [
        ("actions[0] (a).alpha", "unknown field"),
        ("actions[0] (a).zeta", "unknown field"),
    ]


def test_unknown_fields_with_non_string_keys_are_reported_not_crashing() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog_yaml("actions:\n  - {id: a, issue: s, value: 1, 1: x, colour: red}\n")

    assert sorted(fields_of(caught.value)) == ["actions[0] (a).1", "actions[0] (a).colour"]


def test_an_unknown_top_level_field_is_reported() -> None:
    # A misspelt min_priority must not silently become "no minimum".
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog({"min_priorty": 5, "actions": [{"id": "a", "issue": "s", "value": 1}]})

    assert violations_of(caught.value) == [("min_priorty", "unknown field")]


@pytest.mark.parametrize(
    "raw",
    ["ten", True, False, math.nan, math.inf, None, [1], {"amount": 1}],
    ids=["text", "true", "false", "nan", "inf", "missing", "list", "mapping"],
)
def test_a_value_must_be_a_positive_finite_number(raw: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog({"actions": [{"id": "a", "issue": "s", "value": raw}]})

    assert set(fields_of(caught.value)) == {"actions[0] (a).value"}


@pytest.mark.parametrize("raw", [0, -3])
def test_a_value_must_be_above_zero(raw: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog({"actions": [{"id": "a", "issue": "s", "value": raw}]})

    assert violations_of(caught.value) == [("actions[0] (a).value", "required, > 0")]


def test_nan_in_yaml_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog_yaml("actions:\n  - {id: a, issue: s, value: 1, lever: .nan}\n")

    assert violations_of(caught.value) == [("actions[0] (a).lever", "must be a finite number")]


def test_a_negative_lever_is_refused_and_zero_is_allowed() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog({"actions": [{"id": "a", "issue": "s", "value": 1, "lever": -0.5}]})
    zero = parse_catalog({"actions": [{"id": "a", "issue": "s", "value": 1, "lever": 0}]})

    assert violations_of(caught.value) == [("actions[0] (a).lever", "must be >= 0")]
    assert zero.actions[0].lever == 0.0


def test_a_duplicated_action_id_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog(
            {
                "actions": [
                    {"id": "a", "issue": "s", "value": 1},
                    {"id": "a", "issue": "s", "value": 2},
                ]
            }
        )

    assert violations_of(caught.value) == [("actions[1] (a).id", "duplicated action id")]


@pytest.mark.parametrize("document", [{"actions": []}, {"actions": None}, {}, {"actions": "a"}])
def test_an_empty_action_list_is_refused(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog(document)

    assert fields_of(caught.value) == ["actions"]


@pytest.mark.parametrize("text", ["actions: [a, b", "actions:\n  - id: a\n   bad: indent", "{"])
def test_invalid_yaml_is_refused_naming_catalog(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog_yaml(text)

    assert fields_of(caught.value) == ["catalog"]
    assert "not valid YAML" in caught.value.violations[0].description


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text"])
def test_a_document_that_is_not_a_mapping_is_refused_naming_catalog(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog_yaml(text)

    assert fields_of(caught.value) == ["catalog"]


# ---------------------------------------------------------------------------- catalog version


def test_the_same_catalog_content_always_has_the_same_version() -> None:
    reordered_keys = """
actions:
  - value: 120.0
    prior_propensity: 0.04
    treatments:
      web: {headline: Stay with us on the web}
      default: {headline: Stay with us}
    model: demo_propensity
    lever: 0.8
    channels: [web, mobile]
    group: discounts
    issue: retention
    name: Loyalty discount
    id: loyalty_discount
  - {id: plan_review, issue: retention, value: 60, lever: 1, group: default}
min_priority: 1.5
"""
    first = parse_catalog_yaml(GOOD_YAML)

    assert parse_catalog_yaml(GOOD_YAML).version == first.version
    assert parse_catalog_yaml(reordered_keys).version == first.version
    assert parse_catalog(catalog_to_document(first)) == first


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("value: 60", "value: 61"),
        ("min_priority: 1.5", "min_priority: 1.6"),
        ("web: {headline: Stay with us on the web}", "web: {headline: Stay!}"),
        ("channels: [web, mobile]", "channels: [web]"),
        ("  - id: plan_review", "  - id: plan_review\n    enabled: false"),
    ],
)
def test_a_change_of_content_changes_the_version(old: str, new: str) -> None:
    changed = GOOD_YAML.replace(old, new)
    assert changed != GOOD_YAML

    assert parse_catalog_yaml(changed).version != parse_catalog_yaml(GOOD_YAML).version


# ------------------------------------------------------------------------------- treatments


def test_treatment_for_a_channel_falls_back_to_default() -> None:
    offer = action(
        "offer",
        1.0,
        treatments={"web": {"title": "Web"}, "default": {"title": "Any"}, "sms": "not a dict"},
    )

    assert offer.treatment_for("web") == {"title": "Web"}
    assert offer.treatment_for("mobile") == {"title": "Any"}
    assert offer.treatment_for("sms") == {}
    assert action("bare", 1.0).treatment_for("web") == {}


def test_treatment_for_returns_a_copy() -> None:
    offer = action("offer", 1.0, treatments={"default": {"title": "Any"}})

    offer.treatment_for("web")["title"] = "changed"

    assert offer.treatment_for("web") == {"title": "Any"}


# ------------------------------------------------------------------------ ArbitrationService


async def test_list_candidates_filters_disabled_and_off_channel_actions() -> None:
    service = ArbitrationService(arbitration_units(FakeCatalogStore()), clock=lambda: NOW)
    await service.apply_catalog(
        Catalog(
            actions=(
                action("anywhere", 1.0),
                action("web_only", 1.0, channels=("web",)),
                action("mobile_only", 1.0, channels=("mobile",)),
                action("off", 1.0, enabled=False),
            ),
            version="v1",
        )
    )

    listed = await service.list_candidates("web", "", {}, explain=True)
    quiet = await service.list_candidates("web", "", {})

    assert [a.action_id for a in listed.candidates] == ["anywhere", "web_only"]
    assert [(r.action_id, r.removed_by) for r in listed.removed] == [
        ("mobile_only", "channels"),
        ("off", "enabled"),
    ]
    assert not any(r.eligible for r in listed.removed)
    assert listed.catalog_version == "v1"
    assert quiet.candidates == listed.candidates
    assert quiet.removed == ()


async def test_listings_are_kept_per_channel_and_follow_the_clock_and_the_catalog() -> None:
    """The same tuple of actions while nothing changes (what the orchestrator and scoring
    find their derived data by); validity windows are judged at every call, and a new
    catalog lists its own actions."""
    now = [NOW]
    service = ArbitrationService(arbitration_units(FakeCatalogStore()), clock=lambda: now[0])
    await service.apply_catalog(
        Catalog(actions=(action("a", 1.0), action("m", 1.0, channels=("mobile",))), version="v1")
    )
    web = await service.list_candidates("web", "", {})
    assert [a.action_id for a in web.candidates] == ["a"]
    assert (await service.list_candidates("web", "home", {})).candidates is web.candidates
    mobile = await service.list_candidates("mobile", "", {}, explain=True)
    assert [a.action_id for a in mobile.candidates] == ["a", "m"]
    assert mobile.removed == ()
    web_explained = await service.list_candidates("web", "", {}, explain=True)
    assert [(r.action_id, r.removed_by) for r in web_explained.removed] == [("m", "channels")]

    later = datetime(2025, 3, 2, 12, 0, tzinfo=UTC)
    await service.apply_catalog(
        Catalog(
            actions=(action("a", 2.0), action("until", 1.0, valid_until=later)),
            version="v2",
        )
    )
    windowed = await service.list_candidates("web", "", {})
    assert [(a.action_id, a.value) for a in windowed.candidates] == [("a", 2.0), ("until", 1.0)]
    assert (await service.list_candidates("web", "", {})).candidates is windowed.candidates
    now[0] = later
    expired = await service.list_candidates("web", "", {}, explain=True)
    assert [a.action_id for a in expired.candidates] == ["a"]
    assert [(r.action_id, r.removed_by) for r in expired.removed] == [("until", "validity")]


async def test_prioritize_marks_the_winner_and_ranks_only_when_explaining() -> None:
    service = ArbitrationService(arbitration_units(FakeCatalogStore()), clock=lambda: NOW)
    await service.apply_catalog(CATALOG)
    scored = [ScoredCandidate("gold", 0.1), ScoredCandidate("silver", 0.2)]

    explained = await service.prioritize(scored, "web", explain=True)
    quiet = await service.prioritize(scored, "web")

    assert explained.winner is not None and explained.winner.action_id == "silver"
    assert explained.best is not None and explained.best.won
    assert [(r.action_id, r.won) for r in explained.ranked] == [("silver", True), ("gold", False)]
    assert quiet.ranked == ()
    assert quiet.best == explained.best
    assert "silver" in explained.summary


async def test_prioritize_with_nothing_scored_is_no_action() -> None:
    service = ArbitrationService(arbitration_units(FakeCatalogStore()))
    await service.apply_catalog(CATALOG)

    result = await service.prioritize([], "web", explain=True)

    assert result.winner is None and result.best is None
    assert result.summary.startswith("no action")


async def test_apply_catalog_stamps_stores_and_other_replicas_reload_it() -> None:
    store = FakeCatalogStore()
    writer = ArbitrationService(arbitration_units(store), clock=lambda: NOW)
    reader = ArbitrationService(arbitration_units(store), refresh_s=0.0)
    assert (await reader.catalog()).actions == ()

    applied = await writer.apply_catalog(CATALOG)

    assert applied.applied_at == NOW
    assert store.catalog == applied
    assert await reader.catalog() == applied
    loads = store.loads
    await reader.catalog()
    assert store.loads == loads  # same version: not loaded again


async def test_a_dry_run_stores_nothing() -> None:
    store = FakeCatalogStore()
    service = ArbitrationService(arbitration_units(store), clock=lambda: NOW)

    checked = await service.apply_catalog(CATALOG, dry_run=True)

    assert checked.applied_at == NOW
    assert store.catalog is None and store.commits == 0
    assert (await service.catalog()).actions == ()


def test_an_integer_too_large_for_a_float_is_refused_not_crashing() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog_yaml(f"actions:\n  - {{id: a, issue: s, value: {'9' * 400}}}\n")

    assert ("actions[0] (a).value", "must be a finite number") in violations_of(caught.value)
    assert set(fields_of(caught.value)) == {"actions[0] (a).value"}
