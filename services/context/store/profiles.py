"""A profile's attributes, consent and predictions, and the context a decision reads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, String, bindparam, select, update

from libs.contracts.context import (
    PERSONALIZATION,
    AttributeChange,
    Consent,
    ConsentChange,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    PurposeConsent,
)
from libs.storage import StorageConflict
from libs.storage.upsert import upsert_many
from services.context.aggregates import AggregatePlan
from services.context.profile_read import ProfileReader
from services.context.store.sql import ATTRIBUTES, CONSENTS, PREDICTIONS, SqlStore, newest_wins

LEVEL_RANK = {"none": 0, "basic": 1, "full": 2}
DEFAULT_CONTACT_HISTORY_S = 90 * 86400
# The profile context of a decision: one statement per dialect (profile_read.py).
_READERS = {False: ProfileReader(False), True: ProfileReader(True)}
# The reads of every decision, built once (building a statement costs more than running it).
_PROFILE: BindParameter[str] = bindparam("profile_id", type_=String())
_READ_CONSENTS = select(
    CONSENTS.c.purpose,
    CONSENTS.c.granted,
    CONSENTS.c.level,
    CONSENTS.c.source,
    CONSENTS.c.updated_at,
).where(CONSENTS.c.profile_id == _PROFILE)
# Recent contacts (contact policies): the decisions that served an action and the outcomes
# reported, newest first, read with the rest of the profile context (profile_read.py). The
# bound is split so that frequent contacts never crowd out rare ones: the newest 200
# decisions, 200 impressions/clicks and 100 answers (accept, reject, dismiss, convert), so a
# reject stays visible to its suppression however often the customer is shown things. Each
# part is cut on its (profile_id, time) index, so a profile decided on many times costs no
# more than the bound.
MAX_CONTACTS = 500


def consent_from_rows(rows: Iterable[Any], default_level: PersonalizationLevel) -> Consent:
    level, source, updated_at = default_level, "", None
    purposes: list[PurposeConsent] = []
    for row in rows:
        if row.purpose == PERSONALIZATION:
            level = PersonalizationLevel(row.level or default_level.value)
            source, updated_at = row.source, row.updated_at
        else:
            purposes.append(PurposeConsent(row.purpose, row.granted, row.source, row.updated_at))
    purposes.sort(key=lambda p: p.purpose)
    return Consent(level, source, updated_at, tuple(purposes))


class ProfileStore(SqlStore):
    """What is held on a profile besides its history: attributes, consent, predictions;
    and the profile context a decision reads."""

    async def change_attributes(
        self, changes: dict[str, list[AttributeChange]]
    ) -> dict[str, dict[str, Any]]:
        """Apply attribute changes per profile; per attribute the latest change wins, so a
        late update never overwrites a newer value. Returns the resulting attributes."""
        if not changes:
            return {}
        ids = sorted(changes)
        query = select(
            ATTRIBUTES.c.profile_id,
            ATTRIBUTES.c.attributes,
            ATTRIBUTES.c.attribute_times,
            ATTRIBUTES.c.updated_at,
        ).where(ATTRIBUTES.c.profile_id.in_(ids))
        rows = {row.profile_id: row for row in await self._session.execute(query.with_for_update())}
        result: dict[str, dict[str, Any]] = {}
        for profile_id in ids:
            row = rows.get(profile_id)
            attributes: dict[str, Any] = dict(row.attributes) if row else {}
            times: dict[str, str] = dict(row.attribute_times or {}) if row else {}
            updated_at = row.updated_at if row else None
            for change in sorted(changes[profile_id], key=lambda c: c.at or datetime.min):
                assert change.at is not None
                stamp = change.at.isoformat()
                for key, value in change.set.items():
                    if key not in times or times[key] <= stamp:
                        attributes[key], times[key] = value, stamp
                for key in change.remove:
                    if key not in times or times[key] <= stamp:
                        attributes.pop(key, None)
                        times.pop(key, None)
                if updated_at is None or change.at > updated_at:
                    updated_at = change.at
            values = {"attributes": attributes, "attribute_times": times, "updated_at": updated_at}
            if row is not None:
                await self._session.execute(
                    update(ATTRIBUTES).where(ATTRIBUTES.c.profile_id == profile_id).values(values)
                )
            else:
                inserted = await self._session.scalar(
                    self._insert(ATTRIBUTES)
                    .values(profile_id=profile_id, **values)
                    .on_conflict_do_nothing(index_elements=["profile_id"])
                    .returning(ATTRIBUTES.c.profile_id)
                )
                if inserted is None:  # a concurrent first update: redo with its row
                    raise StorageConflict(f"attributes of {profile_id} created concurrently")
            result[profile_id] = attributes
        return result

    async def profile_context(
        self,
        profile_id: str,
        plan: AggregatePlan,
        now: datetime,
        default_level: PersonalizationLevel,
        *,
        everything: bool = False,
        contact_history_s: int = DEFAULT_CONTACT_HISTORY_S,
    ) -> ProfileContext:
        """What a decision may use of the profile (``everything``: all that is stored).

        ``contacts``: the decisions served and outcomes reported in the last
        ``contact_history_s`` seconds, newest first, at most MAX_CONTACTS (see above).
        One statement (services/context/profile_read.py)."""
        return await _READERS[self._bulk.postgres].read(
            self._session,
            profile_id,
            plan,
            now,
            default_level,
            everything=everything,
            contact_history_s=contact_history_s,
        )

    async def consent(self, profile_id: str, default_level: PersonalizationLevel) -> Consent:
        rows = await self._session.execute(_READ_CONSENTS, {"profile_id": profile_id})
        return consent_from_rows(rows, default_level)

    async def set_consent(self, profile_id: str, change: ConsentChange, at: datetime) -> None:
        """Record the customer's choices; a change older than the stored one is ignored."""
        rows: list[dict[str, Any]] = []
        if change.level is not None:
            rows.append(
                {
                    "profile_id": profile_id,
                    "purpose": PERSONALIZATION,
                    "granted": change.level != PersonalizationLevel.NONE,
                    "level": change.level.value,
                    "source": change.source,
                    "updated_at": at,
                }
            )
        for purpose, granted in sorted(change.purposes):
            rows.append(
                {
                    "profile_id": profile_id,
                    "purpose": purpose,
                    "granted": granted,
                    "level": None,
                    "source": change.source,
                    "updated_at": at,
                }
            )
        await self.upsert_consents(sorted(rows, key=lambda r: r["purpose"]))

    async def upsert_consents(self, rows: Sequence[dict[str, Any]]) -> None:
        await upsert_many(
            self._session,
            CONSENTS,
            rows,
            ["profile_id", "purpose"],
            lambda ex: {
                "granted": ex.granted,
                "level": ex.level,
                "source": ex.source,
                "updated_at": ex.updated_at,
            },
            where=newest_wins(CONSENTS, "updated_at"),
        )

    async def set_predictions(self, profile_id: str, predictions: Sequence[Prediction]) -> None:
        """Keep each model's latest output (an older one than stored is ignored)."""
        await upsert_many(
            self._session,
            PREDICTIONS,
            [
                {
                    "profile_id": profile_id,
                    "name": p.name,
                    "value": p.value,
                    "version": p.version,
                    "predicted_at": p.predicted_at,
                }
                for p in sorted(predictions, key=lambda p: p.name)
            ],
            ["profile_id", "name"],
            lambda ex: {"value": ex.value, "version": ex.version, "predicted_at": ex.predicted_at},
            where=newest_wins(PREDICTIONS, "predicted_at"),
        )
