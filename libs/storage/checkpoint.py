"""SQLite's write-ahead log copied into the database file by a thread of its own.

By default SQLite checkpoints in the commit that takes the log past 1,000 pages: that commit
copies the pages into the database file and syncs it, on the event loop, where the embedded
shape runs every unit of work (libs/storage/session.py): a sixth of the server's time on
ingestion (docs/benchmarks.md, "Checkpoints off the event loop"). Here a thread runs a
PASSIVE checkpoint every ``interval_s`` instead. The sqlite3 module releases the GIL while
SQLite works, so the copy and the sync run beside the event loop, on the other core; a
PASSIVE checkpoint never waits for, nor blocks, readers and the writer. Writers keep
SQLite's own checkpoint at a larger threshold as a backstop, should this thread fall behind
or stop.
"""

from __future__ import annotations

import sqlite3
import threading

from libs.logging import get_logger

_log = get_logger("nextbest.storage")

CHECKPOINT_INTERVAL_S = 0.1
# Writers' automatic checkpoint (pages of log, 4 KiB each: 16 MiB), the backstop. It copies
# only what the thread has not copied yet, so it costs the event loop little when it runs.
BACKSTOP_AUTOCHECKPOINT_PAGES = 4_000


class WalCheckpointer:
    """Checkpoints the SQLite database at ``path`` from a daemon thread until ``close()``."""

    def __init__(self, path: str, *, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread after its current checkpoint."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        # Its own connection, opened and used in this thread only.
        connection = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        try:
            while not self._stop.wait(self._interval_s):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:
                    # Rare (e.g. the file went away): the writers' backstop still checkpoints.
                    _log.warning("sqlite_checkpoint_failed", error=str(error))
        finally:
            connection.close()
