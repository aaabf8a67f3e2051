"""Engagement policies, the minimum priority and exploration through gRPC, in both shapes:
catalogs applied as whole documents (CatalogService.ApplyCatalog ``document`` and
``nextbest catalog apply -f``)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format, struct_pb2
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from services.arbitration.catalog import MAX_ACTIONS
from services.cli import main
from services.demo.seed import DEMO_CATALOG
from tests.e2e.conftest import Hub
from tests.e2e.test_decisions import field_descriptions, field_violations
from tools.bench_apply import large_document


def customer() -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type="customer_id", value=f"pol-{uuid.uuid4().hex[:12]}")


def demo_with(**changes: Any) -> str:
    document = yaml.safe_load(DEMO_CATALOG.read_text())
    document.update(changes)
    return yaml.safe_dump(document)


@pytest.fixture
async def catalogs(hub: Hub) -> AsyncIterator[catalog_pb2_grpc.CatalogServiceAsyncStub]:
    """The catalog admin; the demo catalog is put back after the test."""
    async with grpc.aio.insecure_channel(hub.catalog_address) as channel:
        stub: catalog_pb2_grpc.CatalogServiceAsyncStub = catalog_pb2_grpc.CatalogServiceStub(
            channel
        )
        try:
            yield stub
        finally:
            await stub.ApplyCatalog(
                catalog_pb2.ApplyCatalogRequest(document=DEMO_CATALOG.read_text()), timeout=10
            )


async def decide(hub: Hub, identifier: decision_pb2.Identifier, **fields: Any) -> Any:
    fields.setdefault("channel", "mobile")
    response = await decision_pb2_grpc.DecisionServiceStub(hub.channel).Decide(
        decision_pb2.DecideRequest(identifiers=[identifier], explain=True, **fields), timeout=10
    )
    return response.decision


async def apply(stub: catalog_pb2_grpc.CatalogServiceAsyncStub, document: str) -> str:
    applied = await stub.ApplyCatalog(
        catalog_pb2.ApplyCatalogRequest(document=document), timeout=10
    )
    version: str = applied.version
    return version


async def test_story_6_nothing_clears_the_minimum_priority(
    hub: Hub, catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub
) -> None:
    await apply(catalogs, demo_with(min_priority=1000))

    decision = await decide(hub, customer())

    assert not decision.HasField("action")
    assert decision.priority == 0 and decision.selection_probability == 1.0
    explanation = decision.explanation
    assert explanation.min_priority == 1000
    assert explanation.summary.startswith("no action: the best candidate ")
    assert "below the minimum 1000" in explanation.summary
    ranked = [c for c in explanation.candidates if c.eligible]
    assert ranked and [c.rank for c in ranked] == list(range(1, len(ranked) + 1))
    assert all(c.priority < 1000 and not c.won for c in explanation.candidates)
    assert ranked[0].action_id in explanation.summary


async def test_a_policy_that_removes_an_action_is_in_the_explanation(hub: Hub) -> None:
    checkout = struct_pb2.Struct()
    checkout.update({"page": "/checkout/basket"})
    identifier = customer()

    decision = await decide(hub, identifier, context=checkout)

    removed = {c.action_id: c for c in decision.explanation.candidates if not c.eligible}
    for action_id in ("cross_sell_device_protection", "cross_sell_bonus_data"):
        assert removed[action_id].removed_by == "applicability@issue:cross_sell"
        assert "is false" in removed[action_id].reason
    assert decision.exploration == "greedy" and decision.selection_probability == 1.0
    # The logged decision (what offline evaluation reads) carries them too.
    export = await privacy_pb2_grpc.PrivacyServiceStub(hub.channel).ExportProfile(
        privacy_pb2.ExportProfileRequest(identifiers=[identifier]), timeout=10
    )
    (logged,) = [json_format.MessageToDict(d.payload) for d in export.decisions]
    assert logged["selection_probability"] == 1.0 and logged["exploration"] == "greedy"


async def test_exploration_probability_reaches_the_decision(
    hub: Hub, catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub
) -> None:
    await apply(
        catalogs,
        demo_with(min_priority=0, exploration={"policy": "epsilon_greedy", "epsilon": 1.0}),
    )

    decisions = [await decide(hub, customer()) for _ in range(6)]

    for decision in decisions:
        ranked = [c for c in decision.explanation.candidates if c.eligible]
        assert decision.exploration == "epsilon_greedy"
        assert decision.selection_probability == pytest.approx(1 / len(ranked))
        assert decision.action.action_id in {c.action_id for c in ranked}
        (won,) = [c for c in decision.explanation.candidates if c.won]
        assert won.action_id == decision.action.action_id


async def test_a_rule_that_does_not_compile_is_refused_and_the_catalog_stays(
    hub: Hub, catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub
) -> None:
    before = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    document = yaml.safe_load(DEMO_CATALOG.read_text())
    document["issues"]["retention"]["policies"]["eligibility"] = "customer.counts.purchase >"
    document["actions"][2]["policies"]["suitability"] = "price < 3"

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await apply(catalogs, yaml.safe_dump(document))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == [
        "issues.retention.policies.eligibility",
        "actions[2] (cross_sell_device_protection).policies.suitability",
    ]
    assert "Syntax error" in (refused.value.details() or "")
    after = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert after.catalog.version == before.catalog.version
    stored = json.loads(after.document)
    assert stored["issues"]["retention"]["policies"] == {
        "suitability": document["issues"]["retention"]["policies"]["suitability"]
    }
    assert (await decide(hub, customer())).action.action_id  # still serving


async def test_the_command_applies_documents_and_names_a_bad_rule(
    hub: Hub,
    catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(demo_with(min_priority=3.5))
    bad = tmp_path / "bad.yaml"
    bad.write_text(demo_with(policies={"eligibility": "customer.known &&"}))

    async def nextbest(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, [*argv, "--address", hub.catalog_address])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await nextbest("catalog", "apply", "-f", str(good))
    assert code == 0, err
    # (out may hold the embedded server's log lines too: this process runs it)
    (line,) = [line for line in out.splitlines() if line.startswith("catalog ")]
    version = line.split()[1]
    code, out, err = await nextbest("catalog", "apply", "-f", str(bad))
    assert code == 1
    assert "INVALID_ARGUMENT" in err and "policies.eligibility: does not compile" in err
    current = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert current.catalog.version == version and current.catalog.min_priority == 3.5
    code, out, err = await nextbest("catalog", "show")
    assert code == 0, err
    assert "issues:" in out and "in customer.counts ? 1.5 : 1.0" in out


def badly_typed_demo() -> dict[str, Any]:
    """The demo catalog with the four type errors of issue 13 on four levels."""
    document: dict[str, Any] = yaml.safe_load(DEMO_CATALOG.read_text())
    document["policies"]["eligibility"] = "1 + 'a' == 2"
    document["issues"]["retention"]["groups"]["discounts"]["policies"]["eligibility"] = "1 + 2"
    document["issues"]["cross_sell"]["context_weight"] = "'high'"
    document["actions"][2]["policies"]["suitability"] = "action.value > 'ten'"
    return document


BADLY_TYPED = [
    "policies.eligibility",
    "issues.retention.groups.discounts.policies.eligibility",
    "issues.cross_sell.context_weight",
    "actions[2] (cross_sell_device_protection).policies.suitability",
]


async def test_rules_that_do_not_type_check_are_refused_and_the_catalog_stays(
    hub: Hub, catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub
) -> None:
    before = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)

    for dry_run in (True, False):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await catalogs.ApplyCatalog(
                catalog_pb2.ApplyCatalogRequest(
                    document=yaml.safe_dump(badly_typed_demo(), sort_keys=False),
                    dry_run=dry_run,
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = field_descriptions(refused.value)
        assert [field for field, _ in violations] == BADLY_TYPED
        why = [description for _, description in violations]
        assert why[0].startswith("does not type-check: No such overload")
        assert why[1] == "must return a bool (true or false), returns int (3)"
        assert why[2] == "must return a number (int or double), returns string ('high')"
        assert why[3].startswith("does not type-check: No such overload")

    after = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert after.catalog.version == before.catalog.version
    assert (await decide(hub, customer())).action.action_id  # still serving
    # What only a decision can tell (a profile attribute has no declared type) is accepted,
    # and fails closed then.
    document = yaml.safe_load(DEMO_CATALOG.read_text())
    document["issues"]["retention"]["policies"]["eligibility"] = (
        "customer.attributes.tenure_years > 2"
    )
    await apply(catalogs, yaml.safe_dump(document))
    decision = await decide(hub, customer(), channel="call_center")
    removed = {c.action_id: c.reason for c in decision.explanation.candidates if not c.eligible}
    assert "evaluation failed" in removed["retention_loyalty_discount"]


async def test_the_command_refuses_a_badly_typed_rule_in_a_dry_run(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(badly_typed_demo(), sort_keys=False))

    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["catalog", "apply", "--dry-run", "-f", str(bad), "--address", hub.catalog_address]
    )
    err = capsys.readouterr().err

    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "actions[2] (cross_sell_device_protection).policies.suitability: does not" in err
    assert "issues.cross_sell.context_weight: must return a number" in err


async def test_a_catalog_document_over_the_size_limit_is_refused_unread(
    hub: Hub, catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub
) -> None:
    before = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await catalogs.ApplyCatalog(
            catalog_pb2.ApplyCatalogRequest(document="#" * (3 << 20), dry_run=True), timeout=30
        )

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ((field, why),) = field_descriptions(refused.value)
    assert field == "document"
    assert why == f"{3 << 20} bytes: at most {1 << 20} (NEXTBEST_MAX_CATALOG_BYTES)"
    after = await catalogs.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    assert after.catalog.version == before.catalog.version


async def test_decisions_go_on_while_a_large_catalog_is_validated(
    hub: Hub, catalogs: catalog_pb2_grpc.CatalogServiceAsyncStub
) -> None:
    # The largest document the default limit allows: seconds of validation on any box.
    document, actions = large_document()
    assert actions == MAX_ACTIONS
    request = catalog_pb2.ApplyCatalogRequest(document=document, dry_run=True)

    async def apply_large() -> catalog_pb2.ApplyCatalogResponse:
        return await catalogs.ApplyCatalog(request, timeout=120)

    applying = asyncio.create_task(apply_large())

    # Decides sent one after the other once the apply is on its way, until it answers: had
    # the server parsed on its event loop, none of them would finish before the apply.
    decided_first = []
    while not applying.done():
        decision = await decide(hub, customer())
        if not applying.done():
            decided_first.append(decision)

    assert (await applying).action_count == MAX_ACTIONS
    assert len(decided_first) >= 10
    assert all(d.action.action_id and not d.degraded for d in decided_first)
