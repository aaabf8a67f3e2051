"""The action catalog and arbitration against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from libs.contracts.arbitration import ScoredCandidate
from libs.contracts.context import ProfileContext
from libs.errors import InvalidArgument
from libs.storage import Database, StorageConflict
from libs.storage.database import sync_url
from libs.storage.migrate import upgrade
from services.app import MIGRATIONS
from services.arbitration.catalog import parse_catalog_yaml
from services.arbitration.model import Catalog
from services.arbitration.repository import SqlArbitrationUnitOfWork
from services.arbitration.service import ArbitrationService
from services.arbitration.tables import CatalogStateRow
from services.demo.seed import DEMO_CATALOG

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OPTED_IN = ProfileContext("p1", consents={"marketing_email": True})


def arbitration_service(database: Database, refresh_s: float = 0.01) -> ArbitrationService:
    return ArbitrationService(
        lambda write: SqlArbitrationUnitOfWork(database, write=write), refresh_s=refresh_s
    )


def demo_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DEMO_CATALOG.read_text())
    return document


def demo_catalog() -> Catalog:
    return parse_catalog_yaml(DEMO_CATALOG.read_text())


def catalog_from(document: dict[str, Any]) -> Catalog:
    return parse_catalog_yaml(yaml.safe_dump(document))


def same_catalog(left: Catalog, right: Catalog) -> bool:
    return (left.actions, left.min_priority, left.version) == (
        right.actions,
        right.min_priority,
        right.version,
    )


async def stored_catalog(database: Database) -> Catalog:
    """What a freshly started replica would load from the database."""
    return await arbitration_service(database).catalog()


async def test_applied_catalog_is_stored_with_a_version(database: Database) -> None:
    service = arbitration_service(database)
    assert (await service.catalog()).actions == ()

    applied = await service.apply_catalog(demo_catalog())

    assert applied.version and applied.applied_at is not None
    assert [a.action_id for a in applied.actions] == [a["id"] for a in demo_document()["actions"]]
    assert same_catalog(await service.catalog(), applied)
    stored = await stored_catalog(database)
    assert same_catalog(stored, applied)
    assert stored.applied_at == applied.applied_at
    loyalty = stored.action("retention_loyalty_discount")
    assert loyalty is not None
    assert (loyalty.value, loyalty.lever, loyalty.model) == (60.0, 1.0, "demo_propensity")
    assert loyalty.channels == ("mobile", "web", "email", "call_center")
    assert loyalty.treatment_for("call_center")["script"].startswith("Offer the 20%")
    assert stored.min_priority == 2.0


async def test_a_replica_picks_up_a_newly_applied_catalog(database: Database) -> None:
    admin = arbitration_service(database)
    replica = arbitration_service(database, refresh_s=0.01)
    assert (await replica.catalog()).version == ""
    first = await admin.apply_catalog(demo_catalog())
    await asyncio.sleep(0.05)
    assert same_catalog(await replica.catalog(), first)

    document = demo_document()
    document["min_priority"] = 3.5
    document["actions"] = document["actions"][1:]
    document["actions"][0]["value"] = 75
    second = await admin.apply_catalog(catalog_from(document))
    await asyncio.sleep(0.05)

    seen = await replica.catalog()
    assert second.version != first.version
    assert same_catalog(seen, second)
    assert seen.min_priority == 3.5
    assert seen.action("retention_loyalty_discount") is None
    plan_review = seen.action("retention_plan_review")
    assert plan_review is not None and plan_review.value == 75.0
    listed = await replica.list_candidates("branch", "home", {})
    assert listed.catalog_version == second.version


async def test_dry_run_stores_nothing(database: Database) -> None:
    service = arbitration_service(database)
    current = await service.apply_catalog(demo_catalog())
    document = demo_document()
    document["min_priority"] = 9.0

    preview = await service.apply_catalog(catalog_from(document), dry_run=True)

    assert preview.version != current.version and preview.min_priority == 9.0
    assert same_catalog(await service.catalog(), current)
    assert same_catalog(await stored_catalog(database), current)


async def test_dry_run_on_an_empty_installation_stores_nothing(database: Database) -> None:
    service = arbitration_service(database)
    await service.apply_catalog(demo_catalog(), dry_run=True)
    assert (await stored_catalog(database)).version == ""
    assert (await service.catalog()).actions == ()


async def test_list_candidates_filters_by_channel_and_disabled_actions(
    database: Database,
) -> None:
    service = arbitration_service(database)
    document = demo_document()
    for action in document["actions"]:
        if action["id"] == "service_setup_help":
            action["enabled"] = False
    applied = await service.apply_catalog(catalog_from(document))

    branch = await service.list_candidates("branch", "home", {}, explain=True)

    assert [a.action_id for a in branch.candidates] == ["retention_plan_review"]
    removed = {r.action_id: r for r in branch.removed}
    assert removed["service_setup_help"].removed_by == "enabled"
    assert all(not r.eligible for r in branch.removed)
    for action_id in (
        "retention_loyalty_discount",
        "cross_sell_device_protection",
        "cross_sell_bonus_data",
        "service_paperless_billing",
    ):
        assert removed[action_id].removed_by == "channels"
        assert "branch" in removed[action_id].reason
    assert len(branch.candidates) + len(branch.removed) == len(applied.actions)
    assert branch.catalog_version == applied.version

    email = await service.list_candidates("email", "inbox", {})
    assert [a.action_id for a in email.candidates] == [
        "retention_loyalty_discount",
        "cross_sell_device_protection",
        "cross_sell_bonus_data",
        "service_paperless_billing",
    ]
    assert email.removed == ()  # explanations only when asked for


async def test_prioritize_picks_the_highest_p_v_l(database: Database) -> None:
    service = arbitration_service(database)
    await service.apply_catalog(demo_catalog())
    scored = [
        ScoredCandidate("retention_loyalty_discount", 0.08, "demo_propensity:1"),  # 60 x .08 = 4.8
        ScoredCandidate("cross_sell_device_protection", 0.05, "demo_propensity:1"),  # 4.0
        ScoredCandidate("cross_sell_bonus_data", 0.09, "demo_propensity:1"),  # 50 x 1.2 x .09
        ScoredCandidate("service_paperless_billing", 0.9, ""),  # 4.5
    ]

    # Paperless billing needs her opt-in to marketing e-mails (see the demo catalog).
    result = await service.prioritize(scored, "web", explain=True, context=OPTED_IN)

    # Only the lever (1.2) puts bonus data (5.4) above the loyalty discount (4.8).
    assert result.winner is not None and result.winner.action_id == "cross_sell_bonus_data"
    assert result.best is not None and result.best.won
    assert result.best.priority == pytest.approx(5.4)
    assert [(c.action_id, c.rank) for c in result.ranked] == [
        ("cross_sell_bonus_data", 1),
        ("retention_loyalty_discount", 2),
        ("service_paperless_billing", 3),
        ("cross_sell_device_protection", 4),
    ]
    for explanation in result.ranked:
        assert explanation.priority == pytest.approx(
            explanation.propensity
            * explanation.context_weight
            * explanation.value
            * explanation.lever
        )
    assert [c.won for c in result.ranked] == [True, False, False, False]
    assert result.min_priority == 2.0
    assert "cross_sell_bonus_data" in result.summary
    quiet = await service.prioritize(scored, "web", context=OPTED_IN)
    assert quiet.ranked == () and quiet.winner == result.winner
    without_consent = await service.prioritize(scored, "web", explain=True)
    assert [(c.action_id, c.removed_by) for c in without_consent.ranked if not c.eligible] == [
        ("service_paperless_billing", "consent:marketing_email")
    ]

    with pytest.raises(InvalidArgument) as refused:
        await service.prioritize(
            [
                scored[0],
                ScoredCandidate("not_in_catalog", 0.5),
                ScoredCandidate("service_setup_help", 1.5),
            ],
            "web",
        )
    assert {v.field for v in refused.value.violations} == {
        "candidates[1].action_id",
        "candidates[2].propensity",
    }


async def test_below_the_minimum_priority_the_decision_is_no_action(database: Database) -> None:
    service = arbitration_service(database)
    await service.apply_catalog(demo_catalog())
    scored = [
        ScoredCandidate("retention_loyalty_discount", 0.01),  # 1.2
        ScoredCandidate("retention_plan_review", 0.02),  # 1.2
        ScoredCandidate("service_setup_help", 0.05),  # 1.25
    ]

    result = await service.prioritize(scored, "web", explain=True)

    assert result.winner is None
    assert result.best is not None and result.best.action_id == "service_setup_help"
    assert not result.best.won and not any(c.won for c in result.ranked)
    assert result.summary.startswith("no action")
    assert "minimum 2" in result.summary
    nothing = await service.prioritize([], "web")
    assert nothing.winner is None and nothing.best is None
    assert nothing.summary.startswith("no action")


async def test_a_bad_catalog_is_refused_and_the_applied_one_stays(database: Database) -> None:
    service = arbitration_service(database)
    current = await service.apply_catalog(demo_catalog())
    bad = """
