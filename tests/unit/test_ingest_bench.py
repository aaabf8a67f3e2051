"""services.context.bench: the batches it sends, and a short run against an embedded hub."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from nextbest.decision.v1 import decision_pb2

from libs.config import Settings, Target
from services.app import build_target
from tools import bench_ingest as bench

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_batches_are_valid_requests_with_fresh_event_ids() -> None:
    templates = bench.event_templates(50, 4, now=NOW)
    maker = bench.BatchMaker(templates, 10)
    first = decision_pb2.TrackEventsRequest.FromString(maker.next())
    second = decision_pb2.TrackEventsRequest.FromString(maker.next())

    assert len(first.events) == len(second.events) == 10
    ids = [e.event_id for e in (*first.events, *second.events)]
    assert len(set(ids)) == 20
    for event in first.events:
        assert event.type and event.channel in ("web", "mobile")
        assert event.identifiers[0].type == "cookie_id"
        assert event.occurred_at.ToDatetime(tzinfo=UTC) <= NOW
    # Events of one visitor come together (events_per_profile of them).
    visitors = [e.identifiers[0].value for e in first.events]
    assert visitors[:4] == [visitors[0]] * 4


async def test_a_short_run_is_durable_and_reports_throughput(tmp_path: Path) -> None:
    settings = Settings(target=Target.ALL, host="127.0.0.1", port=0, data_dir=tmp_path)
    built = build_target(settings)
    await built.warm_up()
    await built.server.start()
    try:
        result = await bench.run(
            f"127.0.0.1:{built.port}",
            batch=50,
            concurrency=2,
            duration_s=1.0,
            warmup_s=0.2,
            profiles=100,
            events_per_profile=5,
        )
    finally:
        await built.server.stop(0)
        await built.close()
    stored = bench.stored_events(settings.effective_database_url)

    assert result["primed"]["events"] == 100
    assert result["batches"]["errors"] == 0 and result["duplicates"] == 0
    assert result["events_per_s"] > 0
    assert result["acknowledged"] <= stored <= result["sent"]
    assert "events/s" in bench.format_report(result)
