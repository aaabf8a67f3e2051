"""A Decide's request context reaches the decision log without raw e-mail addresses or phone
numbers (PRODUCT.md §7), and the redaction is counted; the rest of the payload, catalog text
included, is recorded as built."""

from __future__ import annotations

import itertools
from typing import Any

from libs.contracts.snapshot import SNAPSHOT_KEY
from services.arbitration.catalog import parse_catalog
from services.arbitration.service import ArbitrationService
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.model import DecideCommand
from services.orchestrator.ports import NoObserver
from services.orchestrator.recording import REQUEST_CONTEXT
from tests.unit.fakes import (
    FakeCatalogStore,
    FakeContext,
    FakeIdentity,
    FakeScoring,
    arbitration_units,
)
from tests.unit.test_decision_engine import ANN, NOW, PROPENSITIES

# A treatment written by the catalog's owner: its support number is not a customer's.
CATALOG: dict[str, Any] = {
    "actions": [
        {
            "id": "callback",
            "issue": "service",
            "value": 10,
            "treatments": {"default": {"text": "Call us on +44 20 7946 0000"}},
        }
    ]
}


class CountingObserver(NoObserver):
    def __init__(self) -> None:
        self.redacted: list[tuple[str, int]] = []

    def personal_data_redacted(self, field: str, count: int) -> None:
        self.redacted.append((field, count))


async def engine_with(observer: CountingObserver) -> tuple[DecisionEngine, FakeContext]:
    context = FakeContext()
    arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()), refresh_s=3600)
    await arbitration.apply_catalog(parse_catalog(CATALOG))
    ids = (f"d-{n}" for n in itertools.count(1))
    engine = DecisionEngine(
        FakeIdentity({("email", "ann@example.com"): "p-ann"}),
        context,
        FakeScoring({**PROPENSITIES, "callback": 0.5}),
        arbitration,
        clock=lambda: NOW,
        new_id=lambda: next(ids),
        observer=observer,
    )
    return engine, context


async def test_the_recorded_request_context_holds_placeholders_and_is_counted() -> None:
    observer = CountingObserver()
    engine, context = await engine_with(observer)
    request_context = {
        "referrer": "mailto:ann@example.com",
        "callback": {"numbers": ["+44 7700 900123", "1701234567890"]},
        "page": "/help",
    }

    decision = await engine.decide(DecideCommand(ANN, "web", context=request_context))

    await engine.flush_decisions()
    payload = context.decisions[decision.decision_id].payload
    assert payload[SNAPSHOT_KEY]["request_context"] == {
        "referrer": "mailto:[email]",
        "callback": {"numbers": ["[phone]", "1701234567890"]},
        "page": "/help",
    }
    assert payload["action"]["treatment"] == {"text": "Call us on +44 20 7946 0000"}
    assert observer.redacted == [(REQUEST_CONTEXT, 2)]
    # The caller's own mapping is left as it was sent.
    assert request_context["referrer"] == "mailto:ann@example.com"


async def test_a_context_without_personal_data_is_recorded_as_sent() -> None:
    observer = CountingObserver()
    engine, context = await engine_with(observer)

    decision = await engine.decide(DecideCommand(ANN, "web", context={"page": "/help"}))

    await engine.flush_decisions()
    assert context.decisions[decision.decision_id].payload[SNAPSHOT_KEY]["request_context"] == {
        "page": "/help"
    }
    assert observer.redacted == []