min_priority: 1
actions:
  - {id: ok_offer, issue: retention, value: 10}
  - {id: coloured, issue: retention, value: 10, colour: blue}
  - {id: costly, issue: retention, value: -5}
  - {id: ok_offer, issue: service, value: 3}
"""

    with pytest.raises(InvalidArgument) as refused:
        await service.apply_catalog(parse_catalog_yaml(bad))

    assert {v.field for v in refused.value.violations} == {
        "actions[1] (coloured).colour",
        "actions[2] (costly).value",
        "actions[3] (ok_offer).id",
    }
    with pytest.raises(InvalidArgument) as not_yaml:
        parse_catalog_yaml("actions: [unclosed")
    assert [v.field for v in not_yaml.value.violations] == ["catalog"]
    assert same_catalog(await stored_catalog(database), current)
    assert same_catalog(await service.catalog(), current)


async def test_a_failed_apply_leaves_the_previous_catalog_in_force(database: Database) -> None:
    service = arbitration_service(database)
    current = await service.apply_catalog(demo_catalog())
    first = current.actions[0]
    # Bypasses the parser: the database's own constraint refuses the duplicated id.
    broken = replace(current, actions=(first, replace(first, name="again")), version="broken")

    with pytest.raises((IntegrityError, StorageConflict)):
        await service.apply_catalog(broken)

    assert same_catalog(await stored_catalog(database), current)
    assert same_catalog(await service.catalog(), current)


# ------------------------------------------------------------- documents (issues, policies)

POLICY_CATALOG = """
min_priority: 0.5
exploration: {policy: epsilon_greedy, epsilon: 0.1}
policies: {eligibility: "!('blocked' in customer.attributes)"}
issues:
  retention:
    context_weight: "'cancel_page_view' in customer.counts ? 2.0 : 1.0"
    factors: {lever: false}
    groups:
      offers:
        policies: {suitability: "request.channel != 'branch'"}
