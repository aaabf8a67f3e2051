"""The decision outbox: decisions are answered first and stored right behind the answer.

A channel must not wait for the decision log, and a decision it was given must accept its
outcomes later even when context was down at the time. So a decision goes to the outbox when
it is answered; one writer task gathers what is queued for up to ``linger_s`` (or until a
batch is full), hands the batch to context in one call (one RPC in the mesh, one group
commit in context) and keeps what fails, retrying with backoff until context takes it. An
outcome for a decision still queued cuts the wait short and waits for that decision to be
stored first (``flush``); so do exports and erasures (``flush_all``).

What is at risk: a decision queued in a process that is killed without a chance to drain
(kill -9, OOM) — at most what was queued since the writer's last batch, normally the
decisions of the last ``linger_s`` and a few milliseconds, or everything answered during a
context outage.
SIGTERM drains the outbox (``close``, within the drain period). docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
from collections import OrderedDict
from dataclasses import dataclass

from libs.contracts.context import DecisionRecord, RecordedDecision
from libs.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from libs.logging import get_logger
from services.orchestrator.ports import ContextPort

_log = get_logger("nextbest.orchestrator.outbox")
# How long an outcome (or an export, an erasure) waits for the decisions it follows to leave
# the outbox before UNAVAILABLE.
FLUSH_WAIT_S = 2.0


@dataclass
class _Queued:
    record: DecisionRecord
    stored: asyncio.Future[RecordedDecision]


class DecisionOutbox:
    """Decisions answered and not yet stored, written behind the answers (module doc)."""

    def __init__(
        self,
        context: ContextPort,
        *,
        max_batch: int = 64,
        max_queued: int = 100_000,
        retry_s: float = 0.05,
        max_retry_s: float = 2.0,
        linger_s: float = 0.0,
    ) -> None:
        self._context = context
        self._max_batch = max_batch
        self._linger_s = linger_s
        # Set when the writer should stop gathering and write now (a full batch, a flush).
        self._hurry = asyncio.Event()
        self._max_queued = max_queued
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._queued: OrderedDict[str, _Queued] = OrderedDict()
        self._by_request: dict[str, str] = {}
        # Queued decision ids by profile: a read of her context first stores hers
        # (``flush_profile``), so that her next decision sees the last one.
        self._by_profile: dict[str, set[str]] = {}
        # Set while context refuses the writes (a read then does not wait for them).
        self._failing = False
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queued)

    def add(
        self, record: DecisionRecord, *, waited_for: bool = False
    ) -> asyncio.Future[RecordedDecision]:
        """Queue ``record``; the future resolves once it is stored (nobody need wait).
        ``waited_for``: the caller waits for it (a Decide with a request_id): no lingering."""
        loop = asyncio.get_running_loop()
        if len(self._queued) >= self._max_queued:
            # Bounded memory during a long outage: the oldest decision is the one given up.
            _, oldest = self._queued.popitem(last=False)
            self._forget(oldest.record)
            self.dropped += 1
            if not oldest.stored.done():
                oldest.stored.set_exception(Unavailable("decision log full: not stored"))
                oldest.stored.exception()  # retrieved: nobody may be waiting
            _log.error("decision outbox full: oldest decision dropped", dropped=self.dropped)
        queued = _Queued(record, loop.create_future())
        self._queued[record.decision_id] = queued
        if record.request_id:
            self._by_request[record.request_id] = record.decision_id
        if record.profile_id:
            self._by_profile.setdefault(record.profile_id, set()).add(record.decision_id)
        if waited_for or len(self._queued) >= self._max_batch:
            self._write_now()
        if self._writer is None:
            # A context of its own: not the deadline, trace or log bindings of the decision
            # that happens to start it.
            self._writer = loop.create_task(self._write_queued(), context=contextvars.Context())
        return queued.stored

    def queued_for_request(self, request_id: str) -> DecisionRecord | None:
        """A decision answered for ``request_id`` and still queued (a retried request)."""
        decision_id = self._by_request.get(request_id)
        queued = self._queued.get(decision_id) if decision_id else None
        return queued.record if queued is not None else None

    def is_queued(self, decision_id: str) -> bool:
        return decision_id in self._queued

    async def flush(self, decision_id: str, timeout_s: float) -> None:
        """Wait until ``decision_id`` (if queued) is stored; Unavailable when it cannot be
        within ``timeout_s`` (context is down: the caller retries later)."""
        queued = self._queued.get(decision_id)
        if queued is None:
            return
        self._write_now()
        try:
            await asyncio.wait_for(asyncio.shield(queued.stored), timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"decision {decision_id} is not stored yet (context unavailable); retry"
            ) from None

    async def flush_profile(self, profile_id: str, timeout_s: float) -> None:
        """Store her queued decisions before her context is read (read your own writes: a
        contact policy or the interaction history must see the decision just answered).
        Returns at once when none is queued or context is refusing writes, and after
        ``timeout_s`` at most (the read then goes on without them)."""
        queued_ids = self._by_profile.get(profile_id)
        if not queued_ids or self._failing:
            return
        waiting = [asyncio.shield(self._queued[d].stored) for d in queued_ids]
        self._write_now()
        done, _ = await asyncio.wait(waiting, timeout=timeout_s)
        for future in done:
            future.exception()  # given up or dropped: nothing more to wait for

    async def flush_all(self, timeout_s: float) -> None:
        """Wait until every decision queued now is stored (before a profile is exported or
        erased, so that nothing of hers is written after); Unavailable when that cannot be
        within ``timeout_s``."""
        waiting = [asyncio.shield(q.stored) for q in self._queued.values()]
        if not waiting:
            return
        self._write_now()
        done, pending = await asyncio.wait(waiting, timeout=timeout_s)
        for future in done:
            future.exception()  # a dropped or refused one: nothing more to wait for
        if pending:
            raise Unavailable("decisions are not stored yet (context unavailable); retry")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Drain (graceful stop): wait for the writer to store what is queued."""
        self._closing = True
        self._write_now()
        writer = self._writer
        if writer is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(writer), timeout_s)
        except TimeoutError:
            _log.error("decision outbox not drained", queued=len(self._queued))
            writer.cancel()

    def _write_now(self) -> None:
        self._hurry.set()

    async def _gather(self) -> None:
        """Wait up to ``linger_s`` for more decisions, unless told to write now."""
        if not self._linger_s or self._closing or len(self._queued) >= self._max_batch:
            return
        if not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self._linger_s)
        self._hurry.clear()

    def _stored(self, queued: _Queued, result: RecordedDecision) -> None:
        self._queued.pop(queued.record.decision_id, None)
        self._forget(queued.record)
        if not queued.stored.done():
            queued.stored.set_result(result)

    def _give_up(self, queued: _Queued, error: Exception) -> None:
        self._queued.pop(queued.record.decision_id, None)
        self._forget(queued.record)
        _log.error("decision refused by the decision log", error=str(error))
        if not queued.stored.done():
            queued.stored.set_exception(error)
            queued.stored.exception()

    def _forget(self, record: DecisionRecord) -> None:
        if record.request_id and self._by_request.get(record.request_id) == record.decision_id:
            del self._by_request[record.request_id]
        queued_ids = self._by_profile.get(record.profile_id)
        if queued_ids is not None:
            queued_ids.discard(record.decision_id)
            if not queued_ids:
                del self._by_profile[record.profile_id]

    async def _write_queued(self) -> None:
        delay = self._retry_s
        try:
            while self._queued:
                await self._gather()
                batch = list(itertools.islice(self._queued.values(), self._max_batch))
                results: list[RecordedDecision | Exception]
                try:
                    results = list(await self._context.record_decisions([q.record for q in batch]))
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the call failed as a whole: all of it again
                    results = [error] * len(batch)
                failed: Exception | None = None
                for queued, result in zip(batch, results, strict=True):
                    if isinstance(result, RecordedDecision):
                        self._stored(queued, result)
                    elif isinstance(result, AlreadyExists):
                        # Its id is stored: an earlier attempt was, though its answer was lost.
                        self._stored(queued, RecordedDecision(queued.record, replayed=False))
                    elif isinstance(result, InvalidArgument | FailedPrecondition):
                        # Refused, not unavailable: retrying cannot help.
                        self._give_up(queued, result)
                    else:
                        failed = result
                self._failing = failed is not None
                if failed is not None:
                    if self._closing and delay >= self._max_retry_s:
                        _log.error("decision outbox not drained", queued=len(self._queued))
                        return
                    _log.warning(
                        "decisions not stored yet; retrying",
                        queued=len(self._queued),
                        error=str(failed) or type(failed).__name__,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_retry_s)
                else:
                    delay = self._retry_s
        finally:
            self._writer = None
