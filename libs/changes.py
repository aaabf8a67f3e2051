"""Change notifications: "something about this profile (or the whole catalog) changed".

Publishers (event ingestion, outcomes, catalog and model changes) announce keys: a profile id,
or ``ALL`` for changes that concern everyone. Subscribers (WatchDecisions streams) wait on
one key each and are woken once for any number of changes since they last looked, so a
burst of events causes one re-decision. A subscription is an asyncio.Event, not a thread:
thousands of idle streams cost a few hundred bytes each.

Two feeds: in-process (the embedded shape, and SQLite) and PostgreSQL LISTEN/NOTIFY (the
mesh: an event taken by one orchestrator replica wakes the subscriber on another).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import psycopg
from sqlalchemy.engine import make_url

from libs.logging import get_logger

ALL = "*"
CHANNEL = "nextbest_changes"
_NOTIFY_BYTES = 7000  # PostgreSQL's payload limit is 8000 bytes
_log = get_logger("nextbest.changes")


class ChangePublisher(Protocol):
    async def publish(self, keys: Iterable[str]) -> None: ...


class Subscription:
    def __init__(self, key: str) -> None:
        self.key = key
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait(self) -> None:
        """Until a change since the last wait (returns at once if one is pending)."""
        await self._changed.wait()
        self._changed.clear()


class InProcessChangeFeed:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def deliver(self, keys: Iterable[str]) -> None:
        for key in set(keys):
            if key == ALL:
                for subs in self._subscribers.values():
                    for sub in subs:
                        sub.notify()
                return
        for key in set(keys):
            for sub in self._subscribers.get(key, ()):
                sub.notify()

    async def publish(self, keys: Iterable[str]) -> None:
        self.deliver(keys)

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(key)
        self._subscribers[key].add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers[key].discard(subscription)
            if not self._subscribers[key]:
                del self._subscribers[key]

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class PostgresChangeFeed(InProcessChangeFeed):
    """Publishes with NOTIFY; one LISTEN connection per process fans out to local streams."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._publisher: psycopg.AsyncConnection[object] | None = None
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None

    async def publish(self, keys: Iterable[str]) -> None:
        payloads = _chunks(sorted(set(keys)))
        async with self._lock:
            for attempt in range(2):
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True
                        )
                    for payload in payloads:
                        await self._publisher.execute(
                            "SELECT pg_notify(%s, %s)", (CHANNEL, payload)
                        )
                    return
                except psycopg.OperationalError:
                    self._publisher = None
                    if attempt:
                        raise

    async def start(self) -> None:
        """Start listening (only processes that serve WatchDecisions need to)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    # Changes may have been missed while disconnected: everyone re-checks.
                    self.deliver([ALL])
                    delay = 0.1
                    async for notice in connection.notifies():
                        self.deliver(notice.payload.split(","))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # keep listening whatever the database does
                _log.warning("change feed disconnected", error=str(error), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._publisher is not None:
            await self._publisher.close()


def _chunks(keys: list[str]) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for key in keys:
        if current and size + len(key) + 1 > _NOTIFY_BYTES:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(key)
        size += len(key) + 1
    if current:
        chunks.append(",".join(current))
    return chunks


def change_feed(database_url: str) -> InProcessChangeFeed:
    """PostgreSQL's LISTEN/NOTIFY when the database is PostgreSQL, else in-process."""
    if make_url(database_url).get_backend_name() == "postgresql":
        return PostgresChangeFeed(database_url)
    return InProcessChangeFeed()
