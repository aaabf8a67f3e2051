"""The fault run: the mesh under steady load while replicas die and come back.

Two scoring replicas and one of everything else, on loopback. While Decides (and event
and outcome writes) flow, one scoring replica is killed, then the context service; then
both are restarted. Reports how many Decides were answered within their deadline (degraded
or not), how long normal answers took to resume after each return, whether any process
crashed, and whether every acknowledged event and outcome is in the database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from sqlalchemy import create_engine, func, select

from libs.config import Settings
from libs.storage.database import sync_url
from services.context.tables import EventRow, OutcomeRow
from tools.launch import LocalDeployment


@dataclass
class Sample:
    at: float
    answered: bool
    degraded: bool
    reason: str = ""


@dataclass
class FaultReport:
    budget_ms: int = 0
    decides: int = 0
    answered_in_deadline: int = 0
    degraded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    events_acknowledged: int = 0
    events_stored: int = 0
    outcomes_acknowledged: int = 0
    outcomes_stored: int = 0
    recovery_s: dict[str, float | None] = field(default_factory=dict)
    degraded_reasons: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def answered_ratio(self) -> float:
        return self.answered_in_deadline / self.decides if self.decides else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "answered_ratio": self.answered_ratio}


def default_budget_ms() -> int:
    """The decision budget a hub has when nothing sets NEXTBEST_DECISION_BUDGET_MS."""
    default: int = Settings.model_fields["decision_budget_ms"].default
    return default


def _recovery(samples: list[Sample], since: float) -> float | None:
    """Seconds from ``since`` to the first normal answer after which normal answers stay."""
    after = [s for s in samples if s.at >= since]
    for index, sample in enumerate(after):
        if (
            sample.answered
            and not sample.degraded
            and all(s.answered and not s.degraded for s in after[index : index + 5])
        ):
            return sample.at - since
    return None


async def fault_run(
    workdir: Path,
    database_url: str,
    *,
    phase_s: float = 5.0,
    concurrency: int = 2,
    deadline_s: float = 1.0,
    budget_ms: int | None = None,
) -> FaultReport:
    """``budget_ms``: the orchestrator's decision budget, the product's default if None."""
    if budget_ms is None:
        budget_ms = default_budget_ms()
    deployment = LocalDeployment(
        "mesh",
        workdir,
        database_url,
        {"NEXTBEST_DECISION_BUDGET_MS": str(budget_ms), "NEXTBEST_CATALOG_REFRESH_S": "1"},
        replicas={"scoring": 2},
    )
    report = FaultReport(budget_ms=budget_ms)
    samples: list[Sample] = []
    event_ids: list[str] = []
    outcome_keys: list[str] = []
    decision_ids: list[str] = []
    started = time.monotonic()
    stop = asyncio.Event()

    def mark(what: str) -> float:
        now = time.monotonic()
        report.timeline.append((round(now - started, 2), what))
        return now

    async def decide_loop(stub: decision_pb2_grpc.DecisionServiceAsyncStub, worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            request = decision_pb2.DecideRequest(
                identifiers=[
                    decision_pb2.Identifier(type="cookie_id", value=f"f{worker}-{n % 50}")
                ],
                channel="mobile",
            )
            sent = time.monotonic()
            try:
                response = await stub.Decide(request, timeout=deadline_s)
                decision = response.decision
                samples.append(Sample(sent, True, decision.degraded, decision.degraded_reason))
                if not decision.degraded:
                    decision_ids.append(decision.decision_id)
            except grpc.aio.AioRpcError as error:
                samples.append(Sample(sent, False, True, error.code().name))
                await asyncio.sleep(0.01)

    async def write_loop(stub: decision_pb2_grpc.DecisionServiceAsyncStub) -> None:
        while not stop.is_set():
            event_id = f"fault-{uuid.uuid4().hex}"
            try:
                await stub.TrackEvents(
                    decision_pb2.TrackEventsRequest(
                        events=[
                            decision_pb2.Event(
                                event_id=event_id,
                                identifiers=[
                                    decision_pb2.Identifier(type="cookie_id", value="f-writer")
                                ],
                                type="page_view",
                                channel="web",
                            )
                        ]
                    ),
                    timeout=deadline_s,
                )
                event_ids.append(event_id)  # acknowledged
            except grpc.aio.AioRpcError:
                pass
            if decision_ids:
                key = f"fault-{uuid.uuid4().hex}"
                try:
                    await stub.RecordOutcome(
                        decision_pb2.RecordOutcomeRequest(
                            decision_id=decision_ids[-1],
                            outcome=decision_pb2.OUTCOME_IMPRESSION,
                            idempotency_key=key,
                        ),
                        timeout=deadline_s,
                    )
                    outcome_keys.append(key)
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.05)

    try:
        address = await deployment.start(demo=True)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            loops = [asyncio.ensure_future(decide_loop(stub, w)) for w in range(concurrency)]
            loops.append(asyncio.ensure_future(write_loop(stub)))
            mark("load started")
            await asyncio.sleep(phase_s)
            deployment.kill("scoring-2")
            mark("scoring-2 killed")
            await asyncio.sleep(phase_s)
            deployment.kill("context")
            context_down = mark("context killed")
            await asyncio.sleep(phase_s)
            await deployment.restart("context")
            context_back = mark("context restarted (serving)")
            await asyncio.sleep(phase_s)
            await deployment.restart("scoring-2")
            mark("scoring-2 restarted (serving)")
            await asyncio.sleep(phase_s)
            stop.set()
            await asyncio.gather(*loops)
            mark("load stopped")
        del context_down
        report.recovery_s["context"] = _recovery(samples, context_back)
    finally:
        report.exit_codes = deployment.stop()
    report.decides = len(samples)
    report.answered_in_deadline = sum(s.answered for s in samples)
    report.degraded = sum(s.answered and s.degraded for s in samples)
    for sample in samples:
        if not sample.answered:
            report.failed[sample.reason] = report.failed.get(sample.reason, 0) + 1
        elif sample.degraded:
            for reason in sample.reason.split("; "):
                report.degraded_reasons[reason] = report.degraded_reasons.get(reason, 0) + 1
    report.events_acknowledged = len(event_ids)
    report.outcomes_acknowledged = len(outcome_keys)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            report.events_stored = (
                connection.scalar(select(func.count()).where(EventRow.event_id.in_(event_ids))) or 0
            )
            report.outcomes_stored = (
                connection.scalar(
                    select(func.count()).where(OutcomeRow.idempotency_key.in_(outcome_keys))
                )
                or 0
            )
    finally:
        engine.dispose()
    return report


def format_report(report: FaultReport) -> str:
    lines = [
        f"decision budget: {report.budget_ms} ms",
        f"decides: {report.decides}, answered within deadline: {report.answered_in_deadline} "
        f"({report.answered_ratio:.2%}), degraded: {report.degraded}",
        f"failed: {report.failed or 'none'}",
        f"degraded reasons: {report.degraded_reasons or 'none'}",
        f"events acknowledged/stored: {report.events_acknowledged}/{report.events_stored}, "
        f"outcomes acknowledged/stored: {report.outcomes_acknowledged}/{report.outcomes_stored}",
        f"normal answers resumed after context returned: {report.recovery_s.get('context')} s",
        f"exit codes on SIGTERM: {report.exit_codes}",
        "timeline: " + ", ".join(f"{t}s {what}" for t, what in report.timeline),
    ]
    return "\n".join(lines)
