"""Catalog documents with issues, groups and CEL policies; P x C x V x L with factor
switches; minimum priority; exploration and its logged selection probability."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from libs.contracts.arbitration import CandidateExplanation, ScoredCandidate
from libs.contracts.context import (
    Contact,
    EventCounter,
    PersonalizationLevel,
    ProfileContext,
    WindowAggregate,
)
from libs.errors import InvalidArgument
from libs.priority import priority_factors
from services.arbitration.catalog import catalog_to_document, parse_catalog, parse_catalog_yaml
from services.arbitration.exploration import select
from services.arbitration.model import Exploration
from services.arbitration.service import ArbitrationService
from tests.unit.fakes import FakeCatalogStore, arbitration_units
from tools.catalog_50 import catalog_of_50, policy_benchmark

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

DOCUMENT = """
min_priority: 1.0
policies:
  eligibility: "customer.known"
issues:
  retention:
    policies:
      eligibility: "'cancel_page_view' in customer.counts"
      suitability: "request.channel != 'branch'"
    context_weight: "double(customer.counts.cancel_page_view) / 2.0"
    groups:
      offers:
        policies: {applicability: "!has(request.checkout)"}
  service:
    factors: {propensity: false, lever: false}
actions:
  - id: gold_card
    issue: retention
    group: offers
    value: 10
    lever: 2
    policies: {suitability: "action.value * action.lever >= 20.0"}
  - id: silver_card
    issue: retention
    group: offers
    value: 10
    consent: [marketing_email]
  - id: care_call
    issue: service
    value: 3
    lever: 10
