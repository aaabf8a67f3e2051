"""Decision snapshot format 2 (libs/contracts/snapshot.py): what a real decision logs in
it reads back as the same candidates as its version 1 snapshot, the catalog's part taken
from the catalog of its version; the compact profile context gives the same features."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
import pytest

from libs.contracts.arbitration import (
    CandidateList,
    CandidateTable,
    Prioritization,
    ScoredCandidate,
)
from libs.contracts.context import (
    ChannelActivity,
    Contact,
    DecisionRecord,
    EventCounter,
    InteractionSummary,
    Prediction,
    ProfileContext,
    WindowAggregate,
)
from libs.contracts.identity import Identifier
from libs.contracts.profile_snapshot import profile_context_from_dict, profile_context_to_dict
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.contracts.snapshot import SNAPSHOT_KEY, compact_snapshot, decision_snapshot
from services.arbitration.catalog import parse_catalog
from services.arbitration.model import Catalog
from services.learning.compact import compact_v1
from services.learning.dataset import (
    UNKNOWN_CATALOG,
    UNREADABLE,
    LoggedCandidate,
    LoggedDecision,
    LogReading,
    read_logged_decision,
)
from services.learning.snapshot import unpack_v2
from services.orchestrator.model import DecideCommand, Decision
from services.scoring.features import FeatureBuilder, ScoringInput
from services.scoring.model import FeatureSpec
from tests.unit.test_decision_engine import NOW, make_hub

ZOE = [Identifier("email", "zoe@example.com")]

# Every part the format handles: an issue with V and L switched off, context weights from
# an expression, a rule and a consent purpose that remove candidates, an action offered on
# another channel (removed by the listing), a candidate without a score (prior fallback).
CATALOG: dict[str, Any] = {
    "min_priority": 0.1,
    "issues": {
        "retention": {"context_weight": "1.0 + double(customer.counts.page_view) / 3.0"},
        "service": {"factors": {"value": False, "lever": False}},
        "sales": {},
    },
    "actions": [
        {"id": "keep", "issue": "retention", "value": 40, "lever": 1.2, "prior_propensity": 0.3},
        {"id": "help", "issue": "service", "value": 7, "lever": 3.0, "prior_propensity": 0.2},
        {
            "id": "gold",
            "issue": "sales",
            "value": 90,
            "policies": {"eligibility": "customer.attributes.tier == 'gold'"},
        },
        {"id": "mail", "issue": "sales", "value": 5, "consent": ["marketing_email"]},
        {"id": "call", "issue": "sales", "value": 500, "channels": ["call_center"]},
        {"id": "new", "issue": "sales", "value": 30, "lever": 0.7, "prior_propensity": 0.11},
    ],
}
# "new" has no score: its prior propensity stands in (model version "").
PROPENSITIES = {"keep": 0.123456789, "help": 0.4, "gold": 0.9, "mail": 0.6, "call": 0.5}


def table_from_explanation(decision: Decision, catalog: Catalog) -> CandidateTable:
    """The CandidateTable the decision kernel hands the log, rebuilt from an explained
    decision: its candidates in catalog order, P as scored (before any switch)."""
    assert decision.explanation is not None
    place = {a.action_id: n for n, a in enumerate(catalog.actions)}
    explained = sorted(decision.explanation.candidates, key=lambda c: place[c.action_id])
    raw = {a.action_id: PROPENSITIES.get(a.action_id, a.prior_propensity) for a in catalog.actions}
    listing = {"enabled", "channels", "validity"}  # removed before scoring: never scored
    return CandidateTable(
        catalog_version=catalog.version,
        action_ids=tuple(c.action_id for c in explained),
        positions=np.array([place[c.action_id] for c in explained], dtype=np.int64),
        propensity=np.array(
            [0.0 if c.removed_by in listing else raw[c.action_id] for c in explained]
        ),
        model_versions=tuple(c.model_version for c in explained),
        context_weight=np.array([c.context_weight or 1.0 for c in explained]),
        priority=np.array([c.priority for c in explained]),
        removed_by={n: c.removed_by for n, c in enumerate(explained) if not c.eligible},
    )


async def decided() -> tuple[Decision, dict[str, Any], Catalog, ProfileContext]:
    """A real explained decision of the hub over fakes: it, its v1 snapshot as recorded,
    the catalog and the profile context it used."""
    hub = await make_hub(CATALOG, PROPENSITIES)
    hub.identity.profiles[("email", "zoe@example.com")] = "p-zoe"
    profile = ProfileContext(
        "p-zoe",
        attributes={"tier": "silver"},
        counters={"page_view": EventCounter("page_view", 4, 0.0, NOW - timedelta(hours=2))},
        consents={"marketing_email": False},
    )
    hub.context.contexts["p-zoe"] = profile
    decision = await hub.engine.decide(
        DecideCommand(ZOE, "web", placement="home", context={"device": "ios"}, explain=True)
    )
    catalog = await hub.arbitration.catalog()
    # The v1 snapshot of this decision as the hub wrote it before the compact format: every
    # candidate's factors as arbitration explained them.
    assert decision.explanation is not None
    explained = decision.explanation.candidates
    offered = tuple(a for a in catalog.actions if a.enabled and a.offered_on("web"))
    ids = {a.action_id for a in offered}
    listed = CandidateList(
        offered,
        tuple(c for c in explained if c.action_id not in ids),
        catalog.version,
        catalog.min_priority,
    )
    scores = [
        CandidateScore(c.action_id, c.propensity, c.model_version, not c.model_version)
        for c in explained
        if c.action_id in ids
    ]
    result = Prioritization(
        None, None, tuple(c for c in explained if c.action_id in ids), catalog.min_priority, ""
    )
    snapshot = decision_snapshot(profile, {"device": "ios"}, "web", "home", listed, scores, result)
    return decision, json.loads(json.dumps(snapshot)), catalog, profile


def record_with(snapshot: dict[str, Any], served: str) -> DecisionRecord:
    return DecisionRecord("d1", "", "p-zoe", "web", "home", served, NOW, {SNAPSHOT_KEY: snapshot})


def by_id(decision: LoggedDecision | str) -> dict[str, LoggedCandidate]:
    assert isinstance(decision, LoggedDecision), decision
    return {c.action_id: c for c in decision.candidates}


def assert_same(v1: LoggedCandidate, v2: LoggedCandidate) -> None:
    assert (v1.eligible, v1.removed_by) == (v2.eligible, v2.removed_by), v1.action_id
    if v1.removed_by in ("channels", "enabled", "validity"):
        return  # v1 kept only the rule that removed it
    assert (v1.issue, v1.group, v1.model, v1.model_version) == (
        v2.issue,
        v2.group,
        v2.model,
        v2.model_version,
    )
    assert (v1.value, v1.lever, v1.prior_propensity) == (v2.value, v2.lever, v2.prior_propensity)
    for name in ("propensity", "context_weight", "priority"):  # packed as float32
        assert getattr(v2, name) == pytest.approx(getattr(v1, name), rel=1e-6), (v1, name)


async def test_a_real_decision_reads_the_same_from_v1_and_v2() -> None:
    decision, v1, catalog, profile = await decided()
    served = decision.action.action_id if decision.action else ""
    table = table_from_explanation(decision, catalog)

    v2 = compact_snapshot(profile, {"device": "ios"}, "web", "home", table, 0.1)

    # JSON-safe: what orjson writes (the context repository) reads back the same.
    v2 = orjson.loads(orjson.dumps(v2))
    old = by_id(read_logged_decision(record_with(v1, served), [], None))
    new = by_id(read_logged_decision(record_with(v2, served), [], None, {catalog.version: catalog}))
    assert set(old) == set(new) == {a.action_id for a in catalog.actions}
    for action_id, candidate in old.items():
        assert_same(candidate, new[action_id])
    # The parts the catalog gives and the switches: V and L of "help" count as 1.
    assert (new["help"].value, new["help"].lever) == (1.0, 1.0)
    assert new["help"].priority == pytest.approx(0.4)
    assert new["keep"].context_weight == pytest.approx(1.0 + 4 / 3)
    assert new["keep"].propensity == pytest.approx(0.123456789, rel=1e-7)
    assert (new["gold"].removed_by, new["mail"].removed_by) == (
        "eligibility@action:gold",
        "consent:marketing_email",
    )
    assert new["new"].model_version == "" and new["new"].propensity == pytest.approx(0.11)
    assert not new["call"].eligible and new["call"].removed_by == "channels"
    # What was removed is listed only for removed candidates; the rest are eligible.
    assert {k for k, c in new.items() if not c.eligible} == {"gold", "mail", "call"}


async def test_a_v1_snapshot_compacts_to_the_same_reading() -> None:
    decision, v1, catalog, _ = await decided()
    served = decision.action.action_id if decision.action else ""
    record = record_with(v1, served)

    compact, before, after = compact_v1(record, catalog)

    assert compact is not None and before is not None and after is not None
    assert compact["version"] == 2 and "candidates" not in compact
    old, new = by_id(before), by_id(after)
    for action_id, candidate in old.items():
        assert_same(candidate, new[action_id])
    assert after.served is not None and after.served.action_id == served
    # A catalog of another content under that version is not the one it was decided with.
    altered = parse_catalog({**CATALOG, "actions": CATALOG["actions"][:3]})
    assert compact_v1(record, replace(altered, version=catalog.version))[0] is None


async def test_v2_is_small_for_fifty_candidates_of_a_first_seen_cookie() -> None:
    rng = np.random.default_rng(1)
    table = CandidateTable(
        catalog_version="0123456789abcdef",
        action_ids=tuple(f"a{n}" for n in range(50)),
        positions=np.arange(50),
        propensity=rng.random(50).astype(np.float32).astype(np.float64),
        model_versions=("demo_propensity:1",) * 50,
        context_weight=np.ones(50),
        priority=rng.random(50),
    )
    cookie = ProfileContext("0123456789abcdef0123456789abcdef")

    snapshot = compact_snapshot(cookie, {"device": "mobile", "page": "home"}, "web", "", table, 0)

    size = len(orjson.dumps(snapshot))
    assert size <= 800, size  # v1 of the same: ~16 KB
    packed = unpack_v2(snapshot)
    assert np.array_equal(packed.positions, np.arange(50))
    assert np.array_equal(packed.propensity, table.propensity.astype(np.float32))
    assert "context_weight" not in snapshot and "model_index" not in snapshot
    assert "removed_by" not in snapshot


def test_v2_survives_a_protobuf_struct_and_rejects_inconsistent_arrays() -> None:
    catalog = parse_catalog(CATALOG)
    table = CandidateTable(
        catalog_version=catalog.version,
        action_ids=("keep", "new"),
        positions=np.array([0, 5]),
        propensity=np.array([0.25, 0.11]),
        model_versions=("m:1", ""),
        context_weight=np.array([1.5, 1.0]),
        priority=np.array([18.0, 0.0]),
        removed_by={1: "contact:after_reject"},
    )
    snapshot = compact_snapshot(ProfileContext("p"), {}, "web", "", table, 0.1)
    # The mesh carries the payload as a Struct: every number a double.
    as_struct = json.loads(json.dumps(snapshot).replace('"version": 2', '"version": 2.0'))
    found = by_id(
        read_logged_decision(record_with(as_struct, "keep"), [], None, {catalog.version: catalog})
    )
    assert found["keep"].context_weight == 1.5 and found["keep"].model_version == "m:1"
    assert found["new"].model_version == "" and found["new"].removed_by == "contact:after_reject"
    assert found["new"].priority == 0.0 and not found["new"].eligible

    truncated = {**snapshot, "propensity": snapshot["propensity"][:8]}
    beyond = compact_snapshot(
        ProfileContext("p"), {}, "web", "", replace(table, positions=np.array([0, 60])), 0.1
    )
    for bad in (truncated, beyond, {**snapshot, "removed_by": {"7": "x"}}):
        assert read_logged_decision(record_with(bad, ""), [], None, {catalog.version: catalog}) == (
            UNREADABLE
        )


def test_an_unknown_catalog_version_is_skipped_and_counted() -> None:
    catalog = parse_catalog(CATALOG)
    table = CandidateTable(
        "gone",
        ("keep",),
        np.array([0]),
        np.array([0.2]),
        ("m:1",),
        np.array([1.0]),
        np.array([9.6]),
    )
    snapshot = compact_snapshot(ProfileContext("p"), {}, "web", "", table, 0)
    reading = LogReading()

    found = read_logged_decision(record_with(snapshot, "keep"), [], None, {"other": catalog})

    assert found == UNKNOWN_CATALOG
    reading.skip(found)
    reading.skip(found)
    assert reading.warnings() == [
        "2 logged decision(s) skipped: unknown catalog version"
        " (its catalog was never stored by version)"
    ]


def rich_context() -> ProfileContext:
    at = NOW - timedelta(hours=1)
    return ProfileContext(
        profile_id="p1",
        attributes={"tier": "gold", "age": 41},
        counters={
            "purchase": EventCounter("purchase", 3, 120.5, at, at - timedelta(days=9), {"k": 1}),
            "page_view": EventCounter("page_view", 7, 0.0, NOW - timedelta(minutes=3)),
        },
        interactions=(InteractionSummary("keep", "web", 2, 1, 1, 0, 1, 0, at),),
        windows={"24h": {"page_view": WindowAggregate("page_view", "24h", 4, 0.0)}},
        channels={"web": ChannelActivity("web", at, NOW, 9)},
        predictions={"churn": Prediction("churn", 0.7, "churn:2", at)},
        consents={"profiling": True, "marketing_email": False},
        contacts=(
            Contact("keep", "web", "decision", NOW - timedelta(hours=2)),
            Contact("keep", "email", "reject", NOW - timedelta(days=3)),
        ),
    )


def test_the_compact_profile_context_gives_the_same_features() -> None:
    context = rich_context()
    compact = profile_context_to_dict(context, compact=True)
    assert len(orjson.dumps(compact)) < 0.7 * len(orjson.dumps(profile_context_to_dict(context)))
    back = profile_context_from_dict(orjson.loads(orjson.dumps(compact)), compact=True)
    # One feature of every kind features.py compiles.
    names = [
        "event_count:purchase",
        "event_value_sum:purchase",
        "event_count_24h:page_view",
        "event_value_sum_24h:page_view",
        "hours_since_last:purchase",
        "prediction:churn",
        "attribute:age",
        "attribute:tier=gold",
        "request:device=ios",
        "channel=web",
        "personalization=full",
        "consent:marketing_email",
        "contact_count_7d:any",
        "contact_count_1d:decision",
        "action.value",
        "action.issue=retention",
        "interaction:accepts",
    ]
    builder = FeatureBuilder([FeatureSpec(name, -1.0) for name in names])
    candidates = [ScoringCandidate("keep", "m", "retention", "d", 40.0, 1.2, 0.3)]

    def features(of: ProfileContext) -> list[float]:
        matrix = builder.matrix(ScoringInput(of, {"device": "ios"}, "web", NOW), candidates)
        return [float(x) for x in matrix[0]]

    assert features(back) == pytest.approx(features(context), abs=1e-6)
    assert features(context)[names.index("contact_count_7d:any")] == 2
    # Times are kept to the millisecond; what no feature reads is left out.
    assert (
        back.counters["purchase"].last_occurred_at == context.counters["purchase"].last_occurred_at
    )
    assert back.channels == {} and back.counters["purchase"].last_values == {}


async def test_the_kernels_own_table_logs_what_the_v1_snapshot_did() -> None:
    """The CandidateTable arbitration's kernel hands over (Prioritization.table), written
    by compact_snapshot, reads as the candidates of the same decision's v1 snapshot."""
    decision, v1, catalog, profile = await decided()
    hub = await make_hub(CATALOG, PROPENSITIES)
    scored = [
        ScoredCandidate(c["action_id"], c["propensity"], c["model_version"])
        for c in v1["candidates"]
        if "propensity" in c
    ]
    result = await hub.arbitration.prioritize(
        scored, "web", context=profile, request_context={"device": "ios"}, placement="home"
    )
    assert result.table is not None

    v2 = compact_snapshot(profile, {"device": "ios"}, "web", "home", result.table, 0.1)

    served = decision.action.action_id if decision.action else ""
    old = by_id(read_logged_decision(record_with(v1, served), [], None))
    new = by_id(read_logged_decision(record_with(v2, served), [], None, {catalog.version: catalog}))
    # The kernel's table holds the scored candidates (the listing's removals are not in it).
    assert set(new) == {c.action_id for c in scored}
    for action_id, candidate in new.items():
        assert_same(old[action_id], candidate)
