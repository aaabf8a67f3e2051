"""Which storage errors mean "the database could not be reached", as opposed to a bug."""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import OperationalError as SqlOperationalError


def is_connection_lost(error: BaseException) -> bool:
    """True for a lost, refused or busy database connection (a retry may succeed): the
    driver's OperationalError however SQLAlchemy wraps it, or a connection it invalidated.
    Follows explicit causes (``raise ... from``), since a caller may wrap the storage error
    in its own; not the implicit context, which would blame the database for a bug raised
    while handling one of its errors."""
    seen: BaseException | None = error
    for _ in range(8):  # a cause chain is short; the bound only guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, SqlOperationalError | DisconnectionError | psycopg.OperationalError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False