"""


def customer(**extra: Any) -> ProfileContext:
    fields: dict[str, Any] = {
        "counters": {"cancel_page_view": EventCounter("cancel_page_view", 4, 0.0, NOW)},
        "consents": {"marketing_email": True},
    }
    fields.update(extra)
    return ProfileContext("p1", **fields)


async def service_with(document: str | dict[str, Any], seed: int = 7) -> ArbitrationService:
    service = ArbitrationService(
        arbitration_units(FakeCatalogStore()), clock=lambda: NOW, rng=random.Random(seed)
    )
    parsed = parse_catalog(document) if isinstance(document, dict) else parse_catalog_yaml(document)
    await service.apply_catalog(parsed)
    return service


def refusal(document: str) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        parse_catalog_yaml(document)
    return [(v.field, v.description) for v in caught.value.violations]


SCORED = [
    ScoredCandidate("gold_card", 0.2, "m:1"),
    ScoredCandidate("silver_card", 0.3, "m:1"),
    ScoredCandidate("care_call", 0.9, "m:1"),
]

# ------------------------------------------------------------------------------------ parsing


def test_the_document_is_compiled_into_each_actions_rules_in_evaluation_order() -> None:
    catalog = parse_catalog_yaml(DOCUMENT)

    gold = catalog.action("gold_card")
    assert gold is not None
    assert [r.name for r in gold.rules] == [
        "eligibility@catalog",
        "eligibility@issue:retention",
        "applicability@group:retention/offers",
        "suitability@issue:retention",
        "suitability@action:gold_card",
    ]
    assert gold.context_weight_rule is not None
    assert gold.context_weight_rule.name == "context_weight@issue:retention"
    care = catalog.action("care_call")
    assert care is not None and care.factors.off() == ("propensity", "lever")
    assert catalog.customer_fields == frozenset({"known", "counts"})
    # The normalised document round-trips to the same catalog and version.
    again = parse_catalog(catalog_to_document(catalog))
    assert again == catalog and again.version == catalog.version
    assert parse_catalog(yaml.safe_load(DOCUMENT)).version == catalog.version


@pytest.mark.parametrize(
    ("old", "new", "field", "says"),
    [
        (
            'eligibility: "customer.known"',
            'eligibility: "customer.known &&"',
            "policies.eligibility",
            "does not compile",
        ),
        (
            "suitability: \"request.channel != 'branch'\"",
            "suitability: \"channel != 'branch'\"",
            "issues.retention.policies.suitability",
            "unknown variable(s) channel",
        ),
        (
            'applicability: "!has(request.checkout)"',
            'applicability: "("',
            "issues.retention.groups.offers.policies.applicability",
            "does not compile",
        ),
        (
            'suitability: "action.value * action.lever >= 20.0"',
            'suitability: "price > 3"',
            "actions[0] (gold_card).policies.suitability",
            "unknown variable(s) price",
        ),
        (
            'context_weight: "double(customer.counts.cancel_page_view) / 2.0"',
            'context_weight: "1 +"',
            "issues.retention.context_weight",
            "does not compile",
        ),
        (
            'policies: {suitability: "action.value * action.lever >= 20.0"}',
            'policies: {suitable: "true"}',
            "actions[0] (gold_card).policies.suitable",
            "unknown field",
        ),
        (
            "factors: {propensity: false, lever: false}",
            "factors: {propensity: no, colour: false}",
            "issues.service.factors.colour",
            "unknown field",
        ),
        ("issue: service", "issue: sevice", "actions[2] (care_call).issue", "not declared"),
        (
            "group: offers\n    value: 10\n    consent",
            "group: offer\n    value: 10\n    consent",
            "actions[1] (silver_card).group",
            "not a group of issues.retention",
        ),
        (
            "consent: [marketing_email]",
            "consent: [Marketing Email]",
            "actions[1] (silver_card).consent",
            "consent purposes",
        ),
        (
            "min_priority: 1.0",
            "min_priority: 1.0\nexploration: {policy: softmax}",
            "exploration.policy",
            "one of greedy",
        ),
        (
            "min_priority: 1.0",
            "min_priority: 1.0\nexploration: {policy: epsilon_greedy, epsilon: 2}",
            "exploration.epsilon",
            "within [0, 1]",
        ),
        (
            "min_priority: 1.0",
            "min_priority: 1.0\nexploration: {policy: thompson, draws: 5}",
            "exploration.draws",
            "integer",
        ),
        (
            "    value: 3\n",
            "    value: 3\n    valid_from: soon\n",
            "actions[2] (care_call).valid_from",
            "timestamp",
        ),
    ],
)
def test_every_kind_of_error_names_its_place(old: str, new: str, field: str, says: str) -> None:
    assert old in DOCUMENT
    problems = refusal(DOCUMENT.replace(old, new, 1))

    assert [f for f, _ in problems] == [field], problems
    assert says in problems[0][1]


def test_a_compile_error_carries_the_compilers_message() -> None:
    (problem,) = refusal(DOCUMENT.replace('"customer.known"', '"customer.known &&"'))

    assert "Syntax error" in problem[1]


def test_names_bound_by_macros_are_not_unknown_variables() -> None:
    catalog = parse_catalog_yaml(
        DOCUMENT.replace(
            '"customer.known"',
            "\"customer.contacts.all(c, c.kind != 'reject') && [1].exists(x, x > 0)\"",
        )
    )

    assert catalog.customer_fields is not None and "contacts" in catalog.customer_fields


def test_validity_window_must_be_ordered() -> None:
    problems = refusal(
        DOCUMENT.replace(
            "    value: 3\n",
            "    value: 3\n    valid_from: 2026-02-01T00:00:00Z\n"
            "    valid_until: 2026-01-01T00:00:00Z\n",
        )
    )

    assert problems == [("actions[2] (care_call).valid_until", "must be after valid_from")]


# ------------------------------------------------------------------------- policies at work


async def test_policies_consent_and_factors_make_the_explanation() -> None:
    service = await service_with(DOCUMENT)

    result = await service.prioritize(
        SCORED, "web", explain=True, context=customer(consents={}), request_context={}
    )

    by_id = {c.action_id: c for c in result.ranked}
    assert by_id["silver_card"].removed_by == "consent:marketing_email"
    assert "never given" in by_id["silver_card"].reason
    gold = by_id["gold_card"]
    # C = 4 / 2 = 2 (issue context weight): 0.2 x 2 x 10 x 2 = 8.
    assert gold.eligible and gold.context_weight == 2.0 and gold.priority == pytest.approx(8.0)
    care = by_id["care_call"]
    # Propensity and lever switched off for the service issue: 1 x 1 x 3 x 1 = 3.
    assert (care.propensity, care.lever, care.priority) == (1.0, 1.0, 3.0)
    assert "propensity (would be 0.9)" in care.reason
    assert [c.action_id for c in result.ranked] == ["gold_card", "care_call", "silver_card"]
    assert [c.rank for c in result.ranked] == [1, 2, 0]
    assert result.winner is not None and result.winner.action_id == "gold_card"
    assert (result.selection_probability, result.exploration) == (1.0, "greedy")


async def test_every_ranked_explanation_is_what_priority_factors_gives() -> None:
    """Explanations are made without priority_factors when every factor is on: the same
    values, field by field, as it gives (and as an unexplained decision's winner)."""
    service = await service_with(DOCUMENT)
    catalog = await service.catalog()
    profile = customer(consents={"marketing_email": True})

    result = await service.prioritize(
        SCORED, "web", explain=True, context=profile, request_context={}
    )
    quiet = await service.prioritize(SCORED, "web", context=profile, request_context={})

    scored = {s.action_id: s for s in SCORED}
    ranked = [c for c in result.ranked if c.eligible]
    assert len(ranked) == 3
    for explained in ranked:
        action = catalog.action(explained.action_id)
        assert action is not None
        expected = priority_factors(
            action, scored[action.action_id], explained.context_weight, rank=explained.rank
        )
        assert explained == replace(expected, won=explained.won)
    assert quiet.best == result.best


@pytest.mark.parametrize(
    ("channel", "request_context", "profile", "removed_by"),
    [
        ("web", {}, ProfileContext(""), "eligibility@catalog"),
        ("web", {}, ProfileContext("p1"), "eligibility@issue:retention"),
        ("web", {"checkout": True}, None, "applicability@group:retention/offers"),
        ("branch", {}, None, "suitability@issue:retention"),
    ],
)
async def test_each_level_removes_with_its_name(
    channel: str,
    request_context: dict[str, Any],
    profile: ProfileContext | None,
    removed_by: str,
) -> None:
    service = await service_with(DOCUMENT)

    result = await service.prioritize(
        SCORED,
        channel,
        explain=True,
        context=profile or customer(),
        request_context=request_context,
    )

    gold = next(c for c in result.ranked if c.action_id == "gold_card")
    assert (gold.eligible, gold.removed_by) == (False, removed_by)
    assert "is false" in gold.reason


async def test_an_action_rule_reads_the_action() -> None:
    service = await service_with(DOCUMENT.replace("lever: 2", "lever: 1.5"))

    result = await service.prioritize(SCORED, "web", explain=True, context=customer())

    gold = next(c for c in result.ranked if c.action_id == "gold_card")
    assert gold.removed_by == "suitability@action:gold_card"


async def test_an_evaluation_error_removes_the_candidate_with_the_error() -> None:
    broken = DOCUMENT.replace('"customer.known"', "\"customer.attributes.tier == 'gold'\"")
    service = await service_with(broken)

    result = await service.prioritize(SCORED, "web", explain=True, context=customer())

    assert result.winner is None
    assert {c.removed_by for c in result.ranked} == {"eligibility@catalog"}
    assert all("evaluation failed" in c.reason and "tier" in c.reason for c in result.ranked)
    assert result.summary == "no action: every candidate was removed (eligibility@catalog x3)"


async def test_a_context_weight_that_is_not_a_number_removes_the_candidate() -> None:
    service = await service_with(
        DOCUMENT.replace(
            '"double(customer.counts.cancel_page_view) / 2.0"', '"customer.counts.cancel_page_view"'
        ).replace('"customer.known"', '"true"')
    )
    negative = await service_with(
        DOCUMENT.replace('"double(customer.counts.cancel_page_view) / 2.0"', '"-1.0"')
    )

    fine = await service.prioritize(SCORED, "web", explain=True, context=customer())
    refused = await negative.prioritize(SCORED, "web", explain=True, context=customer())

    gold = next(c for c in fine.ranked if c.action_id == "gold_card")
    assert gold.eligible and gold.context_weight == 4.0  # an int is a number too
    bad = next(c for c in refused.ranked if c.action_id == "gold_card")
    assert bad.removed_by == "context_weight@issue:retention"
    assert "finite number >= 0" in bad.reason


async def test_personalization_consent_follows_the_level() -> None:
    service = await service_with(
        DOCUMENT.replace("consent: [marketing_email]", "consent: [personalization]")
    )

    none = await service.prioritize(
        SCORED,
        "web",
        explain=True,
        context=customer(personalization=PersonalizationLevel.NONE),
    )
    basic = await service.prioritize(
        SCORED,
        "web",
        explain=True,
        context=customer(personalization=PersonalizationLevel.BASIC),
    )

    assert {c.action_id: c.removed_by for c in none.ranked}["silver_card"] == (
        "consent:personalization"
    )
    assert {c.action_id: c.removed_by for c in basic.ranked}["silver_card"] == ""


async def test_validity_window_is_applied_in_both_steps() -> None:
    document = DOCUMENT.replace(
        "    value: 3\n", "    value: 3\n    valid_until: 2026-03-01T12:00:00Z\n"
    )
    service = await service_with(document)

    listed = await service.list_candidates("web", "", {}, explain=True)
    result = await service.prioritize(SCORED, "web", explain=True, context=customer())

    assert [(r.action_id, r.removed_by) for r in listed.removed] == [("care_call", "validity")]
    care = next(c for c in result.ranked if c.action_id == "care_call")
    assert care.removed_by == "validity" and "expired" in care.reason


async def test_customer_variable_exposes_windows_contacts_and_predictions() -> None:
    rich = DOCUMENT.replace(
        '"customer.known"',
        "\"customer.windows['24h'].purchase.count == 2 && customer.contacts[0].kind == 'reject'"
        " && now - customer.contacts[0].at < duration('48h') && customer.id == 'p1'\"",
    )
    service = await service_with(rich)
    profile = customer(
        windows={"24h": {"purchase": WindowAggregate("purchase", "24h", 2, 10.0)}},
        contacts=(Contact("x", "web", "reject", NOW),),
    )

    result = await service.prioritize(SCORED, "web", explain=True, context=profile)

    assert result.winner is not None and result.winner.action_id == "gold_card"


# ------------------------------------------------------------- ranking and minimum priority


async def test_ties_are_broken_by_action_id() -> None:
    document = {
        "actions": [
            {"id": "b", "issue": "s", "value": 2},
            {"id": "a", "issue": "s", "value": 1},
            {"id": "c", "issue": "s", "value": 4},
        ]
    }
    service = await service_with(document)
    scored = [ScoredCandidate("c", 0.25), ScoredCandidate("b", 0.5), ScoredCandidate("a", 1.0)]

    forward = await service.prioritize(scored, "web", explain=True)
    backward = await service.prioritize(scored[::-1], "web", explain=True)

    assert [c.action_id for c in forward.ranked] == ["a", "b", "c"]
    assert forward == backward
    assert forward.winner is not None and forward.winner.action_id == "a"


async def test_nothing_clears_the_minimum_priority_is_no_action_with_why() -> None:
    service = await service_with(DOCUMENT.replace("min_priority: 1.0", "min_priority: 50"))

    result = await service.prioritize(SCORED, "web", explain=True, context=customer(consents={}))

    assert result.winner is None
    assert result.best is not None and result.best.action_id == "gold_card"
    assert not any(c.won for c in result.ranked)
    assert result.summary == (
        "no action: the best candidate gold_card has priority 8, below the minimum 50;"
        " removed: consent:marketing_email x1"
    )
    assert result.selection_probability == 1.0


# --------------------------------------------------------------------------------- exploration


def contenders(*priorities: float) -> tuple[CandidateExplanation, ...]:
    return tuple(
        CandidateExplanation(
            f"a{i}", True, propensity=p, context_weight=1, value=1, lever=1, priority=p, rank=i + 1
        )
        for i, p in enumerate(priorities)
    )


def test_epsilon_greedy_frequencies_match_the_exact_probabilities() -> None:
    rng = random.Random(11)
    policy = Exploration("epsilon_greedy", epsilon=0.2)
    options = contenders(0.5, 0.4, 0.3, 0.2)
    runs = 20_000

    chosen = [select(policy, options, rng) for _ in range(runs)]

    counts = Counter(s.winner.action_id for s in chosen if s.winner)
    reported = {s.winner.action_id: s.probability for s in chosen if s.winner}
    assert reported == pytest.approx({"a0": 0.85, "a1": 0.05, "a2": 0.05, "a3": 0.05})
    for action_id, probability in reported.items():
        assert counts[action_id] / runs == pytest.approx(probability, abs=0.01)
    assert all(s.explored == (s.winner is not options[0]) for s in chosen)


def test_thompson_estimates_match_the_observed_frequencies() -> None:
    rng = random.Random(5)
    policy = Exploration("thompson", pseudo_count=20, draws=400)
    options = contenders(0.30, 0.25, 0.10)
    runs = 3_000

    chosen = [select(policy, options, rng) for _ in range(runs)]

    counts = Counter(s.winner.action_id for s in chosen if s.winner)
    for action_id in ("a0", "a1"):
        estimates = [s.probability for s in chosen if s.winner and s.winner.action_id == action_id]
        assert sum(estimates) / len(estimates) == pytest.approx(counts[action_id] / runs, abs=0.04)
    assert counts["a0"] > counts["a1"] > counts["a2"]
    assert all(0 < s.probability <= 1 for s in chosen)


def test_a_switched_off_propensity_is_not_sampled() -> None:
    rng = random.Random(3)
    policy = Exploration("thompson", pseudo_count=2, draws=100)
    # The first's propensity is off (fixed at 1 x 0.5): it always beats 0.4 at most.
    options = (
        CandidateExplanation(
            "fixed",
            True,
            propensity=1.0,
            context_weight=1,
            value=0.5,
            lever=1,
            priority=0.5,
            rank=1,
        ),
        CandidateExplanation(
            "wild",
            True,
            propensity=0.3,
            context_weight=1,
            value=1.6,
            lever=1,
            priority=0.48,
            rank=2,
        ),
    )

    picks = {select(policy, options, rng, [False, True]).winner.action_id for _ in range(200)}  # type: ignore[union-attr]

    assert picks == {"fixed", "wild"}


async def test_exploration_is_reported_and_reproducible_with_a_seed() -> None:
    document = DOCUMENT.replace(
        "min_priority: 1.0",
        "min_priority: 1.0\nexploration: {policy: epsilon_greedy, epsilon: 0.5}",
    )
    first = await service_with(document, seed=1)
    second = await service_with(document, seed=1)

    runs = [
        await first.prioritize(SCORED, "web", explain=True, context=customer()) for _ in range(40)
    ]
    again = [await second.prioritize(SCORED, "web", context=customer()) for _ in range(40)]

    assert [r.winner for r in runs] == [r.winner for r in again]
    served = {r.winner.action_id for r in runs if r.winner}
    assert served == {"gold_card", "silver_card", "care_call"}
    for run in runs:
        assert run.exploration == "epsilon_greedy"
        assert run.best is not None and run.best.won
        assert run.selection_probability == pytest.approx(
            0.5 / 3 + (0.5 if run.best.action_id == "gold_card" else 0.0)
        )
        if run.best.action_id != "gold_card":
            assert "served by exploration" in run.summary


def test_no_contenders_is_no_action_with_probability_one() -> None:
    chosen = select(Exploration("thompson"), (), random.Random(1))

    assert (chosen.winner, chosen.probability, chosen.policy) == (None, 1.0, "thompson")


# ---------------------------------------------------------------------------------- benchmark


def test_the_50_action_catalog_has_policies_on_every_level() -> None:
    catalog = catalog_of_50()

    assert len(catalog.actions) == 50
    names = {rule.name.split("@")[1].split(":")[0] for a in catalog.actions for rule in a.rules}
    assert names == {"catalog", "issue", "group", "action"}


def test_the_policy_benchmark_runs() -> None:
    figures = policy_benchmark(decisions=20)

    assert figures["actions"] == 50 and figures["us_per_decision"] > 0


# ------------------------------------------------------------------------- logged decisions


def test_the_logged_payload_keeps_the_selection_probability() -> None:
    from services.orchestrator.model import Decision

    decision = Decision(
        "d1", "p1", "web", "", None, 0.0, 0.0, 0.0, 0.0, 0.0, "", NOW,
        selection_probability=0.0125, exploration="epsilon_greedy",
    )  # fmt: skip

    payload = decision.to_payload()
    old = {k: v for k, v in payload.items() if k not in {"selection_probability", "exploration"}}

    assert (payload["selection_probability"], payload["exploration"]) == (0.0125, "epsilon_greedy")
    assert Decision.from_payload(payload) == decision
    logged_before = Decision.from_payload(old)
    assert (logged_before.selection_probability, logged_before.exploration) == (1.0, "greedy")