actions:
  - id: gold_card
    issue: retention
    group: offers
    value: 10
    lever: 3
    valid_from: 2025-01-01T00:00:00Z
    consent: [marketing_email]
    policies: {applicability: "action.value > 5.0 && customer.known"}
  - {id: plain, issue: retention, group: offers, value: 2}
"""


async def test_a_document_catalog_is_stored_and_reloaded_with_its_policies(
    database: Database,
) -> None:
    admin = arbitration_service(database)
    applied = await admin.apply_catalog(parse_catalog_yaml(POLICY_CATALOG))

    replica = await stored_catalog(database)

    assert replica == applied  # same actions, rules (by source), exploration, version
    assert replica.applied_at == applied.applied_at
    assert replica.document == applied.document
    gold = replica.action("gold_card")
    assert gold is not None
    assert [r.name for r in gold.rules] == [
        "eligibility@catalog",
        "applicability@action:gold_card",
        "suitability@group:retention/offers",
    ]
    assert gold.consent == ("marketing_email",) and not gold.factors.lever
    assert replica.exploration.policy == "epsilon_greedy" and replica.exploration.epsilon == 0.1
    # The reloaded rules run: compiled again on the replica.
    reader = arbitration_service(database)
    customer = ProfileContext(
        "p1", counters={}, consents={"marketing_email": True}, attributes={"blocked": True}
    )
    result = await reader.prioritize(
        [ScoredCandidate("gold_card", 0.5)], "web", explain=True, context=customer
    )
    assert result.winner is None
    assert [(c.action_id, c.removed_by) for c in result.ranked] == [
        ("gold_card", "eligibility@catalog")
    ]


async def test_a_catalog_stored_before_documents_is_loaded_from_its_rows(
    database: Database,
) -> None:
    service = arbitration_service(database)
    applied = await service.apply_catalog(demo_catalog())
    async with SqlArbitrationUnitOfWork(database, write=True) as uow:
        state = await uow.session.get(CatalogStateRow, 1)
        assert state is not None and state.document is not None
        state.document = None  # as revision 0002 left it
        await uow.commit()

    loaded = await stored_catalog(database)

    assert loaded.version == applied.version
    assert [a.action_id for a in loaded.actions] == [a.action_id for a in applied.actions]
    assert all(not a.rules for a in loaded.actions)
    assert loaded.defaults == applied.defaults


async def test_upgrade_to_0004_keeps_a_catalog_applied_before(empty_url: str) -> None:
    upgrade(empty_url, MIGRATIONS, "0002")
    engine = create_engine(sync_url(empty_url))
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO arbitration_catalog (id, version, min_priority, defaults,"
                    " applied_at) VALUES (1, 'old', 1.5, '{\"web\": \"legacy\"}', :at)"
                ),
                {"at": "2026-01-01 00:00:00" if engine.dialect.name == "sqlite" else NOW},
            )
            connection.execute(
                text(
                    "INSERT INTO arbitration_actions (action_id, position, name, issue,"
                    " group_name, channels, value, lever, model, enabled, treatments,"
                    " prior_propensity) VALUES ('legacy', 0, 'Legacy', 'sales', 'default',"
                    " '[\"web\"]', 3.0, 1.0, '', true, '{}', 0.05)"
                )
            )
    finally:
        engine.dispose()

    upgrade(empty_url, MIGRATIONS)

    database = Database(empty_url)
    try:
        service = arbitration_service(database)
        loaded = await service.catalog()
        assert (loaded.version, loaded.min_priority) == ("old", 1.5)
        assert [a.action_id for a in loaded.actions] == ["legacy"]
        assert loaded.defaults == {"web": "legacy"}
        # The next apply stores a document, which replicas then load.
        applied = await service.apply_catalog(parse_catalog_yaml(POLICY_CATALOG))
        assert await stored_catalog(database) == applied
    finally:
        await database.dispose()
