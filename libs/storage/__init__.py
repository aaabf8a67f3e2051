"""Shared storage runtime: declarative base, engines, unit of work, migrations runner."""

from libs.storage.database import Base, Database
from libs.storage.errors import is_connection_lost
from libs.storage.uow import ErasingUnitOfWork, SqlUnitOfWork, StorageConflict, UnitOfWork

__all__ = [
    "Base",
    "Database",
    "ErasingUnitOfWork",
    "SqlUnitOfWork",
    "StorageConflict",
    "UnitOfWork",
    "is_connection_lost",
]
