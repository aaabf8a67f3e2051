"""Hand-written in-memory fakes of the orchestrator ports and of the storage units of work.

They behave like the real services as far as the orchestrator can tell (idempotent
decisions by request id, events once per event id, erasure counts), keep what they were
asked in plain lists for assertions, and never touch a database or the network.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from libs.contracts.context import (
    AppendResult,
    AttributeChange,
    Consent,
    ConsentChange,
    DecisionRecord,
    OutcomeReport,
    OutcomeResult,
    Prediction,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    PurposeConsent,
    RecordedDecision,
)
from libs.contracts.identity import Identifier, ProfileLookup, Resolution
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.errors import AlreadyExists, DomainError, InvalidArgument, NotFound
from libs.storage import StorageConflict
from services.arbitration.model import Catalog
from services.arbitration.repository import ArbitrationUnitOfWork, CatalogRepository
from services.arbitration.service import UnitOfWorkFactory as ArbitrationUnits
from services.arbitration.volume import VolumeClaim, VolumeRepository
from services.identity.model import MergeRecord, RepointRecord, StoredLink
from services.identity.normalize import BLOCKED_VALUES
from services.identity.repository import IdentityRepository, IdentityUnitOfWork
from services.identity.service import UnitOfWorkFactory as IdentityUnits

# --------------------------------------------------------------------------- orchestrator ports


class FakeIdentity:
    """IdentityPort: identifiers ``(type, value)`` map to profile ids given up front.

    Unknown identifiers get a new profile ``p-<n>`` (and are remembered, as identity links
    identifiers seen together); placeholder values are ignored, and a request made only of
    placeholders resolves to the empty profile id, as the real service does. Set ``error``
    to make every resolve fail with that InvalidArgument.
    """

    def __init__(
        self,
        profiles: dict[tuple[str, str], str] | None = None,
        journal: list[str] | None = None,
    ) -> None:
        self.profiles: dict[tuple[str, str], str] = dict(profiles or {})
        self.journal = journal if journal is not None else []
        self.resolved: list[list[Identifier]] = []
        self.error: InvalidArgument | None = None
        self._created = 0

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        self.resolved.append(list(identifiers))
        self.journal.append("identity.resolve_profile")
        if self.error is not None:
            raise self.error
        usable = [(i.type, i.value) for i in identifiers if i.value.lower() not in BLOCKED_VALUES]
        if not usable:
            return Resolution(profile_id="")
        known = next((self.profiles[key] for key in usable if key in self.profiles), None)
        created = known is None
        if known is None:
            self._created += 1
            known = f"p-{self._created}"
        for key in usable:
            self.profiles.setdefault(key, known)
        return Resolution(profile_id=known, created=created)

    async def lookup_profile(
        self, identifiers: list[Identifier], profile_id: str = ""
    ) -> ProfileLookup:
        self.journal.append("identity.lookup_profile")
        found: str | None = None
        if profile_id:
            found = profile_id if profile_id in self.profiles.values() else None
        else:
            keys = [(i.type, i.value) for i in identifiers]
            found = next((self.profiles[key] for key in keys if key in self.profiles), None)
        if found is None:
            return ProfileLookup(profile_id=None)
        types = sorted({kind for (kind, _), owner in self.profiles.items() if owner == found})
        return ProfileLookup(profile_id=found, identifier_types=tuple(types))

    async def erase_profile(self, profile_id: str) -> int:
        self.journal.append("identity.erase_profile")
        owned = [key for key, owner in self.profiles.items() if owner == profile_id]
        for key in owned:
            del self.profiles[key]
        return len(owned)


class FakeContext:
    """ContextPort: profiles, events, decisions and outcomes in dicts.

    Decision payloads go through JSON on the way in, as they do in the real database, so
    a replay returns what storage would give back, not the very object that was stored.
    """

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.contexts: dict[str, ProfileContext] = {}
        self.events: dict[str, ProfileEvent] = {}
        self.decisions: dict[str, DecisionRecord] = {}
        self.by_request: dict[str, DecisionRecord] = {}
        self.outcomes: dict[str, OutcomeReport] = {}
        self.appended: list[list[ProfileEvent]] = []
        self.merges: list[tuple[str, tuple[str, ...]]] = []
        self.consent_changes: list[tuple[str, ConsentChange]] = []

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        self.journal.append("context.get_profile_context")
        return self.contexts.get(profile_id, ProfileContext(profile_id=profile_id))

    async def append_events(self, events: list[ProfileEvent]) -> AppendResult:
        self.journal.append("context.append_events")
        self.appended.append(list(events))
        accepted = duplicates = 0
        for event in events:
            if event.event_id in self.events:
                duplicates += 1
            else:
                self.events[event.event_id] = event
                accepted += 1
        return AppendResult(accepted=accepted, duplicates=duplicates)

    async def record_decision(self, record: DecisionRecord) -> RecordedDecision:
        self.journal.append("context.record_decision")
        if record.request_id and record.request_id in self.by_request:
            return RecordedDecision(self.by_request[record.request_id], replayed=True)
        stored = replace(record, payload=json.loads(json.dumps(record.payload)))
        self.decisions[stored.decision_id] = stored
        if stored.request_id:
            self.by_request[stored.request_id] = stored
        return RecordedDecision(stored, replayed=False)

    async def record_decisions(
        self, records: Sequence[DecisionRecord]
    ) -> list[RecordedDecision | DomainError]:
        # One by one; a record refused on its own gets its error in its place, as the real
        # service answers; anything else fails the call.
        results: list[RecordedDecision | DomainError] = []
        for record in records:
            try:
                results.append(await self.record_decision(record))
            except (InvalidArgument, AlreadyExists) as error:
                results.append(error)
        return results

    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult:
        self.journal.append("context.record_outcome")
        record = self.decisions.get(report.decision_id)
        if record is None:
            raise NotFound(f"decision {report.decision_id} not found")
        key = report.idempotency_key or f"{report.decision_id}:{report.outcome.value}"
        duplicate = key in self.outcomes
        self.outcomes.setdefault(key, report)
        return OutcomeResult(duplicate, record.profile_id, record.action_id)

    async def export_profile(self, profile_id: str) -> ProfileExport:
        self.journal.append("context.export_profile")
        return ProfileExport(
            self.contexts.get(profile_id, ProfileContext(profile_id=profile_id)),
            tuple(e for e in self.events.values() if e.profile_id == profile_id),
            tuple(d for d in self.decisions.values() if d.profile_id == profile_id),
        )

    async def erase_profile(self, profile_id: str) -> int:
        self.journal.append("context.erase_profile")
        rows = 0
        if self.contexts.pop(profile_id, None) is not None:
            rows += 1
        for event_id in [k for k, e in self.events.items() if e.profile_id == profile_id]:
            del self.events[event_id]
            rows += 1
        for decision_id in [k for k, d in self.decisions.items() if d.profile_id == profile_id]:
            record = self.decisions.pop(decision_id)
            self.by_request.pop(record.request_id, None)
            rows += 1
        return rows

    async def merge_profiles(self, survivor_id: str, merged_ids: list[str]) -> int:
        self.journal.append("context.merge_profiles")
        self.merges.append((survivor_id, tuple(merged_ids)))
        moved = 0
        for event_id, event in list(self.events.items()):
            if event.profile_id in merged_ids:
                self.events[event_id] = replace(event, profile_id=survivor_id)
                moved += 1
        return moved

    def _context(self, profile_id: str) -> ProfileContext:
        return self.contexts.get(profile_id, ProfileContext(profile_id=profile_id))

    async def set_attributes(self, profile_id: str, change: AttributeChange) -> dict[str, Any]:
        self.journal.append("context.set_attributes")
        context = self._context(profile_id)
        attributes = {**context.attributes, **change.set}
        for key in change.remove:
            attributes.pop(key, None)
        self.contexts[profile_id] = replace(context, attributes=attributes)
        return attributes

    async def set_predictions(self, profile_id: str, predictions: list[Prediction]) -> int:
        self.journal.append("context.set_predictions")
        context = self._context(profile_id)
        self.contexts[profile_id] = replace(
            context, predictions={**context.predictions, **{p.name: p for p in predictions}}
        )
        return len(predictions)

    async def set_consent(self, profile_id: str, change: ConsentChange) -> Consent:
        self.journal.append("context.set_consent")
        context = self._context(profile_id)
        self.contexts[profile_id] = replace(
            context,
            personalization=change.level or context.personalization,
            consents={**context.consents, **dict(change.purposes)},
        )
        self.consent_changes.append((profile_id, change))
        return await self.get_consent(profile_id)

    async def get_consent(self, profile_id: str) -> Consent:
        self.journal.append("context.get_consent")
        context = self._context(profile_id)
        mine = [c for p, c in self.consent_changes if p == profile_id]
        source = mine[-1].source if mine else ""
        at = (mine[-1].at or datetime(2026, 1, 1, tzinfo=UTC)) if mine else None
        return Consent(
            context.personalization,
            source,
            at,
            tuple(
                PurposeConsent(purpose, granted, source, at or datetime(2026, 1, 1, tzinfo=UTC))
                for purpose, granted in sorted(context.consents.items())
            ),
        )


class FakeScoring:
    """ScoringPort: a propensity per action id (the action's prior when not listed)."""

    def __init__(
        self, propensities: dict[str, float] | None = None, model_version: str = "fake:1"
    ) -> None:
        self.propensities: dict[str, float] = dict(propensities or {})
        self.model_version = model_version
        self.calls: list[list[ScoringCandidate]] = []

    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]:
        self.calls.append(list(candidates))
        scores = []
        for candidate in candidates:
            if candidate.action_id in self.propensities:
                scores.append(
                    CandidateScore(
                        candidate.action_id,
                        self.propensities[candidate.action_id],
                        self.model_version,
                    )
                )
            else:
                scores.append(
                    CandidateScore(
                        candidate.action_id, candidate.prior_propensity, "prior", fallback=True
                    )
                )
        return scores


