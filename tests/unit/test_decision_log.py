"""The decision log's group commit (services/context/decision_log.py), with fake
writers: batching, a conflicting batch written one by one, errors to every caller,
cancellation and the drain on close; the JSON text its payloads are stored as and the
check of a record's sizes."""

from __future__ import annotations

import asyncio
import enum
import json
from datetime import UTC, datetime

import pytest

from libs.contracts.context import DecisionRecord, RecordedDecision
from libs.contracts.context_checks import validate_record
from libs.errors import AlreadyExists, InvalidArgument
from libs.storage import StorageConflict
from services.context.decision_log import DecisionLog
from services.context.store.sql import json_text

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def record(decision_id: str) -> DecisionRecord:
    return DecisionRecord(decision_id, "", "p1", "web", "home", "offer_a", NOW)


class FakeWriters:
    """Writes into ``stored``; ``conflicts``: ids that make a batch fail with
    StorageConflict (and, one by one, AlreadyExists); ``broken``: any batch fails."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.batches: list[list[str]] = []
        self.conflicts: set[str] = set()
        self.broken: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def write_batch(self, records: list[DecisionRecord]) -> list[RecordedDecision]:
        self.batches.append([r.decision_id for r in records])
        if self.gate is not None:
            await self.gate.wait()
        if self.broken is not None:
            raise self.broken
        if any(r.decision_id in self.conflicts for r in records):
            raise StorageConflict("taken")
        self.stored.extend(r.decision_id for r in records)
        return [RecordedDecision(r, replayed=False) for r in records]

    async def write_one(self, record: DecisionRecord) -> RecordedDecision:
        if record.decision_id in self.conflicts:
            raise AlreadyExists(f"decision {record.decision_id} is already recorded")
        self.stored.append(record.decision_id)
        return RecordedDecision(record, replayed=False)


def decision_log(writers: FakeWriters, max_batch: int = 256) -> DecisionLog:
    return DecisionLog(writers.write_batch, writers.write_one, max_batch=max_batch)


async def test_concurrent_records_are_written_in_one_batch() -> None:
    writers = FakeWriters()
    log = decision_log(writers)

    recorded = await asyncio.gather(*(log.record(record(f"d{i}")) for i in range(10)))

    assert [r.record.decision_id for r in recorded] == [f"d{i}" for i in range(10)]
    assert writers.batches == [[f"d{i}" for i in range(10)]]
    assert log.batches == 1


async def test_a_lone_record_is_written_at_once_and_each_caller_waits_for_its_commit() -> None:
    writers = FakeWriters()
    writers.gate = asyncio.Event()
    log = decision_log(writers)

    first = asyncio.ensure_future(log.record(record("d1")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # Queued while the writer is busy with d1: the next batch.
    second = asyncio.ensure_future(log.record(record("d2")))
    third = asyncio.ensure_future(log.record(record("d3")))
    await asyncio.sleep(0)
    assert writers.batches == [["d1"]]
    assert not first.done()  # not committed yet: not returned
    writers.gate.set()
    await asyncio.gather(first, second, third)

    assert writers.batches == [["d1"], ["d2", "d3"]]
    assert writers.stored == ["d1", "d2", "d3"]


async def test_batches_are_at_most_max_batch() -> None:
    writers = FakeWriters()
    log = decision_log(writers, max_batch=4)

    await asyncio.gather(*(log.record(record(f"d{i}")) for i in range(10)))

    assert [len(batch) for batch in writers.batches] == [4, 4, 2]


async def test_a_conflicting_record_fails_alone() -> None:
    writers = FakeWriters()
    writers.conflicts = {"d3"}
    log = decision_log(writers)

    results = await asyncio.gather(
        *(log.record(record(f"d{i}")) for i in range(6)), return_exceptions=True
    )

    assert isinstance(results[3], AlreadyExists)
    assert [r.record.decision_id for r in results if isinstance(r, RecordedDecision)] == [
        "d0",
        "d1",
        "d2",
        "d4",
        "d5",
    ]
    assert writers.stored == ["d0", "d1", "d2", "d4", "d5"]


async def test_an_error_reaches_every_caller_of_the_batch() -> None:
    writers = FakeWriters()
    writers.broken = ConnectionError("database down")
    log = decision_log(writers)

    results = await asyncio.gather(
        *(log.record(record(f"d{i}")) for i in range(3)), return_exceptions=True
    )

    assert all(isinstance(r, ConnectionError) for r in results)
    # The log goes on: the next record is written once the database is back.
    writers.broken = None
    assert (await log.record(record("d9"))).record.decision_id == "d9"


async def test_a_caller_giving_up_does_not_cancel_the_write() -> None:
    writers = FakeWriters()
    writers.gate = asyncio.Event()
    log = decision_log(writers)

    impatient = asyncio.ensure_future(log.record(record("d1")))
    patient = asyncio.ensure_future(log.record(record("d2")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    writers.gate.set()

    assert (await patient).record.decision_id == "d2"
    assert writers.stored == ["d1", "d2"]


async def test_close_drains_what_is_queued() -> None:
    writers = FakeWriters()
    writers.gate = asyncio.Event()
    log = decision_log(writers, max_batch=2)
    pending = [asyncio.ensure_future(log.record(record(f"d{i}"))) for i in range(5)]
    await asyncio.sleep(0)

    closing = asyncio.ensure_future(log.close())
    await asyncio.sleep(0)
    assert not closing.done()
    writers.gate.set()
    await closing

    assert writers.stored == [f"d{i}" for i in range(5)]
    assert all(task.done() for task in pending)
    await log.close()  # nothing queued: returns at once


# ---------------------------------------------------------------------- stored JSON text


class Level(enum.StrEnum):
    FULL = "full"


def test_json_text_reads_back_as_the_json_module_wrote_it() -> None:
    value = {
        "name": "Café ☕ 東京",
        "nested": {"list": [1, 2.5, -0.0, 1e-7, 1e16, True, False, None], "empty": {}},
        "tuple": (1, "two"),
        "control": '\x00\n\t"\\',
        "level": Level.FULL,
    }

    text = json_text(value)

    assert isinstance(text, str)
    assert json.loads(text) == json.loads(json.dumps(value))


def test_json_text_leaves_what_orjson_would_write_differently_to_the_json_module() -> None:
    # Integers beyond 64 bits, non-str keys: the json module's own text.
    for value in ({"big": 2**70}, {1: "one", None: 2}):
        assert json_text(value) == json.dumps(value)
    # What the json module refuses is still refused (a record that cannot be stored).
    for refused in ({"at": NOW}, {"record": record("d1")}):
        with pytest.raises(TypeError):
            json_text(refused)


def test_a_record_too_long_for_its_columns_is_refused_naming_the_field() -> None:
    too_long = DecisionRecord("d1", "", "p1", "w" * 65, "home", "offer_a", NOW)

    with pytest.raises(InvalidArgument) as refused:
        validate_record(too_long)

    assert [v.field for v in refused.value.violations] == ["record.channel"]
    validate_record(record("d1"))  # a valid one passes
