"""How rules run cheaply (policies.RulePlan): ``action.<field>`` written in as literals,
shared rules once per decision, an action's own rules as one conjunction; and that none of
it changes a decision: every verdict, weight and explanation is the one the rules as
written give, evaluated one by one with the ``action`` variable."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import cel
import pytest

from libs.contracts.arbitration import ScoredCandidate
from libs.contracts.context import EventCounter, ProfileContext
from services.arbitration.catalog import parse_catalog
from services.arbitration.model import Catalog
from services.arbitration.policies import (
    KINDS,
    Rule,
    action_references,
    cel_literal,
    customer_variable,
)
from services.arbitration.service import ArbitrationService
from tests.unit.fakes import FakeCatalogStore, arbitration_units
from tools.bench_catalog import BENCH_CHANNEL, bench_catalog
from tools.catalog_50 import busy_customer, catalog_of_50

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Rules that hold, fail, raise, return a non-bool, read the action in every way, or carry
# strings and comments that look like ``action.value``. Some would not type-check: they are
# parsed as a stored catalog is (``check_types=False``), whose rules a release may refuse
# when applied but a decision still runs, failing closed.
RULES = (
    "action.value > 5.0",
    "action.value < 5.0",
    "action.id != 'beta' && customer.known",
    "customer.attributes.tier == 'gold'",
    "'tier' in customer.attributes",
    "action.value",
    'action.name + "!" == "it\'s \\"odd\\"\\\\!"',
    "action.channels.exists(c, c == request.channel)",
    "has(action.value)",
    "action['value'] > 1.0",
    "customer.counts.purchase > 1 // action.value < 0.0",
    "'action.value' != \"action.id\" && action.lever >= 1.0",
    "now > timestamp('2020-01-01T00:00:00Z') && action.prior_propensity < 0.5",
    "1 / (int(action.value) - 3) > 0",
    "action.value.foo == 1",
    "action.missing == 1",
    "size(customer.attributes)",
    "request.page == 'home' || customer.known",
    "true",
)
WEIGHTS = (
    "action.value / 10.0",
    "double(customer.counts.purchase) * action.lever",
    "action.id",
    "1.0 - action.value",
    "2.0",
)


def document(rules: dict[str, str], weight: str | None) -> dict[str, Any]:
    """Rules placed by level: ``catalog``, ``issue``, ``group`` or ``action`` + kind."""

    def at(level: str) -> dict[str, str]:
        return {kind: rules[f"{level}.{kind}"] for kind in KINDS if f"{level}.{kind}" in rules}

    actions = [
        {"id": "alpha", "issue": "i", "group": "g", "value": 10, "channels": ["web"]},
        {"id": "beta", "issue": "i", "group": "g", "value": 3, "lever": 2, "channels": ["web"]},
        {"id": "gamma", "issue": "i", "group": "h", "value": 4.5, "name": 'it\'s "odd"\\'},
        {"id": "delta", "issue": "j", "value": 7, "prior_propensity": 0.9},
    ]
    for action in actions:
        action["policies"] = at("action")
    issue: dict[str, Any] = {
        "policies": at("issue"),
        "groups": {"g": {"policies": at("group")}, "h": {}},
    }
    if weight is not None:
        issue["context_weight"] = weight
    return {
        "policies": at("catalog"),
        "issues": {"i": issue, "j": {}},
        "actions": actions,
    }


def expected(
    catalog: Catalog, profile: ProfileContext, request: dict[str, Any]
) -> dict[str, tuple[str, str, float]]:
    """What the rules as written decide, one by one: (removed_by, reason, weight)."""
    variables = {
        "customer": customer_variable(profile),
        "request": request,
        "now": NOW,
    }
    outcome: dict[str, tuple[str, str, float]] = {}
    for action in catalog.actions:
        context = cel.Context({**variables, "action": action.cel_value})

        def run(rule: Rule, context: Any = context) -> tuple[Any, str]:
            try:
                return rule.program.execute(context), ""
            except Exception as failure:
                return None, f"{type(failure).__name__}: {failure}"

        found = ("", "", 1.0)
        for rule in action.rules:
            result, error = run(rule)
            if error:
                found = (rule.name, f"evaluation failed ({error}) in {rule.source!r}", 0.0)
            elif result is False:
                found = (rule.name, f"{rule.source!r} is false", 0.0)
            elif result is not True:
                reason = f"{rule.source!r} returned {result!r}, not true or false"
                found = (rule.name, reason, 0.0)
            if found[0]:
                break
        weighting = action.context_weight_rule
        if not found[0] and weighting is not None:
            result, error = run(weighting)
            source = weighting.source
            if error:
                found = (weighting.name, f"evaluation failed ({error}) in {source!r}", 0.0)
            elif isinstance(result, bool) or not isinstance(result, int | float):
                found = (weighting.name, f"{source!r} returned {result!r}, not a number", 0.0)
            elif not math.isfinite(float(result)) or float(result) < 0:
                reason = f"{source!r} returned {float(result)!r}, not a finite number >= 0"
                found = (weighting.name, reason, 0.0)
            else:
                found = ("", "", float(result))
        outcome[action.action_id] = found
    return outcome


def profiles() -> list[ProfileContext]:
    return [
        ProfileContext(""),
        ProfileContext(
            "p1",
            attributes={"tier": "gold"},
            counters={"purchase": EventCounter("purchase", 3, 30.0, NOW)},
        ),
    ]


async def decided(
    catalog: Catalog, profile: ProfileContext, request: dict[str, Any], channel: str = "web"
) -> dict[str, tuple[str, str, float]]:
    service = ArbitrationService(
        arbitration_units(FakeCatalogStore()), clock=lambda: NOW, rng=random.Random(1)
    )
    await service.apply_catalog(catalog)
    scored = [ScoredCandidate(a.action_id, 0.5) for a in catalog.actions]
    result = await service.prioritize(
        scored, channel, explain=True, context=profile, request_context=request
    )
    return {
        c.action_id: (c.removed_by, c.reason, c.context_weight if c.eligible else 0.0)
        for c in result.ranked
    }


def placements(seed: int) -> list[dict[str, str]]:
    """Rules spread over every level and kind, drawn from RULES (reproducible)."""
    rng = random.Random(seed)
    slots = [
        f"{level}.{kind}" for level in ("catalog", "issue", "group", "action") for kind in KINDS
    ]
    return [
        {slot: rng.choice(RULES) for slot in rng.sample(slots, rng.randint(1, len(slots)))}
        for _ in range(12)
    ]


@pytest.mark.parametrize("seed", range(4))
async def test_every_verdict_weight_and_reason_is_that_of_the_rules_as_written(
    seed: int,
) -> None:
    weights = [None, *WEIGHTS]
    for index, rules in enumerate(placements(seed)):
        catalog = parse_catalog(document(rules, weights[index % len(weights)]), check_types=False)
        for profile in profiles():
            request = {"page": "home", "channel": "web", "placement": ""}
            got = await decided(catalog, profile, {"page": "home"})
            want = expected(catalog, profile, request)
            assert got == want, rules


@pytest.mark.parametrize("level", ["catalog", "group", "action"])
@pytest.mark.parametrize("rule", RULES)
async def test_each_rule_alone_on_a_level_decides_as_written(rule: str, level: str) -> None:
    catalog = parse_catalog(
        document({f"{level}.eligibility": rule}, "action.value / 10.0"), check_types=False
    )
    for profile in profiles():
        got = await decided(catalog, profile, {})
        assert got == expected(catalog, profile, {"channel": "web", "placement": ""})


def test_action_fields_are_written_in_as_literals() -> None:
    catalog = parse_catalog(
        document(
            {
                "catalog.suitability": "customer.known || action.value < 1000.0",
                "action.eligibility": "action.value > 5.0",
                "group.applicability": "action['value'] > 1.0",
            },
            None,
        )
    )
    alpha, beta = catalog.action("alpha"), catalog.action("beta")
    assert alpha is not None and beta is not None
    steps = {rule.name: rule for rule in alpha.rule_plan.steps}
    # Read as ``action.<field>``: a copy for this action, no ``action`` variable needed.
    suitable = steps["suitability@catalog"]
    assert suitable.program.source == "customer.known || (10.0) < 1000.0"
    assert not suitable.uses_action and suitable.original is not None
    assert suitable.source == "customer.known || action.value < 1000.0"  # what is shown
    # ``action[...]``: kept as written, the variable is set for it.
    assert steps["applicability@group:i/g"].uses_action
    # ``action.value > 5.0`` holds for alpha whoever the customer is: not run at all, while
    # it never holds for beta (value 3): it stays, and removes it with its name.
    assert alpha.rule_plan.own is not None and "5.0" not in alpha.rule_plan.own.source
    assert beta.rule_plan.own is not None and "(3.0) > 5.0" in beta.rule_plan.own.source


def test_shared_rules_are_one_conjunction_per_level_and_shared_by_key() -> None:
    catalog = catalog_of_50()
    first, second = catalog.actions[0], catalog.actions[1]  # same issue and group

    assert [key for key, _ in first.rule_plan.shared] == [key for key, _ in second.rule_plan.shared]
    assert len(first.rule_plan.shared) == 3  # catalog, issue, group
    assert first.rule_plan.combined and first.rule_plan.own is not None
    # Each action's own program reads no ``action`` variable: nothing converted per action.
    assert not any(a.rule_plan.own_uses_action for a in catalog.actions)


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("action.value > 5.0", ["value"]),
        ("x.action.value == 1", []),
        ("a ? action.id : 'action.x'", ["id"]),
        ("c.exists(x, x == action . name) // action.model", ["name"]),
        ('r"\\"action.issue', ["issue"]),
        ("'''action.id''' == action.group", ["group"]),
        ("action['value'] > 1.0", None),
        ("action.f() == 1", None),
        ("c.exists(action, action.value > 1.0)", None),
        ("action == {}", None),
    ],
)
def test_action_references_skip_strings_comments_and_members(
    source: str, fields: list[str] | None
) -> None:
    found = action_references(source)
    assert (None if found is None else [name for _, _, name in found]) == fields


@pytest.mark.parametrize(
    "value",
    [
        10.0,
        1e-05,
        1.5e20,
        0.1,
        3,
        "plain",
        'it\'s "odd"\\',
        "line\nbreak\ttab\x7f",
        "été ✓",
        [],
        ["a", 1.0],
    ],
)
def test_literals_read_back_as_the_same_value(value: Any) -> None:
    literal = cel_literal(value)
    assert literal is not None
    assert cel.compile(literal).execute() == value


async def test_an_unexplained_decision_serves_what_the_explained_one_does() -> None:
    catalog = catalog_of_50()
    service = ArbitrationService(
        arbitration_units(FakeCatalogStore()), clock=lambda: NOW, rng=random.Random(1)
    )
    await service.apply_catalog(catalog)
    rng = random.Random(3)
    scored = [ScoredCandidate(a.action_id, rng.uniform(0.01, 0.3)) for a in catalog.actions]
    customer = busy_customer(NOW)

    plain = await service.prioritize(scored, "web", context=customer)
    explained = await service.prioritize(scored, "web", explain=True, context=customer)

    assert plain.ranked == ()
    assert (plain.winner, plain.best, plain.summary) == (
        explained.winner,
        explained.best,
        explained.summary,
    )
    assert plain.best is not None and plain.best.rank == 1 and plain.best.won
    ranks = [c.rank for c in explained.ranked if c.eligible]
    assert ranks == list(range(1, len(ranks) + 1))
    priorities = [c.priority for c in explained.ranked if c.eligible]
    assert priorities == sorted(priorities, reverse=True)


@pytest.mark.parametrize("customer", ["new", "generated", "busy"])
async def test_the_bench_catalog_has_every_level_and_keeps_every_action(customer: str) -> None:
    catalog = parse_catalog(bench_catalog(50))
    levels = {rule.name.split("@")[1].split(":")[0] for a in catalog.actions for rule in a.rules}
    kinds = {rule.name.split("@")[0] for a in catalog.actions for rule in a.rules}
    assert levels == {"catalog", "issue", "group", "action"}
    assert kinds == set(KINDS)
    assert all(a.context_weight_rule is not None and a.contact_policies for a in catalog.actions)
    profile = {
        "new": ProfileContext("p-new"),
        "generated": ProfileContext(
            "p-gen", counters={"purchase": EventCounter("purchase", 2, 80.0, NOW)}
        ),
        "busy": busy_customer(NOW),
    }[customer]
    service = ArbitrationService(
        arbitration_units(FakeCatalogStore()), clock=lambda: NOW, rng=random.Random(1)
    )
    await service.apply_catalog(catalog)
    scored = [ScoredCandidate(a.action_id, 0.1) for a in catalog.actions]

    result = await service.prioritize(
        scored,
        BENCH_CHANNEL,
        explain=True,
        context=profile,
        request_context={"device": "mobile", "page": "home"},
    )

    assert [c.removed_by for c in result.ranked if not c.eligible] == []
    assert len(result.ranked) == 50 and result.winner is not None


def test_actions_share_the_verdicts_of_their_catalog_issue_and_group_rules() -> None:
    catalog = catalog_of_50()
    # A decision keeps one verdict per key of RulePlan.shared: one for the catalog's rules,
    # one per issue (5) and one per group (10), whatever the number of actions.
    levels = {key for a in catalog.actions for key, _ in a.rule_plan.shared}
    assert len(levels) == 1 + 5 + 10
    by_group: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for a in catalog.actions:
        keys = tuple(key for key, _ in a.rule_plan.shared)
        by_group.setdefault((a.issue, a.group), set()).add(keys)
    assert all(len(keys) == 1 for keys in by_group.values())
    # What is left per action runs as one program.
    assert all(a.rule_plan.own is not None for a in catalog.actions)