# ------------------------------------------------------------------- arbitration unit of work


class FakeCatalogRepository:
    """CatalogRepository over a shared in-memory slot; writes land on commit only."""

    def __init__(self, store: FakeCatalogStore) -> None:
        self._store = store
        self.pending: Catalog | None = None

    async def version(self) -> str | None:
        return self._store.catalog.version if self._store.catalog is not None else None

    async def load(self) -> Catalog | None:
        self._store.loads += 1
        return self._store.catalog

    async def replace(self, catalog: Catalog) -> None:
        assert catalog.applied_at is not None, "the service stamps applied_at"
        self.pending = catalog

    async def by_version(self, version: str) -> Catalog | None:
        return self._store.versions.get(version)


@dataclass
class FakeCatalogStore:
    """What the catalog tables would hold."""

    catalog: Catalog | None = None
    # Every catalog committed, by version (the first of a version is kept).
    versions: dict[str, Catalog] = field(default_factory=dict)
    loads: int = 0
    commits: int = 0
    # Volume counters: (key, period_start) -> units used.
    volume: dict[tuple[str, int], int] = field(default_factory=dict)


class FakeVolumeRepository:
    """VolumeRepository over the store's counters; units taken land on commit only."""

    def __init__(self, store: FakeCatalogStore) -> None:
        self._store = store
        self.pending: dict[tuple[str, int], int] = {}

    async def reserve(self, claim: VolumeClaim) -> bool:
        counter = (claim.key, claim.period_start)
        used = self.pending.get(counter, self._store.volume.get(counter, 0))
        if used >= claim.cap:
            return False
        self.pending[counter] = used + 1
        return True


