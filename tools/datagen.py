"""Benchmark data generator: ``nextbest datagen --profiles 1000000 --events 10000000``.

Builds a database that looks as if ingestion had run for weeks: identity profiles with their
identifiers, context events, and the aggregates those events imply, written straight into
the tables in bulk (PostgreSQL ``COPY``; SQLite ``executemany`` in large transactions with
durability pragmas off, since a half-built bench database is simply rebuilt).

Consistency with what the services would have written:
- identifiers are hashed with the identity service's keyring built from the same settings
  (``NEXTBEST_HASH_KEY``), so a Decide for ``customer_id=C000000042`` resolves to the
  generated profile 42;
- the aggregates are folded by the context service's own ``BatchAggregates`` with the
  configured ``AggregatePlan`` (``NEXTBEST_AGGREGATES``) at the generation time ``now``;
  every profile's events are folded in one piece, so each aggregate row is written once,
  complete (no upsert needed);
- values are stored as SQLAlchemy's column types store them (UTC text on SQLite, JSON text).

Profiles are generated in chunks (events of a chunk held in memory, then written table by
table in primary-key order, so every B-tree grows at its end); the secondary indexes of the
two big tables are dropped during the load and built once at the end.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from libs.config import Settings
from libs.storage.database import sync_url
from libs.storage.migrate import upgrade
from libs.storage.types import sqlite_time_text
from services.context.aggregates import AggregatePlan, BatchAggregates
from services.identity.normalize import IdentifierKeyring
from services.identity.tables import ProfileRow

# (event type, weight, channels it happens on, attributes); purchases carry a value.
EVENT_MIX: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("page_view", 60, ("web", "mobile")),
    ("compare_plans", 12, ("web", "mobile")),
    ("cancel_page", 6, ("web", "mobile")),
    ("purchase", 8, ("web", "mobile", "call_center")),
    ("support_call", 6, ("call_center",)),
    ("email_open", 8, ("email",)),
)
PAGES = ("home", "plans", "devices", "billing", "support", "offers")
HISTORY_DAYS = 35  # a little beyond the longest default window (30d): some buckets age out
PROFILES_PER_CHUNK = 5_000
_INDEXES = {
    "ix_context_events_profile": "context_events (profile_id, occurred_at)",
    "ix_identity_identifiers_profile_id": "identity_identifiers (profile_id)",
}


def profile_id(n: int) -> str:
    """Generated profile n's id (32 characters, like the service's uuid4 hex)."""
    return f"d{n:031x}"


def customer_id(n: int) -> str:
    """The customer_id of generated profile n (already normalised)."""
    return f"C{n:09d}"


def cookie_id(n: int) -> str:
    return f"dg-{n:09d}"


@dataclass
class GenerateResult:
    profiles: int
    identifiers: int
    events: int
    counters: int
    buckets: int
    channels: int
    seconds: float
    phases_s: dict[str, float] = field(default_factory=dict)
    size_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Chunk:
    """The rows of one range of profiles, each table in primary-key order."""

    profiles: list[tuple[str]]
    identifiers: list[tuple[str, str, str]]
    events: list[tuple[str, str, str, str, datetime, datetime, str]]
    counters: list[tuple[str, str, int, float, datetime | None, datetime | None, str]]
    buckets: list[tuple[str, str, int, int, int, float]]
    channels: list[tuple[str, str, datetime, datetime, int]]


class _Generator:
    def __init__(self, settings: Settings, profiles: int, events: int, now: datetime, seed: int):
        self.keyring = IdentifierKeyring.from_settings(settings)
        self.plan = AggregatePlan(settings.aggregates)
        self.profiles, self.events, self.now = profiles, events, now
        self.seed = seed
        weights = [w for _, w, _ in EVENT_MIX]
        self._types = [(name, channels) for name, _, channels in EVENT_MIX]
        total = sum(weights)
        self._cumulative = [sum(weights[: i + 1]) / total for i in range(len(weights))]

    def events_of(self, n: int) -> int:
        base, extra = divmod(self.events, self.profiles)
        return base + (1 if n < extra else 0)

    def chunk(self, start: int, stop: int) -> _Chunk:
        rng = random.Random(self.seed * 1_000_003 + start)
        history_s = HISTORY_DAYS * 86400
        batch = BatchAggregates(self.plan, self.now)
        chunk = _Chunk([], [], [], [], [], [])
        for n in range(start, stop):
            owner = profile_id(n)
            chunk.profiles.append((owner,))
            links = sorted(
                (kind, self.keyring.digest(kind, value), owner)
                for kind, value in (("customer_id", customer_id(n)), ("cookie_id", cookie_id(n)))
            )
            chunk.identifiers.extend(links)
            for j in range(self.events_of(n)):
                pick = rng.random()
                kind = next(i for i, edge in enumerate(self._cumulative) if pick <= edge)
                event_type, channels = self._types[kind]
                channel = channels[rng.randrange(len(channels))]
                at = self.now - timedelta(seconds=rng.random() * history_s)
                attributes: dict[str, Any] = {"page": PAGES[rng.randrange(len(PAGES))]}
                if event_type == "purchase":
                    attributes["value"] = float(rng.randrange(5, 500))
                batch.add_event(owner, event_type, channel, at, attributes)
                chunk.events.append(
                    (
                        f"{owner}-{j:06d}",
                        owner,
                        event_type,
                        channel,
                        at,
                        at + timedelta(seconds=rng.random() * 5),
                        json.dumps(attributes),
                    )
                )
        chunk.counters = [
            (
                owner,
                event_type,
                delta.count,
                delta.value_sum,
                delta.first,
                delta.last,
                json.dumps(self.plan.last_values(delta.last_attributes)),
            )
            for (owner, event_type), delta in sorted(batch.counters.items())
        ]
        chunk.buckets = batch.bucket_rows()
        chunk.channels = [
            (owner, channel, seen.first, seen.last, seen.events)
            for (owner, channel), seen in sorted(batch.channels.items())
        ]
        return chunk


# ------------------------------------------------------------------ writers


def _sqlite_time(value: datetime | None) -> str | None:
    return sqlite_time_text(value) if value is not None else None


class _SqliteWriter:
    def __init__(self, path: str, now: datetime) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        # No journal while building: in WAL mode the single build transaction would first
        # be written whole to the WAL (the size of the database) and then copied again by
        # the checkpoint; a half-built bench database is rebuilt, never rolled back.
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "cache_size=-500000",
            "temp_store=MEMORY",
        ):
            self.connection.execute(f"PRAGMA {pragma}")
        self.stamp = _sqlite_time(now)
        self.connection.execute("BEGIN")
        for name in _INDEXES:
            self.connection.execute(f"DROP INDEX IF EXISTS {name}")

    def write(self, chunk: _Chunk) -> None:
        t = _sqlite_time
        run = self.connection.executemany
        run(
            "INSERT INTO identity_profiles (profile_id, created_at) VALUES (?, ?)",
            [(owner, self.stamp) for (owner,) in chunk.profiles],
        )
        run(
            "INSERT INTO identity_identifiers (id_type, id_hash, profile_id, first_seen,"
            " last_seen) VALUES (?, ?, ?, ?, ?)",
            [(k, d, o, self.stamp, self.stamp) for k, d, o in chunk.identifiers],
        )
        run(
            "INSERT INTO context_events (event_id, profile_id, type, channel, occurred_at,"
            " received_at, attributes) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(e, o, ty, c, t(at), t(rx), a) for e, o, ty, c, at, rx, a in chunk.events],
        )
        run(
            "INSERT INTO context_counters (profile_id, event_type, count, value_sum,"
            " first_occurred_at, last_occurred_at, last_values) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(o, ty, n, v, t(f), t(la), lv) for o, ty, n, v, f, la, lv in chunk.counters],
        )
        run(
            "INSERT INTO context_buckets (profile_id, event_type, width_s, bucket_start, count,"
            " value_sum) VALUES (?, ?, ?, ?, ?, ?)",
            chunk.buckets,
        )
        run(
            "INSERT INTO context_channels (profile_id, channel, first_seen_at, last_seen_at,"
            " events) VALUES (?, ?, ?, ?, ?)",
            [(o, c, t(f), t(la), n) for o, c, f, la, n in chunk.channels],
        )

    def finish(self, on_phase: Callable[[str], None]) -> None:
        on_phase("indexes")
        for name, on in _INDEXES.items():
            self.connection.execute(f"CREATE INDEX {name} ON {on}")
        self.connection.execute("COMMIT")
        on_phase("analyse")
        self.connection.execute("ANALYZE")
        # Back to the journal the services expect (libs/storage/database.py sets WAL too).
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.close()


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    # Generated values hold no tab, newline or backslash: nothing to escape.
    return str(value)


class _PostgresWriter:
    _COPIES: Sequence[tuple[str, str]] = (
        ("profiles", "identity_profiles (profile_id, created_at)"),
        (
            "identifiers",
            "identity_identifiers (id_type, id_hash, profile_id, first_seen, last_seen)",
        ),
        (
            "events",
            "context_events (event_id, profile_id, type, channel, occurred_at, received_at,"
            " attributes)",
        ),
        (
            "counters",
            "context_counters (profile_id, event_type, count, value_sum, first_occurred_at,"
            " last_occurred_at, last_values)",
        ),
        (
            "buckets",
            "context_buckets (profile_id, event_type, width_s, bucket_start, count, value_sum)",
        ),
        ("channels", "context_channels (profile_id, channel, first_seen_at, last_seen_at, events)"),
    )

    def __init__(self, url: str, now: datetime) -> None:
        libpq = make_url(sync_url(url)).set(drivername="postgresql")
        self.connection = psycopg.connect(libpq.render_as_string(hide_password=False))
        self.stamp = now.isoformat()
        for name in _INDEXES:
            self.connection.execute(f"DROP INDEX IF EXISTS {name}")

    def _rows(self, name: str, chunk: _Chunk) -> Iterator[Sequence[Any]]:
        if name == "profiles":
            return ((owner, self.stamp) for (owner,) in chunk.profiles)
        if name == "identifiers":
            return ((k, d, o, self.stamp, self.stamp) for k, d, o in chunk.identifiers)
        rows: list[Sequence[Any]] = getattr(chunk, name)
        return iter(rows)

    def write(self, chunk: _Chunk) -> None:
        # One COPY per table and chunk, the text format assembled here (cheaper than
        # psycopg's per-value adaptation for millions of rows).
        with self.connection.cursor() as cursor:
            for name, target in self._COPIES:
                with cursor.copy(f"COPY {target} FROM STDIN") as copy:
                    copy.write(
                        "".join(
                            "\t".join(map(_copy_text, row)) + "\n"
                            for row in self._rows(name, chunk)
                        )
                    )

    def finish(self, on_phase: Callable[[str], None]) -> None:
        on_phase("indexes")
        for name, on in _INDEXES.items():
            self.connection.execute(f"CREATE INDEX {name} ON {on}")
        self.connection.commit()
        on_phase("analyse")
        self.connection.autocommit = True
        for table in (
            "identity_profiles",
            "identity_identifiers",
            "context_events",
            "context_counters",
            "context_buckets",
            "context_channels",
        ):
            self.connection.execute(f"VACUUM ANALYZE {table}")
        self.connection.close()


class _PhaseTimer:
    """Records how long each named phase of the final steps takes."""

    def __init__(self, phases: dict[str, float], verbose: bool) -> None:
        self._phases, self._verbose = phases, verbose
        self._name, self._since = "", time.monotonic()

    def start(self, name: str) -> None:
        if self._name:
            self._phases[self._name] = time.monotonic() - self._since
        self._name, self._since = name, time.monotonic()
        if name and self._verbose:
            print(f"{name}...", flush=True)


def _existing_profiles(url: str) -> int:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(ProfileRow)) or 0)
    finally:
        engine.dispose()


def database_size(url: str) -> int | None:
    """Bytes on disk (SQLite file with its WAL; pg_database_size for PostgreSQL)."""
    parsed = make_url(sync_url(url))
    if parsed.get_backend_name() == "sqlite":
        from pathlib import Path

        path = Path(str(parsed.database))
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            size = connection.exec_driver_sql("SELECT pg_database_size(current_database())")
            return int(size.scalar() or 0)
    finally:
        engine.dispose()


def generate(
    url: str,
    settings: Settings,
    migrations: Any,
    *,
    profiles: int,
    events: int,
    seed: int = 7,
    now: datetime | None = None,
    progress: bool = True,
) -> GenerateResult:
    """Migrate ``url`` and fill it with ``profiles`` profiles and ``events`` events (spread
    evenly, over the last HISTORY_DAYS days) with their aggregates. The database must hold
    no identity profile yet."""
    if profiles < 1 or events < 0:
        raise ValueError("profiles must be >= 1 and events >= 0")
    upgrade(url, migrations)
    if _existing_profiles(url):
        raise SystemExit("the database already holds identity profiles: use an empty database")
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    generator = _Generator(settings, profiles, events, stamp, seed)
    backend = make_url(sync_url(url)).get_backend_name()
    writer: _SqliteWriter | _PostgresWriter
    if backend == "sqlite":
        writer = _SqliteWriter(str(make_url(sync_url(url)).database), stamp)
    elif backend == "postgresql":
        writer = _PostgresWriter(url, stamp)
    else:
        raise SystemExit(f"unsupported database: {backend}")
    totals = dict.fromkeys(("identifiers", "events", "counters", "buckets", "channels"), 0)
    phases: dict[str, float] = {}
    started = time.monotonic()
    generating = writing = 0.0
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=events or profiles, unit=" events" if events else " profiles")
    for start in range(0, profiles, PROFILES_PER_CHUNK):
        stop = min(start + PROFILES_PER_CHUNK, profiles)
        t0 = time.monotonic()
        chunk = generator.chunk(start, stop)
        t1 = time.monotonic()
        writer.write(chunk)
        generating += t1 - t0
        writing += time.monotonic() - t1
        for name in totals:
            totals[name] += len(getattr(chunk, name))
        if bar is not None:
            bar.update(len(chunk.events) if events else stop - start)
    if bar is not None:
        bar.close()
    phases["generate"], phases["write"] = generating, writing
    timer = _PhaseTimer(phases, progress)
    writer.finish(timer.start)
    timer.start("")
    return GenerateResult(
        profiles=profiles,
        seconds=time.monotonic() - started,
        phases_s=phases,
        size_bytes=database_size(url),
        **totals,
    )


def format_result(result: GenerateResult) -> str:
    size = f"{result.size_bytes / 1e9:.2f} GB" if result.size_bytes else "size unknown"
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.phases_s.items())
    return (
        f"{result.profiles:,} profiles, {result.identifiers:,} identifiers, "
        f"{result.events:,} events, {result.counters:,} counters, {result.buckets:,} buckets, "
        f"{result.channels:,} channels in {result.seconds:.0f} s ({phases}); {size}"
    )
