"""A 50-action catalog with engagement policies on every level (catalog, issue, group,
action) and a context weight per issue, for benchmarks; and the policy benchmark itself:

    python -m tools.catalog_50      # prints CPU microseconds per Prioritize

It measures this catalog with and without its rules, and the catalog `nextbest bench`
applies (tools/bench_catalog.py ``bench_catalog``: the same shape plus contact policies).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.contracts.arbitration import ScoredCandidate
from libs.contracts.context import (
    Contact,
    EventCounter,
    InteractionSummary,
    ProfileContext,
    WindowAggregate,
)
from services.arbitration.catalog import parse_catalog
from services.arbitration.model import ActionDefinition, Catalog
from services.arbitration.service import ArbitrationService
from tools.bench_catalog import BENCH_CHANNEL, bench_catalog

ISSUES = ("retention", "cross_sell", "upsell", "service", "loyalty")
GROUPS = ("offers", "advice")
EVENT_TYPES = (
    "page_view",
    "cancel_page_view",
    "plan_compare_view",
    "purchase",
    "support_call",
    "app_open",
    "login",
    "search",
    "cart_add",
    "review",
)


def catalog_50_document() -> dict[str, Any]:
    """5 issues x 2 groups x 5 actions; three policies at catalog level, two per issue, one
    per group and one per action, all reading the customer, the request or the action."""
    issues: dict[str, Any] = {}
    actions: list[dict[str, Any]] = []
    for issue_index, issue in enumerate(ISSUES):
        issues[issue] = {
            "policies": {
                "eligibility": f"!('{issue}_opt_out' in customer.attributes)",
                "suitability": "!('segment' in customer.attributes)"
                " || customer.attributes.segment != 'blocked'",
            },
            "context_weight": "'purchase' in customer.counts"
            f" ? 1.0 + double(customer.counts.purchase) / {10 + issue_index}.0 : 1.0",
            "groups": {
                group: {
                    "policies": {
                        "applicability": f"!('{issue}_{group}_opt_out' in customer.attributes)"
                        f" && request.channel != 'sms' && {group_index} < 5"
                    }
                }
                for group_index, group in enumerate(GROUPS)
            },
        }
        for group in GROUPS:
            for n in range(5):
                action_id = f"{issue}_{group}_{n}"
                actions.append(
                    {
                        "id": action_id,
                        "issue": issue,
                        "group": group,
                        "value": 10.0 + 7 * n + issue_index,
                        "lever": 1.0,
                        "channels": ["web", "mobile"],
                        "model": "demo_propensity",
                        "policies": {
                            "eligibility": f"action.value > {n}.0"
                            f" && !('{action_id}' in customer.attributes)"
                        },
                    }
                )
    return {
        "min_priority": 0.5,
        "policies": {
            "eligibility": "!('do_not_contact' in customer.attributes)",
            "applicability": "request.channel in ['web', 'mobile']",
            "suitability": "customer.personalization != 'none' || action.value < 1000.0",
        },
        "issues": issues,
        "actions": actions,
    }


def catalog_of_50() -> Catalog:
    return parse_catalog(catalog_50_document())


def busy_customer(now: datetime) -> ProfileContext:
    """A customer with some history everywhere the policies look (and more)."""
    return ProfileContext(
        "bench",
        attributes={"segment": "consumer", "plan": "gold", "tenure_months": 30, "age": 41},
        counters={t: EventCounter(t, 5 + i, 2.5 * i, now) for i, t in enumerate(EVENT_TYPES)},
        windows={
            window: {t: WindowAggregate(t, window, i, float(i)) for i, t in enumerate(EVENT_TYPES)}
            for window in ("1h", "24h", "7d", "30d")
        },
        interactions=tuple(
            InteractionSummary(f"{issue}_offers_0", "web", decisions=3, impressions=2)
            for issue in ISSUES
        ),
        consents={"marketing_email": True},
        contacts=tuple(
            Contact(f"{ISSUES[i % 5]}_offers_{i % 5}", "web", kind, now - timedelta(hours=i))
            for i, kind in enumerate(["decision", "impression", "reject"] * 7)
        ),
    )


class _MemoryCatalog:
    def __init__(self) -> None:
        self.catalog: Catalog | None = None

    async def version(self) -> str | None:
        return self.catalog.version if self.catalog else None

    async def load(self) -> Catalog | None:
        return self.catalog

    async def replace(self, catalog: Catalog) -> None:
        self.catalog = catalog


class _MemoryUnit:
    def __init__(self, store: _MemoryCatalog) -> None:
        self.catalog = store

    async def __aenter__(self) -> _MemoryUnit:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None

    async def commit(self) -> None:
        return None


def _bare(action: ActionDefinition) -> ActionDefinition:
    return replace(action, rules=(), context_weight_rule=None)


async def _measure(catalog: Catalog, decisions: int, channel: str = "web") -> float:
    store = _MemoryCatalog()
    now = datetime.now(UTC)
    service = ArbitrationService(
        lambda write: _MemoryUnit(store),  # type: ignore[arg-type, return-value]
        refresh_s=3600,
        rng=random.Random(1),
    )
    await service.apply_catalog(catalog)
    rng = random.Random(2)
    scored = [ScoredCandidate(a.action_id, rng.uniform(0.01, 0.3)) for a in catalog.actions]
    customer = busy_customer(now)
    request: dict[str, object] = {"page": "/home", "device": "mobile"}
    for _ in range(20):  # warm up
        await service.prioritize(scored, channel, context=customer, request_context=request)
    # CPU time of this process: what the decisions cost, whatever else the machine runs; the
    # best of a few rounds, as other jobs on the machine only ever add to it.
    rounds = 5 if decisions >= 500 else 1
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(decisions // rounds):
            await service.prioritize(scored, channel, context=customer, request_context=request)
        best = min(best, (time.process_time() - started) / (decisions // rounds) * 1e6)
    return best


def policy_benchmark(decisions: int = 2000) -> dict[str, float]:
    """CPU microseconds per Prioritize of 50 candidates with and without the policies, and
    with the benchmark's catalog (rules on every level and contact policies)."""
    with_policies = catalog_of_50()
    without = replace(
        with_policies,
        actions=tuple(_bare(a) for a in with_policies.actions),
        customer_fields=frozenset(),
    )
    policies_us = asyncio.run(_measure(with_policies, decisions))
    bare_us = asyncio.run(_measure(without, decisions))
    bench_us = asyncio.run(
        _measure(parse_catalog(bench_catalog(50)), decisions, channel=BENCH_CHANNEL)
    )
    return {
        "actions": float(len(with_policies.actions)),
        "rules": float(sum(len(a.rules) + 1 for a in with_policies.actions)),
        "us_per_decision": policies_us,
        "us_per_decision_without_policies": bare_us,
        "us_for_policies": policies_us - bare_us,
        "us_per_decision_bench_catalog": bench_us,
    }


if __name__ == "__main__":
    for name, figure in policy_benchmark().items():
        print(f"{name}: {figure:.1f}")
