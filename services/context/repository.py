"""The context's unit of work: one transaction over its stores (services/context/store/).

- ``events``: ingestion, events stored once and their aggregates (store/events.py);
- ``profiles``: attributes, consent, predictions, and the context a decision reads
  (store/profiles.py);
- ``decisions``: the decision log's rows, outcomes and the interaction counts they move
  (store/decisions.py);
- ``profile_rows``: a profile's rows as a whole, for export, merge and erasure
  (store/profile_rows.py).

The learning loop reads the decision log outside a unit of work (store/learning.py).
"""

from __future__ import annotations

from typing import Protocol

from libs.storage import ErasingUnitOfWork, SqlUnitOfWork
from services.context.store.decisions import DecisionStore
from services.context.store.events import EventStore
from services.context.store.profile_rows import ProfileRows
from services.context.store.profiles import ProfileStore


class ContextUnitOfWork(ErasingUnitOfWork, Protocol):
    @property
    def events(self) -> EventStore: ...
    @property
    def profiles(self) -> ProfileStore: ...
    @property
    def decisions(self) -> DecisionStore: ...
    @property
    def profile_rows(self) -> ProfileRows: ...


class SqlContextUnitOfWork(SqlUnitOfWork):
    events: EventStore
    profiles: ProfileStore
    decisions: DecisionStore
    profile_rows: ProfileRows

    def _open(self) -> None:
        self.events = EventStore(self.session)
        self.profiles = ProfileStore(self.session)
        self.decisions = DecisionStore(self.session)
        self.profile_rows = ProfileRows(self.session, self.profiles)
