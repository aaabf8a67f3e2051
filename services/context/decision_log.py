"""The decision log: every decision answered, stored once (a request id given again replays
the decision stored first), with what learning needs of it in its payload.

Decisions are written by group commit (``DecisionLog``) over ``DecisionLogWriters``: a
batch in one transaction, one record at a time when a batch meets a conflict. A record
sent by another process has its payload redacted first (``payload_redacted``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from libs.contracts.context import DecisionRecord, RecordedDecision
from libs.contracts.snapshot import PACKED_KEYS, SNAPSHOT_KEY
from libs.errors import AlreadyExists
from libs.group_commit import GroupCommit, Pending
from libs.pii import redact_for_storage
from libs.storage import StorageConflict
from services.context.repository import ContextUnitOfWork

UnitOfWorkFactory = Callable[[bool], ContextUnitOfWork]
# The redaction of a decision's payload is counted as (a metric's label).
DECISION_PAYLOAD = "decision_payload"
# The key of a decision's payload holding the action served, as the catalog wrote it
# (services/orchestrator/model.py, Decision.to_payload).
SERVED_ACTION = "action"
MAX_DECISIONS_PER_COMMIT = 256


class DecisionLog:
    """Group commit of the decision log (libs/group_commit.py): decisions recorded
    concurrently are written together, one transaction and a few bulk statements per batch,
    instead of one transaction each.

    Each caller waits for the commit of its batch: a decision is durable before ``record``
    returns (its outcome can be recorded as soon as it is answered). ``write_batch`` writes
    a batch in one transaction; on StorageConflict (a decision or request id taken
    meanwhile, by another process) the batch is written again one record at a time by
    ``write_one``, so that only the conflicting record gets its own answer (replay or
    AlreadyExists). Any other error fails every caller of the batch.
    """

    def __init__(
        self,
        write_batch: Callable[[list[DecisionRecord]], Awaitable[list[RecordedDecision]]],
        write_one: Callable[[DecisionRecord], Awaitable[RecordedDecision]],
        *,
        max_batch: int = MAX_DECISIONS_PER_COMMIT,
    ) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._commits: GroupCommit[DecisionRecord, RecordedDecision] = GroupCommit(
            self._write,
            max_batch=max_batch,
            stopped="the decision log stopped before this decision was written",
        )
        self.batches = 0  # batches committed (tests, benchmarks)

    async def record(self, record: DecisionRecord) -> RecordedDecision:
        return await self._commits.submit(record)

    async def close(self) -> None:
        """Wait until everything queued is written (graceful stop)."""
        await self._commits.close()

    async def _write(self, batch: list[Pending[DecisionRecord, RecordedDecision]]) -> None:
        try:
            results = await self._write_batch([pending.item for pending in batch])
        except StorageConflict:
            for pending in batch:
                try:
                    pending.resolve(await self._write_one(pending.item))
                except Exception as error:
                    pending.fail(error)
            return
        self.batches += 1
        for pending, result in zip(batch, results, strict=True):
            pending.resolve(result)


class DecisionLogWriters:
    """What the group commit writes with: a batch in one transaction, or one record."""

    def __init__(self, units: UnitOfWorkFactory) -> None:
        self._units = units

    async def write_batch(self, records: list[DecisionRecord]) -> list[RecordedDecision]:
        """One transaction for a batch of validated records. Replays (a request id stored
        already, or given twice in the batch) get the decision stored first and write
        nothing; the others are written with bulk statements."""
        results: list[RecordedDecision | None] = [None] * len(records)
        fresh: list[DecisionRecord] = []
        async with self._units(True) as uow:
            request_ids = [r.request_id for r in records if r.request_id]
            earlier = await uow.decisions.decisions_by_requests(request_ids)
            for index, record in enumerate(records):
                first = earlier.get(record.request_id) if record.request_id else None
                if first is not None:
                    results[index] = RecordedDecision(first, replayed=True)
                    continue
                if record.request_id:
                    # A later record of this batch with the same request id replays it (as
                    # read back from storage: without the predictions).
                    earlier[record.request_id] = replace(record, predictions=())
                fresh.append(record)
                results[index] = RecordedDecision(record, replayed=False)
            if fresh:
                await uow.decisions.add_decisions(fresh)
                await uow.commit()
        return [result for result in results if result is not None]

    async def write_one(self, record: DecisionRecord) -> RecordedDecision:
        """One record in its own transactions (a batch that met a conflict)."""
        if record.request_id:
            async with self._units(False) as uow:
                earlier = await uow.decisions.decision_by_request(record.request_id)
            if earlier is not None:
                return RecordedDecision(earlier, replayed=True)
        try:
            async with self._units(True) as uow:
                await uow.decisions.add_decision(record)
                if record.action_id and record.profile_id:
                    await uow.decisions.bump_interaction(
                        record.profile_id, record.action_id, record.channel, "decisions", None
                    )
                if record.predictions and record.profile_id:
                    await uow.profiles.set_predictions(record.profile_id, record.predictions)
                await uow.commit()
        except StorageConflict:
            async with self._units(False) as uow:
                earlier = await uow.decisions.decision_by_request(record.request_id)
            if earlier is None:
                raise AlreadyExists(f"decision {record.decision_id} is already recorded") from None
            return RecordedDecision(earlier, replayed=True)
        return RecordedDecision(record, replayed=False)


def payload_redacted(record: DecisionRecord, counted: Callable[[str, int], None]) -> DecisionRecord:
    """``record`` with personal data replaced in its payload (keys and values at any
        depth), for a record sent by another process; the same record when there was none.
    ``counted``: told (DECISION_PAYLOAD, how many values were replaced).

        The action served is the catalog's, kept as written: a treatment's support number is
        the business's, and a replayed decision must show the channel what it showed first."""
    payload = record.payload
    action = payload.get(SERVED_ACTION)
    snapshot = payload.get(SNAPSHOT_KEY)
    # A compact snapshot's packed arrays are numbers in base64: set aside, not walked.
    packed = (
        {key: snapshot[key] for key in PACKED_KEYS if key in snapshot}
        if isinstance(snapshot, dict)
        else {}
    )
    shown = payload if action is None else {**payload, SERVED_ACTION: None}
    if packed:
        assert isinstance(snapshot, dict)
        kept = {key: value for key, value in snapshot.items() if key not in packed}
        shown = {**shown, SNAPSHOT_KEY: kept}
    walked, count = redact_for_storage(shown)
    if not count:
        return record
    counted(DECISION_PAYLOAD, count)
    if action is not None:
        walked[SERVED_ACTION] = action
    if packed:
        walked[SNAPSHOT_KEY] = {**walked[SNAPSHOT_KEY], **packed}
    return replace(record, payload=walked)
