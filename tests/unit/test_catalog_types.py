"""Type-checking a catalog's CEL expressions when it is applied (typecheck.py): what no
value of the declared types can make work is refused, naming the place; what depends on
values only a decision has is accepted (it fails closed then)."""

from __future__ import annotations

from typing import Any

import pytest

from libs.errors import InvalidArgument
from services.arbitration.catalog import parse_catalog


def with_rule(eligibility: str | None = None, weight: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"id": "a", "issue": "i", "value": 10}
    if eligibility is not None:
        action["policies"] = {"eligibility": eligibility}
    if weight is not None:
        action["context_weight"] = weight
    return {"actions": [action]}


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("action.value > 'ten'", "does not type-check: No such overload"),
        ("1 + 'a' == 2", "does not type-check: No such overload"),
        ("1 + 2", "must return a bool (true or false), returns int (3)"),
        ("action.value + 1 > 2.0", "does not type-check: Unsupported operation: float + int"),
        ("customer.counts.purchase > 'many'", "does not type-check"),
        ("customer.windows['24h'].purchase.count > 'a'", "does not type-check"),
        ("customer.interactions.exists(i, i.clicks > 'a')", "does not type-check"),
        ("!customer.known || customer.last_at.purchase + 1 > now", "does not type-check"),
        ("customer.tier == 'gold'", "customer has no field 'tier'"),
        ("action.price > 1.0", "action has no field 'price'"),
        ("size(1) > 0", "does not type-check: Undefined variable or function: 'size'"),
        ("[1].exists(x, x > 0) && x > 0", "Undefined variable or function: 'x'"),
        ("customer.attributes", "must return a bool (true or false), returns map"),
    ],
)
def test_a_policy_that_cannot_type_check_is_refused(rule: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_catalog(with_rule(eligibility=rule))
    (violation,) = refused.value.violations
    assert violation.field == "actions[0] (a).policies.eligibility"
    assert why in violation.description


@pytest.mark.parametrize(
    ("weight", "why"),
    [
        ("'high'", "returns string ('high')"),
        ("customer.known", "returns bool (True)"),
        ("1.0 + 1", "does not type-check"),
    ],
)
def test_a_context_weight_must_be_a_number(weight: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_catalog(with_rule(weight=weight))
    (violation,) = refused.value.violations
    assert violation.field == "actions[0] (a).context_weight"
    assert why in violation.description


@pytest.mark.parametrize(
    "rule",
    [
        # Profile attributes and the request's context have no declared type.
        "customer.attributes.tenure > 2",
        "customer.attributes.tier.startsWith('g') && customer.attributes.age > 30",
        "request.page == 'home' && request.basket_total > 100.0",
        "customer.last.purchase.sku == 'x'",
        # Missing keys, indexes, zero divisors: values.
        "customer.counts.purchase > 2",
        "customer.interactions[3].clicks > 1",
        "1 / (int(action.value) - 10) > 0",
        "timestamp(request.since) < now",
        "'customer.tier' != 'action.price'",
        "has(customer.counts.purchase) ? customer.counts.purchase > 1 : true",
        "customer.windows['7d'].purchase.sum >= 100.0",
        "customer.predictions.churn > 0.5 || customer.consents.marketing",
        "customer.channels.web.last_seen_at > now - duration('1h')",
        "action.channels.exists(c, c == request.channel)",
    ],
)
def test_what_only_a_decision_can_tell_is_accepted(rule: str) -> None:
    parse_catalog(with_rule(eligibility=rule, weight="customer.counts.purchase > 3 ? 2 : 1.5"))


def test_a_stored_catalog_is_read_as_it_is() -> None:
    # Applied by a release that did not type-check: still read, its rule fails closed.
    catalog = parse_catalog(with_rule(eligibility="1 + 2"), check_types=False)
    assert catalog.actions[0].rules[0].source == "1 + 2"


def test_every_type_error_of_the_document_is_named_at_once() -> None:
    document = {
        "policies": {"applicability": "1 + 'a' == 2"},
        "issues": {
            "i": {"context_weight": "'high'", "groups": {"g": {"policies": {"eligibility": "3"}}}},
            "unused": {"policies": {"suitability": "action.value > 'ten'"}},
        },
        "actions": [{"id": "a", "issue": "i", "group": "g", "value": 10}],
    }
    with pytest.raises(InvalidArgument) as refused:
        parse_catalog(document)
    assert [v.field for v in refused.value.violations] == [
        "policies.applicability",
        "issues.i.context_weight",
        "issues.i.groups.g.policies.eligibility",
        "issues.unused.policies.suitability",
    ]
