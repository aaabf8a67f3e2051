"""Unit of work over one SQLAlchemy session: nothing is stored until ``commit()``."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from sqlalchemy.exc import IntegrityError

from libs.storage.database import Database
from libs.storage.session import DbSession


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


class StorageConflict(Exception):
    """A concurrent writer got there first (unique constraint); the caller may retry."""
