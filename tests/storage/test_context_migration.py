"""The context migration (0003_context) on a database holding data from before it."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import create_engine, inspect, text

from libs.storage.database import sync_url
from libs.storage.migrate import alembic_config, upgrade
from services.app import MIGRATIONS

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_upgrade_backfills_from_the_event_log_and_downgrade_removes(empty_url: str) -> None:
    upgrade(empty_url, MIGRATIONS, "0002")
    engine = create_engine(sync_url(empty_url))
    sqlite = engine.dialect.name == "sqlite"

    def stamp(at: datetime) -> object:
        return at.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else at

    try:
        with engine.begin() as connection:
            for n, (kind, channel) in enumerate(
                [("page_view", "web"), ("page_view", "mobile"), ("purchase", "web")]
            ):
                connection.execute(
                    text(
                        "INSERT INTO context_events (event_id, profile_id, type, channel,"
                        " occurred_at, received_at, attributes)"
                        " VALUES (:id, 'p1', :kind, :channel, :at, :at, '{}')"
                    ),
                    {"id": f"e{n}", "kind": kind, "channel": channel, "at": stamp(AT)},
                )
            connection.execute(
                text("INSERT INTO context_counters VALUES ('p1', 'page_view', 2, 0, :at)"),
                {"at": stamp(AT)},
            )
            connection.execute(
                text("INSERT INTO context_attributes VALUES ('p1', '{\"plan\": \"x\"}', :at)"),
                {"at": stamp(AT)},
            )

        upgrade(empty_url, MIGRATIONS)

        with engine.connect() as connection:
            first, last_values = connection.execute(
                text("SELECT first_occurred_at, last_values FROM context_counters")
            ).one()
            channels = connection.execute(
                text("SELECT channel, events FROM context_channels ORDER BY channel")
            ).all()
            times = connection.execute(
                text("SELECT attribute_times FROM context_attributes")
            ).scalar_one()
        assert first is not None
        assert last_values in ({}, "{}")
        assert [tuple(row) for row in channels] == [("mobile", 1), ("web", 2)]
        assert times in ({}, "{}")

        command.downgrade(alembic_config(empty_url, MIGRATIONS), "0003_context-1")
        tables = set(inspect(engine).get_table_names())
        assert "context_buckets" not in tables and "context_consents" not in tables
        assert "context_events" in tables
        columns = {c["name"] for c in inspect(engine).get_columns("context_counters")}
        assert "last_values" not in columns
        upgrade(empty_url, MIGRATIONS)  # and up again
    finally:
        engine.dispose()
