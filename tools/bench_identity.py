"""Identity benchmark: N profiles (3 identifiers each) bulk-loaded, then resolve latency.

``nextbest bench-identity --profiles 1000000 --database-url URL``

1. Migrates the database, then writes N profiles and 3N identifiers straight into the
   identity tables (PostgreSQL: COPY through psycopg; SQLite: executemany in one
   transaction), hashed exactly as the service hashes them, the rows sorted by primary key
   and the secondary index built after the load. A progress line shows how far it is.
2. Times ``IdentityService.resolve_profile`` in-process (no gRPC) for identifiers that are
   known: one identifier of a random profile, then all three of a random profile. Every
   answer is checked (the right profile, nothing created) and the database must hold the
   same rows afterwards (known identifiers are a read).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import psycopg
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from libs.contracts.identity import Identifier
from libs.storage import Database
from libs.storage.database import sync_url
from libs.storage.migrate import upgrade
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from services.identity.tables import IdentifierRow, ProfileRow

BENCH_KEY = b"nextbest-identity-bench"
_CHUNK = 50_000
_PROFILE_INDEX = "ix_identity_identifiers_profile_id"


def profile_id(n: int) -> str:
    return f"b{n:031x}"


def identifiers_of(n: int) -> list[Identifier]:
    """The raw identifiers of bench profile ``n``: customer id, e-mail, and a third that
    rotates between cookie, device and phone (a valid UK mobile number)."""
    third = n % 3
    if third == 0:
        last = Identifier("cookie_id", f"ck-{n:09d}")
    elif third == 1:
        last = Identifier("device_id", f"dev-{n:09d}")
    else:
        last = Identifier("phone", f"07{400 + n // 1_000_000} {n % 1_000_000:06d}")
    return [
        Identifier("customer_id", f"C{n:09d}"),
        Identifier("email", f"User.{n}@Example.com"),
        last,
    ]


def _normalised(n: int) -> list[tuple[str, str]]:
    """What ``identifiers_of(n)`` normalises to (computed directly: fast for millions)."""
    third = n % 3
    if third == 0:
        last = ("cookie_id", f"ck-{n:09d}")
    elif third == 1:
        last = ("device_id", f"dev-{n:09d}")
    else:
        last = ("phone", f"+447{400 + n // 1_000_000}{n % 1_000_000:06d}")
    return [("customer_id", f"C{n:09d}"), ("email", f"user.{n}@example.com"), last]


class Progress:
    """One line on stderr, rewritten in place on a terminal, every 10 % otherwise."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self._label, self._total, self._out = label, total, out
        self._started = time.monotonic()
        self._tty = out.isatty()
        self._shown = -1
        self._done = -1

    def update(self, done: int) -> None:
        if done == self._done:
            return
        self._done = done
        percent = 100 * done // max(self._total, 1)
        if not self._tty and (percent // 10 == self._shown // 10 and done < self._total):
            return
        if self._tty and percent == self._shown and done < self._total:
            return
        self._shown = percent
        width = 30
        bar = "#" * (width * percent // 100)
        line = (
            f"{self._label:<12} [{bar:<{width}}] {done:>11,}/{self._total:,} {percent:3d}% "
            f"{time.monotonic() - self._started:6.1f} s"
        )
        if self._tty:
            self._out.write("\r" + line + ("\n" if done >= self._total else ""))
        else:
            self._out.write(line + "\n")
        self._out.flush()


@dataclass
class BuildResult:
    profiles: int
    identifiers: int
    seconds: float
    reused: bool = False


def _rows(profiles: int, keyring: IdentifierKeyring) -> Iterator[tuple[str, str, str]]:
    for n in range(profiles):
        owner = profile_id(n)
        for kind, value in _normalised(n):
            yield kind, keyring.digest(kind, value), owner


def _sorted_identifiers(
    profiles: int, keyring: IdentifierKeyring, progress: Callable[[int], None]
) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for count, row in enumerate(_rows(profiles, keyring), 1):
        rows.append(row)
        if count % _CHUNK == 0:
            progress(count)
    progress(len(rows))
    # In primary-key order: the index grows at its end instead of all over the place.
    rows.sort()
    return rows


def _build_sqlite(path: str, profiles: int, keyring: IdentifierKeyring, now: datetime) -> int:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    hashing = Progress("hashing", profiles * 3)
    rows = _sorted_identifiers(profiles, keyring, hashing.update)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-1000000")
        connection.execute("BEGIN")
        connection.execute(f"DROP INDEX IF EXISTS {_PROFILE_INDEX}")
        progress = Progress("profiles", profiles)
        for start in range(0, profiles, _CHUNK):
            stop = min(start + _CHUNK, profiles)
            connection.executemany(
                "INSERT INTO identity_profiles (profile_id, created_at) VALUES (?, ?)",
                ((profile_id(n), stamp) for n in range(start, stop)),
            )
            progress.update(stop)
        progress = Progress("identifiers", len(rows))
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            connection.executemany(
                "INSERT INTO identity_identifiers "
                "(id_type, id_hash, profile_id, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)",
                ((kind, digest, owner, stamp, stamp) for kind, digest, owner in chunk),
            )
            progress.update(start + len(chunk))
        print("indexing identifiers by profile...", file=sys.stderr, flush=True)
        connection.execute(f"CREATE INDEX {_PROFILE_INDEX} ON identity_identifiers (profile_id)")
        connection.execute("COMMIT")
        connection.execute("ANALYZE")
    finally:
        connection.close()
    return len(rows)


def _libpq(url: str) -> str:
    return (
        make_url(sync_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def _build_postgres(url: str, profiles: int, keyring: IdentifierKeyring, now: datetime) -> int:
    hashing = Progress("hashing", profiles * 3)
    rows = _sorted_identifiers(profiles, keyring, hashing.update)
    with psycopg.connect(_libpq(url)) as connection:
        connection.execute(f"DROP INDEX IF EXISTS {_PROFILE_INDEX}")
        progress = Progress("profiles", profiles)
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY identity_profiles (profile_id, created_at) FROM STDIN") as copy,
        ):
            for n in range(profiles):
                copy.write_row((profile_id(n), now))
                if (n + 1) % _CHUNK == 0:
                    progress.update(n + 1)
        progress.update(profiles)
        progress = Progress("identifiers", len(rows))
        with (
            connection.cursor() as cursor,
            cursor.copy(
                "COPY identity_identifiers (id_type, id_hash, profile_id, first_seen, last_seen) "
                "FROM STDIN"
            ) as copy,
        ):
            for count, (kind, digest, owner) in enumerate(rows, 1):
                copy.write_row((kind, digest, owner, now, now))
                if count % _CHUNK == 0:
                    progress.update(count)
        progress.update(len(rows))
        print("indexing identifiers by profile...", file=sys.stderr, flush=True)
        connection.execute(f"CREATE INDEX {_PROFILE_INDEX} ON identity_identifiers (profile_id)")
        connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE identity_profiles")
        connection.execute("VACUUM ANALYZE identity_identifiers")
    return len(rows)


def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            profiles = connection.scalar(select(func.count()).select_from(ProfileRow))
            identifiers = connection.scalar(select(func.count()).select_from(IdentifierRow))
            return int(profiles or 0), int(identifiers or 0)
    finally:
        engine.dispose()


def build(
    url: str, profiles: int, migrations: Any, *, reuse: bool = False, now: datetime | None = None
) -> BuildResult:
    """Migrate, then load ``profiles`` bench profiles (or reuse the ones already there)."""
    upgrade(url, migrations)
    have_profiles, have_identifiers = _counts(url)
    if have_profiles:
        if reuse and have_profiles == profiles:
            return BuildResult(have_profiles, have_identifiers, 0.0, reused=True)
        raise SystemExit(
            f"the database already holds {have_profiles:,} identity profiles: use an empty "
            f"database, or --reuse with --profiles {have_profiles}"
        )
    keyring = IdentifierKeyring(BENCH_KEY)
    stamp = now or datetime.now(UTC)
    started = time.monotonic()
    parsed = make_url(sync_url(url))
    if parsed.get_backend_name() == "sqlite":
        identifiers = _build_sqlite(str(parsed.database), profiles, keyring, stamp)
    elif parsed.get_backend_name() == "postgresql":
        identifiers = _build_postgres(url, profiles, keyring, stamp)
    else:
        raise SystemExit(f"unsupported database for the bench: {parsed.get_backend_name()}")
    return BuildResult(profiles, identifiers, time.monotonic() - started)


def _summary(samples_ns: list[int], cpu_ns: list[int], seconds: float) -> dict[str, float]:
    ordered = sorted(samples_ns)
    cpu = sorted(cpu_ns)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6

    return {
        # This process's CPU per resolve (the database server's is not in it): a tail far
        # above it is time spent waiting -- for the database, or for a core.
        "cpu_p50_ms": cpu[len(cpu) // 2] / 1e6,
        "cpu_p99_ms": cpu[min(len(cpu) - 1, int(0.99 * len(cpu)))] / 1e6,
        "count": len(ordered),
        "per_second": len(ordered) / seconds if seconds else 0.0,
        "mean_ms": statistics.fmean(ordered) / 1e6,
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": ordered[-1] / 1e6,
    }


async def measure(url: str, profiles: int, samples: int, seed: int = 7) -> dict[str, Any]:
    """Resolve known identifiers ``samples`` times per scenario, one request at a time."""
    database = Database(url)
    service = IdentityService(
        lambda write: SqlIdentityUnitOfWork(database, write=write), IdentifierKeyring(BENCH_KEY)
    )
    rng = random.Random(seed)
    scenarios: dict[str, Callable[[int], list[Identifier]]] = {
        "one known identifier": lambda n: [rng.choice(identifiers_of(n))],
        "three known identifiers": identifiers_of,
    }
    results: dict[str, Any] = {}
    try:
        await database.warm_up()
        for name, pick in scenarios.items():
            for _ in range(min(2_000, samples)):  # warm-up: pool, statement caches
                n = rng.randrange(profiles)
                await service.resolve_profile(pick(n))
            timings: list[int] = []
            cpu: list[int] = []
            progress = Progress(name[:12], samples)
            started = time.monotonic()
            for done in range(1, samples + 1):
                n = rng.randrange(profiles)
                identifiers = pick(n)
                begin, begin_cpu = time.perf_counter_ns(), time.thread_time_ns()
                resolution = await service.resolve_profile(identifiers)
                timings.append(time.perf_counter_ns() - begin)
                cpu.append(time.thread_time_ns() - begin_cpu)
                if resolution.profile_id != profile_id(n) or resolution.created:
                    raise AssertionError(f"profile {n} resolved to {resolution}")
                if done % 1_000 == 0:
                    progress.update(done)
            results[name] = _summary(timings, cpu, time.monotonic() - started)
    finally:
        await database.dispose()
    return results


def describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def database_version(url: str) -> str:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                return f"SQLite {connection.scalar(text('select sqlite_version()'))}"
            return f"PostgreSQL {connection.scalar(text('show server_version'))}"
    finally:
        engine.dispose()


def run(
    url: str, profiles: int, samples: int, migrations: Any, *, reuse: bool = False
) -> dict[str, Any]:
    built = build(url, profiles, migrations, reuse=reuse)
    before = _counts(url)
    load_before = os.getloadavg()[0]
    latencies = asyncio.run(measure(url, profiles, samples))
    load_after = os.getloadavg()[0]
    after = _counts(url)
    if after != before:
        raise AssertionError(f"resolving known identifiers wrote rows: {before} -> {after}")
    return {
        "database": database_version(url),
        "machine": describe_machine(),
        "profiles": built.profiles,
        "identifiers": built.identifiers,
        "build_s": built.seconds,
        "reused": built.reused,
        "samples": samples,
        # Other work on the machine shows in the tail: the 1-minute load before and after.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "resolve": latencies,
    }


def format_report(result: dict[str, Any]) -> str:
    build_line = (
        "reused existing data" if result["reused"] else f"built in {result['build_s']:.0f} s"
    )
    lines = [
        f"{result['database']} | {result['machine']}",
        f"{result['profiles']:,} profiles, {result['identifiers']:,} identifiers, {build_line}; "
        f"load average {result['load_average'][0]} -> {result['load_average'][1]}",
        "",
        "| request | resolves/s | mean ms | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| CPU p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["resolve"].items():
        lines.append(
            f"| {name} | {s['per_second']:.0f} | {s['mean_ms']:.3f} | {s['p50_ms']:.3f} | "
            f"{s['p90_ms']:.3f} | {s['p99_ms']:.3f} | {s['p999_ms']:.3f} | {s['max_ms']:.2f} "
            f"| {s['cpu_p50_ms']:.3f} / {s['cpu_p99_ms']:.3f} |"
        )
    return "\n".join(lines)
