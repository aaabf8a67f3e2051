"""The fault run of docs/reliability.md, shortened: replicas die under load, answers go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import create_postgres_database, drop_postgres_database, require_postgres
from tools.faults import fault_run, format_report

pytestmark = pytest.mark.slow


async def test_decides_survive_killed_replicas_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    require_postgres()
    database_url = create_postgres_database()
    try:
        report = await fault_run(tmp_path, database_url, phase_s=3.0, concurrency=2)
    finally:
        drop_postgres_database(database_url)
    print(format_report(report))
    assert report.decides > 100
    assert report.answered_ratio >= 0.99, report.failed
    # The faults really happened: answers were degraded while context was gone...
    assert any(reason.startswith("context") for reason in report.degraded_reasons)
    # ...and normal answers came back within 5 s of its return.
    recovery = report.recovery_s["context"]
    assert recovery is not None and recovery <= 5.0
    assert report.events_acknowledged > 0 and report.outcomes_acknowledged > 0
    assert report.events_stored == report.events_acknowledged
    assert report.outcomes_stored == report.outcomes_acknowledged
    # No process crashed: every one (restarted ones included) drained and exited cleanly.
    assert report.exit_codes and set(report.exit_codes.values()) == {0}
