"""How the learning commands read the logged decisions of a window: from the database,
page by page with a progress bar on stderr, or from a Parquet or CSV log (``--log FILE``,
logfile.py).

Only light modules are imported at the top: the parser of every ``nextbest`` command
imports this module through the learning commands.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from libs.config import ConfigError, duration_s
from services.learning.windows import Window

if TYPE_CHECKING:
    from services.learning.dataset import LoggedDecision

T = TypeVar("T")

__all__ = ["horizon", "progress", "read_database", "read_decisions", "read_log_file"]


def horizon(text: str) -> timedelta:
    """``--horizon``: an accept or conversion counts when it comes within this time."""
    try:
        return timedelta(seconds=duration_s(text))
    except ValueError:
        raise ConfigError(f"--horizon: {text!r} is not a duration like 1h, 7d") from None


def progress(enabled: bool, description: str) -> Callable[[Iterable[T]], Iterator[T]]:
    """A wrapper that shows a progress bar on stderr over the items (none: not enabled)."""

    def wrap(items: Iterable[T]) -> Iterator[T]:
        if not enabled:
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, desc=description, unit=" rows", file=sys.stderr, leave=False)

    return wrap


async def read_database(
    args: argparse.Namespace, database_url: str, window: Window
) -> list[LoggedDecision]:
    """Every logged decision with a snapshot in ``window``, with a progress bar; a
    warning on stderr for those skipped (an unreadable snapshot, an unknown catalog)."""
    # Imported here: building the parser (every ``nextbest`` command) stays light.
    from services.learning.dataset import LogReading, iter_logged_decisions

    since = window.since or datetime.min.replace(tzinfo=UTC)
    bar: Any = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="reading decisions", unit=" decisions", file=sys.stderr, leave=False)

    def on_page(read: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(read)

    reading = LogReading()
    try:
        found = [
            d
            async for d in iter_logged_decisions(
                database_url,
                since,
                horizon(args.horizon),
                on_page=on_page,
                reading=reading,
                until=window.until,
            )
        ]
    finally:
        if bar is not None:
            bar.close()
    for warning in reading.warnings():
        print(f"nextbest: warning: {warning}", file=sys.stderr)
    return found


def read_log_file(args: argparse.Namespace, window: Window, name: str = "") -> Any:
    """The ``--log`` file's LogFile (ConfigError naming what is wrong)."""
    from services.learning.logfile import LogFileError, read_log

    try:
        return read_log(Path(args.log), since=window.since, until=window.until, name=name)
    except LogFileError as error:
        raise ConfigError(f"--log: {error}") from None


def read_decisions(
    args: argparse.Namespace, database_url: str, window: Window, name: str = ""
) -> tuple[list[LoggedDecision], Any]:
    """The decisions of the database or of the ``--log`` file (and that LogFile)."""
    if args.log:
        found = read_log_file(args, window, name)
        return list(found.decisions), found
    return asyncio.run(read_database(args, database_url, window)), None