class FakeArbitrationUnitOfWork:
    def __init__(self, store: FakeCatalogStore, write: bool) -> None:
        self._store = store
        self._write = write
        self._repository = FakeCatalogRepository(store)
        self.catalog: CatalogRepository = self._repository
        self._volume = FakeVolumeRepository(store)
        self.volume: VolumeRepository = self._volume

    async def __aenter__(self) -> FakeArbitrationUnitOfWork:
        return self

    async def __aexit__(self, *args: object) -> None:
        self._repository.pending = None  # uncommitted work is rolled back
        self._volume.pending = {}

    async def commit(self) -> None:
        assert self._write, "commit on a read-only unit of work"
        if self._repository.pending is not None:
            self._store.catalog = self._repository.pending
            self._store.versions.setdefault(self._store.catalog.version, self._store.catalog)
        self._store.volume.update(self._volume.pending)
        self._store.commits += 1


def arbitration_units(store: FakeCatalogStore) -> ArbitrationUnits:
    """The ``units`` factory ArbitrationService takes."""

    def factory(write: bool) -> ArbitrationUnitOfWork:
        return FakeArbitrationUnitOfWork(store, write)

    return factory


# ---------------------------------------------------------------------- identity unit of work


@dataclass
class FakeIdentityStore:
    """What the identity tables would hold: links by (type, digest), profiles, audit rows."""

    links: dict[tuple[str, str], str] = field(default_factory=dict)
    # (type, digest) -> when the identifier was last seen
    seen: dict[tuple[str, str], datetime] = field(default_factory=dict)
    # profile id -> the profile it was merged into (None while it survives)
    profiles: dict[str, str | None] = field(default_factory=dict)
    merges: list[MergeRecord] = field(default_factory=list)
    repoints: list[RepointRecord] = field(default_factory=list)
    commits: int = 0
    # Make the next N write commits fail as a concurrent writer would (unique constraint).
    conflicts: int = 0
    locked: list[list[str]] = field(default_factory=list)
    # merged profile id -> survivor, while the merge's context move is not confirmed
    unsettled: dict[str, str] = field(default_factory=dict)


