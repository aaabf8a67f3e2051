"""The catalog the benchmarks apply: ``actions`` generated actions with the engagement
policies a real catalog has, all eligible for the benchmarks' customers.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

BENCH_CHANNEL = "bench"
# Other processes of a shape pick a new catalog up on their refresh (2 s by default).
CATALOG_REFRESH_WAIT_S = 2.5


def bench_catalog(actions: int, channel: str = BENCH_CHANNEL) -> dict[str, Any]:
    """A catalog document of ``actions`` actions, all offered on ``channel`` and all scored by
    the demo model, with priorities spread so that arbitration has to sort them;
    min_priority 0. Like a real catalog it has engagement policies on every level (catalog,
    issue, group, action: eligibility, applicability, suitability), a context weight per
    issue and contact policies, so the bench pays what they cost; all of them keep every
    action eligible for the bench's customers (new cookies or generated customers, no
    opt-out attributes, no reject reported), so every decision still ranks ``actions``."""
    from services.demo.train import DEMO_MODEL_NAME

    issues = ("retention", "cross_sell", "service", "upsell", "loyalty")
    groups = 10  # group_k belongs to issue k % 5 (as action n is in both n % 10 and n % 5)
    return {
        "min_priority": 0.0,
        "policies": {
            "eligibility": "!('do_not_contact' in customer.attributes)",
            "applicability": f"request.channel == '{channel}'",
            "suitability": "customer.personalization != 'none' || action.value < 1000.0",
        },
        "contact_policies": [
            {"name": "bench_daily_cap", "max": 1000, "of": "impression", "within": "1d"}
        ],
        "issues": {
            issue: {
                "policies": {
                    "eligibility": f"!('{issue}_opt_out' in customer.attributes)",
                    "suitability": "!('segment' in customer.attributes)"
                    " || customer.attributes.segment != 'blocked'",
                },
                "context_weight": "'purchase' in customer.counts"
                f" ? 1.0 + double(customer.counts.purchase) / {10 + index}.0 : 1.0",
                "contact_policies": [
                    {"name": "after_reject", "suppress_after": "reject", "for": "1d"}
                ],
                "groups": {
                    f"group_{k}": {
                        "policies": {
                            "applicability": f"!('{issue}_group_{k}_opt_out' in"
                            " customer.attributes) && request.channel != 'sms'"
                        }
                    }
                    for k in range(groups)
                    if k % len(issues) == index
                },
            }
            for index, issue in enumerate(issues)
        },
        "actions": [
            {
                "id": f"bench_action_{n:03d}",
                "name": f"Bench action {n}",
                "issue": issues[n % len(issues)],
                "group": f"group_{n % groups}",
                "channels": [channel],
                "value": 10.0 + (n * 37) % 90,
                "lever": 1.0 + (n % 3) / 10,
                "model": DEMO_MODEL_NAME,
                "prior_propensity": 0.01 + (n % 7) / 100,
                "treatments": {"default": {"headline": f"Offer {n}", "cta": "Go"}},
                "policies": {
                    "eligibility": f"action.value > {n % 5}.0"
                    f" && !('bench_action_{n:03d}' in customer.attributes)"
                },
            }
            for n in range(actions)
        ],
    }


async def apply_catalog(address: str, document: dict[str, Any]) -> str:
    """Apply a catalog document through CatalogService on ``address``; its version."""
    from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc

    from services.arbitration.api import catalog_to_proto
    from services.arbitration.catalog import parse_catalog

    async with grpc.aio.insecure_channel(address) as channel:
        response = await catalog_pb2_grpc.CatalogServiceStub(channel).ApplyCatalog(
            catalog_pb2.ApplyCatalogRequest(catalog=catalog_to_proto(parse_catalog(document))),
            timeout=30,
        )
    return str(response.version)
