"""Parsing catalogs for CatalogService without stalling the decisions of the same process.

A large catalog takes seconds of CPU to read and validate (YAML, then every CEL expression
compiled, type-checked and planned per action), and a thread would not be enough: the
YAML loader and the compiler hold the GIL for long stretches, so the event loop serving
Decide would wait behind them (docs/operations.md, "Limits", has the measurements). So:

- the document is validated in a worker process (the YAML read, every check of
  ``parse_catalog``), which returns the normalised document or the problems; a dry run is
  answered from that alone;
- an apply then builds its ``Catalog`` (compiled programs cannot cross processes) from the
  normalised document in a thread, with a short GIL switch interval for the duration so
  that the event loop gets the GIL back within a fraction of a millisecond;
- a small document (up to ``INLINE_BYTES``, most catalogs) is validated in a thread the
  same way: a few milliseconds of work do not pay for starting a process;
- one catalog at a time, and a document larger than ``max_bytes`` is refused unread.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from libs.errors import FieldViolation, InvalidArgument, Unavailable
from services.arbitration.catalog import parse_catalog, parse_catalog_yaml
from services.arbitration.model import Catalog

# While a catalog is built in a thread: how long the event loop may wait for the GIL
# (CPython's default is 5 ms, several times a whole idle Decide).
BUILD_SWITCH_INTERVAL_S = 0.0002
PARENT_POLL_S = 1.0
T = TypeVar("T")
# Up to this size a document is validated in a thread, not in the worker process: libyaml
# holds the GIL for its whole read, ~1-2 ms per 10 kB (the demo catalog is 4 kB).
INLINE_BYTES = 16 * 1024


def _start_worker(parent: int) -> None:
    """In the worker process: the processes serving decisions come first for the CPU, and
    the worker ends with its server, however that one ended (a killed parent leaves it
    waiting on a queue it holds both ends of)."""
    os.nice(10)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _validate(text: str, dry_run: bool) -> tuple[Any, list[tuple[str, str]]]:
    """In the worker process: (answer, []) or (None, [(field, why)...]). The answer of a
    dry run is (version, action count); else the normalised document as JSON text (what
    crosses back is unpickled on the server's side: a string is a copy, a large dict
    would hold the GIL for milliseconds)."""
    try:
        catalog = parse_catalog_yaml(text)
    except InvalidArgument as error:
        return None, [(v.field, v.description) for v in error.violations]
    if dry_run:
        return (catalog.version, len(catalog.actions)), []
    return json.dumps(catalog.document), []


def _in_thread(work: Callable[..., T], *args: Any) -> T:
    """``work`` run in a thread of this process, with a short GIL switch interval while it
    runs (see BUILD_SWITCH_INTERVAL_S)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(BUILD_SWITCH_INTERVAL_S)
    try:
        return work(*args)
    finally:
        sys.setswitchinterval(previous)


def _build(document: str) -> Catalog:
    """A validated normalised document (JSON) compiled in this process."""
    return parse_catalog(json.loads(document), check_types=False)


class CatalogParser:
    """Parses what ApplyCatalog receives (see the module's docstring); ``close`` stops the
    worker process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that runs gRPC is unsafe.
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def validate(self, text: str, *, dry_run: bool) -> Any:
        """What ``_validate`` answers for YAML ``text`` (``build`` takes it when not a dry
        run), or InvalidArgument naming each problem."""
        size = len(text.encode())
        if size > self.max_bytes:
            raise InvalidArgument(
                FieldViolation(
                    "document",
                    f"{size} bytes: at most {self.max_bytes} (NEXTBEST_MAX_CATALOG_BYTES)",
                )
            )
        async with self._lock:
            if size <= INLINE_BYTES:
                answer, problems = await asyncio.to_thread(_in_thread, _validate, text, dry_run)
            else:
                try:
                    answer, problems = await asyncio.get_running_loop().run_in_executor(
                        self._worker(), _validate, text, dry_run
                    )
                except BrokenProcessPool:
                    self._pool = None  # a new worker for the next one
                    raise Unavailable("the catalog validation worker stopped; retry") from None
        if answer is None:
            raise InvalidArgument([FieldViolation(field, why) for field, why in problems])
        return answer

    async def build(self, document: str) -> Catalog:
        """The catalog of a document ``validate`` answered (not a dry run)."""
        async with self._lock:
            return await asyncio.to_thread(_in_thread, _build, document)

    async def parse(self, document: dict[str, Any]) -> Catalog:
        """A document not validated yet (the typed ``catalog`` field), checked in a thread."""
        async with self._lock:
            return await asyncio.to_thread(_in_thread, parse_catalog, document)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
