"""Unit of work over one SQLAlchemy session: nothing is stored until ``commit()``."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from sqlalchemy.exc import IntegrityError

from libs.logging import get_logger
from libs.storage.database import Database
from libs.storage.session import DbSession

_log = get_logger("nextbest.storage")


class UnitOfWork(Protocol):
    """What domain services need of a unit of work; services add their repositories."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class ErasingUnitOfWork(UnitOfWork, Protocol):
    """A unit of work of a service that erases customers' data (identity, context)."""

    async def purge_deleted(self) -> None:
        """After an erasure was committed: no copy of the deleted rows left on disk
        (libs.storage.Database.purge_deleted)."""
        ...


class SqlUnitOfWork:
    """Subclasses create their repositories in ``_open`` from ``self.session``."""

    def __init__(self, database: Database, *, write: bool = True) -> None:
        self._database = database
        self._write = write
        self.session: DbSession

    def _open(self) -> None:
        """Create the repositories on the fresh session."""

    async def __aenter__(self) -> Self:
        self.session = self._database.session(write=self._write)
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing rolls back what was not committed (one call, not a rollback then a close).
        await self.session.close()

    async def commit(self) -> None:
        try:
            await self.session.commit()
        except IntegrityError as error:
            raise StorageConflict(str(error.orig)) from error

    async def rollback(self) -> None:
        await self.session.rollback()

    async def purge_deleted(self) -> None:
        if not await self._database.purge_deleted():
            # The rows are deleted and zeroed in the database file; only the log's old
            # copies remain until the next checkpoint, which SQLite runs on its own.
            _log.warning("erasure_log_not_truncated", reason="a reader held the log")


class StorageConflict(Exception):
    """A concurrent writer got there first (unique constraint); the caller may retry."""
