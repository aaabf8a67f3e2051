"""Group commit: writes submitted concurrently are handed to one writer in batches.

Used where a Decide writes (context's decision log, identity's first-seen profiles): one
transaction per batch instead of one per caller, since the session, the commit and the
statements' overhead were most of the cost of such a write (docs/benchmarks.md).

A batch is whatever is queued when the writer is free (at most ``max_batch``): no timer, so a
lone caller waits for nobody. The writer is a task started by the first submission and
ending when the queue is empty (no task idles, none outlives its event loop). Each caller
is answered by the batch function (``Pending.resolve`` / ``Pending.fail``), which it must
do for every item once what it wrote is committed; an exception out of the batch function
fails every caller it did not answer (nothing of the batch is assumed committed). A caller
that gives up waiting (cancelled) does not cancel the write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Pending(Generic[T, R]):
    """One submitted item and the future its caller waits on."""

    item: T
    done: asyncio.Future[R]

    def resolve(self, result: R) -> None:
        if not self.done.done():  # the caller may have given up (cancelled)
            self.done.set_result(result)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class GroupCommit(Generic[T, R]):
    """Queue + one writer task; ``write`` gets each batch and answers its items."""

    def __init__(
        self,
        write: Callable[[list[Pending[T, R]]], Awaitable[None]],
        *,
        max_batch: int,
        stopped: str,
    ) -> None:
        """``stopped``: the error callers get when the loop closes before their write."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._write_batch = write
        self._max_batch = max_batch
        self._stopped = stopped
        self._queue: list[Pending[T, R]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._queue.append(Pending(item, done))
        if self._writer is None:
            self._writer = loop.create_task(self._write_queued())
        return await done

    async def close(self) -> None:
        """Wait until everything queued is written (graceful stop)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write_queued(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._write(batch)
        except BaseException:  # cancelled (the loop is closing): fail what still waits
            queued, self._queue = self._queue, []
            for pending in queued:
                pending.fail(RuntimeError(self._stopped))
            raise
        finally:
            self._writer = None

    async def _write(self, batch: list[Pending[T, R]]) -> None:
        try:
            await self._write_batch(batch)
            for pending in batch:  # a batch function that forgot one must not hang it
                pending.fail(RuntimeError("the writer gave no answer for this item"))
        except BaseException as error:  # incl. cancellation: no caller waits forever
            for pending in batch:
                pending.fail(error if isinstance(error, Exception) else RuntimeError(self._stopped))
            if not isinstance(error, Exception):
                raise
