"""The identity benchmark's data generator and timed loop, at a small scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.storage import Database
from services.app import MIGRATIONS
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from tools import bench_identity as bench


async def test_generated_profiles_resolve_like_profiles_the_service_made(
    database: Database, database_url: str
) -> None:
    built = bench.build(database_url, 300, MIGRATIONS)

    assert (built.profiles, built.identifiers, built.reused) == (300, 900, False)
    service = IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write),
        IdentifierKeyring(bench.BENCH_KEY),
    )
    for n in (0, 1, 2, 299):
        # The generator hashed what the service's normalisation gives for the raw values.
        for identifier in bench.identifiers_of(n):
            resolution = await service.resolve_profile([identifier])
            assert resolution.profile_id == bench.profile_id(n) and not resolution.created
    phones = [i for i in bench.identifiers_of(2) if i.type == "phone"]
    assert phones and (await service.lookup_profile(phones)).profile_id == bench.profile_id(2)

    again = bench.build(database_url, 300, MIGRATIONS, reuse=True)
    assert again.reused and again.identifiers == 900
    with pytest.raises(SystemExit, match="already holds 300 identity profiles"):
        bench.build(database_url, 500, MIGRATIONS)


async def test_the_timed_loop_reports_percentiles(database: Database, database_url: str) -> None:
    bench.build(database_url, 200, MIGRATIONS)

    result = await bench.measure(database_url, 200, samples=300)

    assert set(result) == {"one known identifier", "three known identifiers"}
    for summary in result.values():
        assert summary["count"] == 300
        assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    report = bench.format_report(
        {
            "database": "SQLite",
            "machine": bench.describe_machine(),
            "profiles": 200,
            "identifiers": 600,
            "build_s": 0.5,
            "reused": False,
            "samples": 300,
            "load_average": [0.5, 0.7],
            "resolve": result,
        }
    )
    assert "| one known identifier |" in report and "p99 ms" in report


def test_the_command_runs_end_to_end_on_sqlite(tmp_path: Path) -> None:
    from services.cli import main

    out = tmp_path / "result.json"
    code = main(["bench-identity", "--profiles", "150", "--samples", "100", "--json", str(out)])

    assert code == 0
    assert '"profiles": 150' in out.read_text()
