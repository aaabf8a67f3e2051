"""PostgreSQL drops every connection of the hub (a restart, a failover, pg_terminate_backend):
the next calls are answered as if nothing happened, through the generated stubs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.scoring.v1 import model_pb2, model_pb2_grpc

from libs.config import Settings, Target
from libs.storage.migrate import upgrade
from services.app import MIGRATIONS
from services.demo.train import DEMO_MODEL_NAME
from tests.conftest import (
    create_postgres_database,
    drop_postgres_database,
    require_postgres,
    terminate_postgres_connections,
)
from tests.demo_hub import serve_demo


@dataclass
class Stubs:
    decisions: decision_pb2_grpc.DecisionServiceAsyncStub
    models: model_pb2_grpc.ModelServiceAsyncStub
    database_url: str


@pytest.fixture
async def hub_on_postgres(tmp_path: Path, demo_model_bytes: bytes) -> AsyncIterator[Stubs]:
    """The embedded hub on a PostgreSQL database of its own (its connections get killed)."""
    require_postgres()
    database_url = create_postgres_database()
    try:
        upgrade(database_url, MIGRATIONS)
        settings = Settings(
            target=Target.ALL,
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path,
            database_url=database_url,
            # Reconnecting a whole pool on a loaded two-core box can take longer than the
            # 100 ms default; what is tested here is that no call fails, not its speed.
            decision_budget_ms=5000,
        )
        built = await serve_demo(settings, demo_model_bytes)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
                yield Stubs(
                    decision_pb2_grpc.DecisionServiceStub(channel),
                    model_pb2_grpc.ModelServiceStub(channel),
                    database_url,
                )
        finally:
            await built.server.stop(0)
            await built.close()
    finally:
        drop_postgres_database(database_url)


async def exercise(stubs: Stubs, customer: str) -> None:
    """Reads and writes of every service the decision path touches, several at once (so
    several pooled connections are in use): identity's first sightings and the decision log
    (group-commit writers), events (and their change notification), an outcome, the model
    registry."""
    fresh = [
        decision_pb2.DecideRequest(
            identifiers=[decision_pb2.Identifier(type="cookie_id", value=uuid.uuid4().hex)],
            channel="web",
        )
        for _ in range(6)
    ]
    known = decision_pb2.DecideRequest(
        identifiers=[decision_pb2.Identifier(type="customer_id", value=customer)],
        channel="mobile",
    )
    answers = await asyncio.gather(
        *(stubs.decisions.Decide(request, timeout=30) for request in [*fresh, known])
    )
    for answer in answers:
        assert not answer.decision.degraded, answer.decision.explanation
    assert len({answer.decision.decision_id for answer in answers}) == len(answers)
    event = decision_pb2.Event(
        event_id=uuid.uuid4().hex,
        identifiers=known.identifiers,
        type="page_view",
        channel="mobile",
    )
    tracked = await stubs.decisions.TrackEvents(
        decision_pb2.TrackEventsRequest(events=[event]), timeout=30
    )
    assert tracked.accepted == 1
    await stubs.decisions.RecordOutcome(
        decision_pb2.RecordOutcomeRequest(
            decision_id=answers[-1].decision.decision_id,
            outcome=decision_pb2.OUTCOME_CLICK,
            idempotency_key=uuid.uuid4().hex,
        ),
        timeout=30,
    )
    models = await stubs.models.ListModels(
        model_pb2.ListModelsRequest(name=DEMO_MODEL_NAME), timeout=30
    )
    assert [model.version for model in models.models] == ["1"]


@pytest.mark.postgres
async def test_no_caller_sees_the_connections_postgresql_dropped(
    hub_on_postgres: Stubs,
) -> None:
    customer = f"customer-{uuid.uuid4().hex[:8]}"
    await exercise(hub_on_postgres, customer)

    assert terminate_postgres_connections(hub_on_postgres.database_url) >= 1

    # Each pooled connection is found dead as it is checked out and replaced; the
    # change feed's NOTIFY connection reconnects: every call succeeds, none is degraded.
    await exercise(hub_on_postgres, customer)
    await exercise(hub_on_postgres, customer)