class FakeIdentityRepository:
    def __init__(self, state: FakeIdentityStore) -> None:
        self._state = state

    def _row(self, pair: tuple[str, str]) -> StoredLink:
        owner = self._state.links[pair]
        unsettled = owner in self._state.unsettled.values()
        return StoredLink(pair[0], pair[1], owner, self._state.seen[pair], unsettled)

    async def find_links(self, pairs: Sequence[tuple[str, str]]) -> list[StoredLink]:
        return [self._row(pair) for pair in dict.fromkeys(pairs) if pair in self._state.links]

    async def lock_profiles(self, profile_ids: Sequence[str]) -> set[str]:
        self._state.locked.append(sorted(profile_ids))
        return {p for p in profile_ids if p in self._state.profiles and not self._state.profiles[p]}

    async def holdings(self, profile_ids: Sequence[str]) -> list[StoredLink]:
        wanted = set(profile_ids)
        return [self._row(pair) for pair, owner in self._state.links.items() if owner in wanted]

    async def survivor_of(self, profile_id: str) -> str | None:
        current = profile_id
        for _ in range(16):
            if current not in self._state.profiles:
                return None
            merged_into = self._state.profiles[current]
            if merged_into is None:
                return current
            current = merged_into
        return current

    async def add_profile(self, profile_id: str, now: datetime) -> None:
        assert profile_id not in self._state.profiles, "profile ids are unique"
        self._state.profiles[profile_id] = None

    async def link(self, kind: str, digest: str, profile_id: str, now: datetime) -> None:
        assert profile_id in self._state.profiles, "links reference an existing profile"
        assert (kind, digest) not in self._state.links, "(type, digest) is unique"
        self._state.links[(kind, digest)] = profile_id
        self._state.seen[(kind, digest)] = now

    async def relink(
        self, kind: str, stored_digest: str, digest: str, profile_id: str, now: datetime
    ) -> None:
        assert profile_id in self._state.profiles, "links reference an existing profile"
        if (kind, stored_digest) not in self._state.links:
            return
        del self._state.links[(kind, stored_digest)]
        del self._state.seen[(kind, stored_digest)]
        assert (kind, digest) not in self._state.links, "(type, digest) is unique"
        self._state.links[(kind, digest)] = profile_id
        self._state.seen[(kind, digest)] = now

    async def unlink(self, kind: str, digest: str) -> None:
        self._state.links.pop((kind, digest), None)
        self._state.seen.pop((kind, digest), None)

    async def merge(self, survivor: str, merged: str, now: datetime) -> None:
        for pair, owner in list(self._state.links.items()):
            if owner == merged:
                self._state.links[pair] = survivor
        for profile, into in list(self._state.profiles.items()):
            if profile == merged or into == merged:
                self._state.profiles[profile] = survivor
        for profile, into in list(self._state.unsettled.items()):
            if into == merged:
                self._state.unsettled[profile] = survivor
        assert merged not in self._state.unsettled, "a profile is merged once"
        self._state.unsettled[merged] = survivor

    async def add_profiles(self, profile_ids: Sequence[str], now: datetime) -> None:
        for profile_id in profile_ids:
            await self.add_profile(profile_id, now)

    async def create_profiles_at_once(
        self, links: Sequence[tuple[str, str, str]], now: datetime
    ) -> bool:
        return False  # as SQLite: the service writes them in a write unit instead

    async def link_many(self, links: Sequence[tuple[str, str, str]], now: datetime) -> None:
        for kind, digest, profile_id in links:
            if (kind, digest) in self._state.links:
                raise StorageConflict("duplicate key (identifier linked concurrently)")
            await self.link(kind, digest, profile_id, now)

    async def touch(self, pairs: Sequence[tuple[str, str]], now: datetime) -> None:
        for pair in pairs:
            if pair in self._state.seen:
                self._state.seen[pair] = now

    async def unsettled_merges(self, survivors: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for merged, survivor in sorted(self._state.unsettled.items()):
            if survivor in survivors:
                found.setdefault(survivor, []).append(merged)
        return found

    async def settle(self, survivor: str, merged: Sequence[str]) -> int:
        settled = [m for m in merged if self._state.unsettled.get(m) == survivor]
        for m in settled:
            del self._state.unsettled[m]
        return len(settled)

    async def record_merge(self, record: MergeRecord) -> None:
        self._state.merges.append(record)

    async def record_repoint(self, record: RepointRecord) -> None:
        self._state.repoints.append(record)

    async def identifier_types(self, profile_id: str) -> list[str]:
        return sorted(
            {kind for (kind, _), owner in self._state.links.items() if owner == profile_id}
        )

    async def erase(self, profile_id: str) -> int:
        every_id = {
            profile_id,
            *(p for p, into in self._state.profiles.items() if into == profile_id),
        }
        removed = [pair for pair, owner in self._state.links.items() if owner in every_id]
        for pair in removed:
            del self._state.links[pair]
            del self._state.seen[pair]
        self._state.merges = [
            m
            for m in self._state.merges
            if m.survivor_id not in every_id and m.merged_id not in every_id
        ]
        self._state.repoints = [
            r
            for r in self._state.repoints
            if r.from_profile_id not in every_id and r.to_profile_id not in every_id
        ]
        for profile in every_id:
            self._state.profiles.pop(profile, None)
        self._state.unsettled = {
            m: s
            for m, s in self._state.unsettled.items()
            if m not in every_id and s not in every_id
        }
        return len(removed)


class FakeIdentityUnitOfWork:
    """A write unit of work works on a copy and publishes it on commit (else rolls back)."""

    def __init__(self, store: FakeIdentityStore, write: bool) -> None:
        self._store = store
        self._write = write
        self._working = copy.deepcopy(store) if write else store
        self.identity: IdentityRepository = FakeIdentityRepository(self._working)

    async def __aenter__(self) -> FakeIdentityUnitOfWork:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None

    async def commit(self) -> None:
        assert self._write, "commit on a read-only unit of work"
        if self._store.conflicts > 0:
            self._store.conflicts -= 1
            raise StorageConflict("duplicate key (simulated concurrent writer)")
        self._store.links = self._working.links
        self._store.seen = self._working.seen
        self._store.profiles = self._working.profiles
        self._store.merges = self._working.merges
        self._store.repoints = self._working.repoints
        self._store.locked = self._working.locked
        self._store.unsettled = self._working.unsettled
        self._store.commits += 1

    async def purge_deleted(self) -> None:
        """Nothing outlives a delete in memory."""


def identity_units(store: FakeIdentityStore) -> IdentityUnits:
    """The ``units`` factory IdentityService takes."""

    def factory(write: bool) -> IdentityUnitOfWork:
        return FakeIdentityUnitOfWork(store, write)

    return factory
