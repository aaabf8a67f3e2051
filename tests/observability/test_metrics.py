"""The embedded hub in-process with its metrics endpoint on: traffic through the generated
stubs, then /metrics scraped over HTTP as Prometheus would, compared before and after."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from libs.config import ConfigError, Settings, Target
from libs.errors import Unavailable
from libs.observability import Observability
from libs.observability.metrics import RPC_BUCKETS
from services.app import BuiltTarget
from services.demo.train import DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from tests.demo_hub import serve_demo
from tests.observability.scrape import Scrape, scrape
from tools.launch import free_port

DECISIONS = "nextbest.decision.v1.DecisionService"


@dataclass
class Hub:
    built: BuiltTarget
    stub: decision_pb2_grpc.DecisionServiceAsyncStub
    metrics_port: int

    async def scrape(self) -> Scrape:
        return await asyncio.to_thread(scrape, self.metrics_port)


@pytest.fixture(scope="module")
async def hub(
    tmp_path_factory: pytest.TempPathFactory, demo_model_bytes: bytes
) -> AsyncIterator[Hub]:
    metrics_port = free_port()
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path_factory.mktemp("observed"),
        metrics_port=metrics_port,
        decision_budget_ms=5000,
    )
    built = await serve_demo(settings, demo_model_bytes)
    built.observability.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            yield Hub(built, decision_pb2_grpc.DecisionServiceStub(channel), metrics_port)
    finally:
        await built.server.stop(0)
        await built.close()


def cookie() -> decision_pb2.Identifier:
    return decision_pb2.Identifier(type="cookie_id", value=f"c-{uuid.uuid4().hex[:12]}")


async def decide(hub: Hub, channel: str = "web") -> Any:
    request = decision_pb2.DecideRequest(identifiers=[cookie()], channel=channel)
    return (await hub.stub.Decide(request, timeout=10)).decision


def delta(before: Scrape, after: Scrape) -> Callable[..., float]:
    def change(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    return change


async def test_rpcs_are_counted_by_final_code_and_timed(hub: Hub) -> None:
    before = await hub.scrape()
    for _ in range(5):
        await decide(hub)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await hub.stub.Decide(decision_pb2.DecideRequest(channel="web"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await hub.stub.RecordOutcome(
            decision_pb2.RecordOutcomeRequest(
                decision_id="0" * 32, outcome=decision_pb2.OUTCOME_CLICK
            ),
            timeout=10,
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    after = await hub.scrape()
    change = delta(before, after)

    decide_labels = {"grpc_service": DECISIONS, "grpc_method": "Decide", "grpc_type": "unary"}
    assert change("grpc_server_started_total", **decide_labels) == 6
    assert change("grpc_server_handled_total", **decide_labels, grpc_code="OK") == 5
    assert change("grpc_server_handled_total", **decide_labels, grpc_code="INVALID_ARGUMENT") == 1
    assert change("grpc_server_handled_total", grpc_method="Decide", grpc_code="INTERNAL") == 0
    assert (
        change("grpc_server_handled_total", grpc_method="RecordOutcome", grpc_code="NOT_FOUND") == 1
    )
    # Latency: every call timed, in millisecond-scale buckets.
    assert change("grpc_server_handling_seconds_count", **decide_labels) == 6
    assert change("grpc_server_handling_seconds_sum", **decide_labels) > 0
    buckets = after.buckets("grpc_server_handling_seconds", **decide_labels)
    assert sorted(buckets) == [*RPC_BUCKETS, float("inf")]
    assert buckets[float("inf")] == after.value(
        "grpc_server_handling_seconds_count", **decide_labels
    )
    assert buckets[10.0] >= buckets[0.1] >= buckets[0.001]
    # Health checks are RPCs too; probes show up under their own service.
    assert after.value("nextbest_build_info", target="all") == 1
    assert "process_cpu_seconds_total" in after.text


async def test_decisions_by_action_and_outcome(hub: Hub) -> None:
    before = await hub.scrape()
    decided = [await decide(hub, channel) for channel in ("web", "web", "mobile", "web")]
    after = await hub.scrape()
    change = delta(before, after)

    by_action = Counter((d.channel, d.action.issue, d.action.action_id) for d in decided)
    assert all(action for _, _, action in by_action)  # the demo catalog always has one
    for (channel, issue, action), count in by_action.items():
        labels = {"channel": channel, "issue": issue, "action": action, "outcome": "action"}
        assert change("nextbest_decisions_total", **labels) == count
    assert change("nextbest_decisions_total", outcome="no_action") == 0
    assert change("nextbest_decision_seconds_count", channel="web") == 3
    assert change("nextbest_decision_seconds_count", channel="mobile") == 1
    assert change("nextbest_decisions_degraded_total") == 0
    # One batched run of the demo model per decision, timed.
    model = {"model": DEMO_MODEL_NAME, "version": DEMO_MODEL_VERSION}
    assert change("nextbest_model_inference_seconds_count", **model) == 4
    assert change("nextbest_model_inference_seconds_sum", **model) > 0
    assert after.buckets("nextbest_model_inference_seconds", **model)[float("inf")] >= 4


async def test_event_ingestion_counts_accepted_and_duplicates(hub: Hub) -> None:
    who = cookie()
    batch = decision_pb2.TrackEventsRequest(
        events=[
            decision_pb2.Event(
                event_id=f"e-{uuid.uuid4().hex}", identifiers=[who], type="page_view", channel="web"
            )
            for _ in range(3)
        ]
    )
    before = await hub.scrape()
    first = await hub.stub.TrackEvents(batch, timeout=10)
    again = await hub.stub.TrackEvents(batch, timeout=10)
    after = await hub.scrape()
    change = delta(before, after)

    assert (first.accepted, again.duplicates) == (3, 3)
    assert change("nextbest_events_ingested_total", result="accepted") == 3
    assert change("nextbest_events_ingested_total", result="duplicate") == 3
    assert change("nextbest_event_batches_total") == 2
    assert change("grpc_server_handled_total", grpc_method="TrackEvents", grpc_code="OK") == 2


async def test_outcomes_by_action_outcome_and_duplicate(hub: Hub) -> None:
    decision = await decide(hub)
    request = decision_pb2.RecordOutcomeRequest(
        decision_id=decision.decision_id,
        outcome=decision_pb2.OUTCOME_CLICK,
        idempotency_key=f"k-{uuid.uuid4().hex}",
    )
    before = await hub.scrape()
    await hub.stub.RecordOutcome(request, timeout=10)
    await hub.stub.RecordOutcome(request, timeout=10)
    after = await hub.scrape()
    change = delta(before, after)

    action = decision.action.action_id
    assert change("nextbest_outcomes_total", action=action, outcome="click", duplicate="false") == 1
    assert change("nextbest_outcomes_total", action=action, outcome="click", duplicate="true") == 1


async def test_database_statements_are_timed_by_operation(hub: Hub) -> None:
    before = await hub.scrape()
    await decide(hub)  # reads the profile, writes the decision
    after = await hub.scrape()
    change = delta(before, after)

    assert change("nextbest_db_statement_seconds_count", operation="select") > 0
    assert change("nextbest_db_statement_seconds_count", operation="insert") > 0
    assert change("nextbest_db_statement_seconds_sum") > 0
    buckets = after.buckets("nextbest_db_statement_seconds", operation="select")
    assert buckets[float("inf")] == after.value(
        "nextbest_db_statement_seconds_count", operation="select"
    )
    # No raw identifiers in any label: profile ids, cookies, decision ids stay out.
    assert "c-" not in " ".join(v for s in after.samples for v in s.labels.values())


async def test_degraded_decisions_are_counted_by_reason(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    scoring = hub.built.services.scoring
    assert scoring is not None

    async def down(*args: object, **kwargs: object) -> None:
        raise Unavailable("scoring is down")

    monkeypatch.setattr(scoring, "score_candidates", down)
    monkeypatch.setattr(scoring, "score_arrays", down)
    before = await hub.scrape()
    decision = await decide(hub, channel="mobile")
    after = await hub.scrape()
    change = delta(before, after)

    assert decision.degraded and "scoring: unavailable" in decision.degraded_reason
    assert change("nextbest_decisions_degraded_total", channel="mobile") == 1
    assert change("nextbest_decision_degraded_reasons_total", reason="scoring: unavailable") == 1
    # Degraded, but answered: the RPC itself succeeded.
    assert change("grpc_server_handled_total", grpc_method="Decide", grpc_code="OK") == 1


def test_nothing_is_exported_unless_configured(tmp_path: Path) -> None:
    observability = Observability.from_settings(Settings(data_dir=tmp_path))
    assert observability.server_interceptors == []
    assert observability.client_interceptors == []
    assert observability.registry is None
    assert observability.inference_observer is None and observability.engine_hook is None
    observability.start()
    assert observability.metrics_port == 0
    observability.decided(
        channel="web", issue="i", action_id="a", degraded_reason="", elapsed_s=0.01
    )
    observability.stop()


def test_a_busy_metrics_port_fails_start_with_the_variable_named(tmp_path: Path) -> None:
    first = Observability.from_settings(
        Settings(data_dir=tmp_path, host="127.0.0.1", metrics_port=free_port())
    )
    first.start()
    try:
        second = Observability.from_settings(
            Settings(data_dir=tmp_path, host="127.0.0.1", metrics_port=first.metrics_port)
        )
        with pytest.raises(ConfigError, match="NEXTBEST_METRICS_PORT"):
            second.start()
    finally:
        first.stop()
