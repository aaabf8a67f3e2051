"""Shared storage runtime: declarative base, engines, unit of work, migrations runner."""

from libs.storage.database import Base, Database
from libs.storage.uow import SqlUnitOfWork, StorageConflict, UnitOfWork

__all__ = ["Base", "Database", "SqlUnitOfWork", "StorageConflict", "UnitOfWork"]
