"""The profile context of a decision in one statement (one round trip, no ORM).

``get_profile_context`` runs on every Decide, so its eight parts (consent, counters,
buckets, channels, interactions, contacts, attributes, predictions) are one statement run
through the driver (``libs.storage.session.exec_driver_sql``): one round trip, no ORM
(figures in docs/benchmarks.md, "Decision-path reads"):

- the personalisation level is computed *in* the statement (a CTE: the ``personalization``
  consent row's level, else the configured default), and each part is gated on it, so a
  profile at level ``none`` reads only its consent rows and one at ``basic`` no attributes
  nor predictions ("skip what the consent excludes" without a second round trip);
- SQLite (dynamically typed): one ``UNION ALL`` of every part, padded to the same number of
  columns and tagged with the part's number; values come back as stored (REAL exactly, UTC
  text timestamps, JSON text). Not SQLite's JSON functions: they print REAL with 15
  significant digits, which would round sums and model outputs;
- PostgreSQL (typed ``UNION ALL`` columns would need casts): one row, one ``json_agg`` per
  part. JSON keeps timestamps as ISO 8601 with their offset whatever the session's
  DateStyle, and float8 as its shortest exact form (PostgreSQL >= 12).

Window sums come from the buckets (``AggregatePlan.window_sums``).

No cache of contexts in the process: the context of a profile changes with every event,
outcome and decision, and in the mesh several context replicas write it, so a cached
context could only be trusted with a cross-replica invalidation channel, which costs more
than the one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.contracts.context import (
    PERSONALIZATION,
    ChannelActivity,
    Consent,
    Contact,
    EventCounter,
    InteractionSummary,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
    PurposeConsent,
)
from libs.storage.session import DbSession, exec_driver_sql
from libs.storage.types import sqlite_time_text, sqlite_time_value
from services.context.aggregates import AggregatePlan

# Parts of the statement, by the number that tags their rows (SQLite) or their column
# (PostgreSQL).
_CONSENTS, _COUNTERS, _BUCKETS, _CHANNELS, _INTERACTIONS, _CONTACTS, _ATTRIBUTES = range(7)
_PREDICTIONS = 7

# The level the customer chose, else the default; the gates every other part waits on.
_LEVEL_CTE = (
    "WITH lvl AS (SELECT COALESCE((SELECT NULLIF(level, '') FROM context_consents"
    " WHERE profile_id = {p} AND purpose = 'personalization'), {default}) AS level),"
    " gate AS (SELECT ({everything} OR level <> 'none') AS basic_ok,"
    " ({everything} OR level = 'full') AS full_ok FROM lvl)"
)
_BASIC = "(SELECT basic_ok FROM gate)"
_FULL = "(SELECT full_ok FROM gate)"
# The bounded recent contacts (see MAX_CONTACTS in services/context/store/profiles.py): the
# newest 200 decisions that served an action, 200 impressions/clicks, 100 answers.
_RECENT_CONTACTS = (
    "SELECT * FROM (SELECT action_id, channel, 'decision' AS kind, decided_at AS occurred_at"
    " FROM context_decisions WHERE profile_id = {p} AND decided_at >= {since}"
    " AND action_id <> '' ORDER BY decided_at DESC LIMIT 200) AS served"
    " UNION ALL"
    " SELECT * FROM (SELECT action_id, channel, outcome AS kind, occurred_at"
    " FROM context_outcomes WHERE profile_id = {p} AND occurred_at >= {since}"
    " AND action_id <> '' AND outcome IN ('impression', 'click')"
    " ORDER BY occurred_at DESC LIMIT 200) AS shown"
    " UNION ALL"
    " SELECT * FROM (SELECT action_id, channel, outcome AS kind, occurred_at"
    " FROM context_outcomes WHERE profile_id = {p} AND occurred_at >= {since}"
    " AND action_id <> '' AND outcome NOT IN ('impression', 'click')"
    " ORDER BY occurred_at DESC LIMIT 100) AS answered"
)
# Per part: (columns, FROM and WHERE). Interactions have the most columns (9).
_PARTS: tuple[tuple[str, str], ...] = (
    (
        "purpose, granted, level, source, updated_at",
        "FROM context_consents WHERE profile_id = {p}",
    ),
    (
        "event_type, count, value_sum, last_occurred_at, first_occurred_at, last_values",
        f"FROM context_counters WHERE profile_id = {{p}} AND {_BASIC}",
    ),
    (
        "event_type, width_s, bucket_start, count, value_sum",
        "FROM context_buckets WHERE profile_id = {p} AND bucket_start >= {oldest}"
        f" AND {_BASIC}",
    ),
    (
        "channel, first_seen_at, last_seen_at, events",
        f"FROM context_channels WHERE profile_id = {{p}} AND {_BASIC}",
    ),
    (
        "action_id, channel, decisions, impressions, clicks, accepts, rejects, conversions,"
        " last_contact_at",
        f"FROM context_interactions WHERE profile_id = {{p}} AND {_BASIC}",
    ),
    (
        "action_id, channel, kind, occurred_at",
        f"FROM ({_RECENT_CONTACTS}) AS recent WHERE {_BASIC}",
    ),
    ("attributes", f"FROM context_attributes WHERE profile_id = {{p}} AND {_FULL}"),
    (
        "name, value, version, predicted_at",
        f"FROM context_predictions WHERE profile_id = {{p}} AND {_FULL}",
    ),
)
_WIDTH = 9


def _sqlite_statement() -> str:
    selects = []
    for number, (columns, source) in enumerate(_PARTS):
        padding = ", NULL" * (_WIDTH - len(columns.split(",")))
        selects.append(f"SELECT {number}, {columns}{padding} {source}")
    names = {"p": ":p", "since": ":since", "oldest": ":oldest"}
    names |= {"default": ":default", "everything": ":everything"}
    return (_LEVEL_CTE + " " + " UNION ALL ".join(selects)).format(**names)


def _postgres_statement() -> str:
    aggregates = []
    for number, (columns, source) in enumerate(_PARTS):
        order = " ORDER BY occurred_at DESC" if number == _CONTACTS else ""
        aggregates.append(f"(SELECT json_agg(json_build_array({columns}){order}) {source})")
    names = {"p": "%(p)s", "since": "%(since)s", "oldest": "%(oldest)s"}
    names |= {"default": "%(default)s", "everything": "%(everything)s"}
    return (_LEVEL_CTE + " SELECT " + ", ".join(aggregates)).format(**names)


def _sqlite_time(value: str | None) -> datetime | None:
    return sqlite_time_value(value) if value is not None else None


def _postgres_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    # A session in UTC (the usual case) gives UTC already: no conversion to pay.
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


def _sqlite_json(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


def _postgres_json(value: Any) -> Any:
    return value


class ProfileReader:
    """The statement and the row parsing for one dialect (built once per repository)."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self._sql = _postgres_statement() if postgres else _sqlite_statement()
        self._time = _postgres_time if postgres else _sqlite_time
        self._json = _postgres_json if postgres else _sqlite_json

    async def read(
        self,
        session: DbSession,
        profile_id: str,
        plan: AggregatePlan,
        now: datetime,
        default_level: PersonalizationLevel,
        *,
        everything: bool,
        contact_history_s: int,
    ) -> ProfileContext:
        since = now - timedelta(seconds=contact_history_s)
        params = {
            "p": profile_id,
            "since": since if self.postgres else sqlite_time_text(since),
            "oldest": plan.oldest_read(now),
            "default": default_level.value,
            "everything": everything,
        }
        result = await exec_driver_sql(session, self._sql, params)
        parts: list[list[Sequence[Any]]] = [[] for _ in _PARTS]
        if self.postgres:
            row = result.fetchone()
            if row is not None:
                for number, rows in enumerate(row):
                    if rows:
                        parts[number] = rows
        else:
            for row in result.fetchall():
                parts[row[0]].append(row[1:])
        return self._context(profile_id, parts, plan, now, default_level, everything)

    def _context(
        self,
        profile_id: str,
        parts: list[list[Sequence[Any]]],
        plan: AggregatePlan,
        now: datetime,
        default_level: PersonalizationLevel,
        everything: bool,
    ) -> ProfileContext:
        time, loads = self._time, self._json
        consent = self.consent(parts[_CONSENTS], default_level)
        level = consent.level
        consents = {p.purpose: p.granted for p in consent.purposes}
        if level == PersonalizationLevel.NONE and not everything:
            return ProfileContext(profile_id, personalization=level, consents=consents)
        contacts = [
            Contact(action_id, channel, kind, time(at))  # type: ignore[arg-type]
            for action_id, channel, kind, at, *_ in parts[_CONTACTS]
        ]
        if not self.postgres:  # PostgreSQL's json_agg is ordered already
            contacts.sort(key=lambda contact: contact.occurred_at, reverse=True)
        attributes: dict[str, Any] = {}
        for found, *_ in parts[_ATTRIBUTES]:
            attributes = dict(loads(found) or {})
        context = ProfileContext(
            profile_id=profile_id,
            attributes=attributes,
            counters={
                event_type: EventCounter(
                    event_type,
                    int(count),
                    float(value_sum),
                    time(last),
                    time(first),
                    dict(loads(last_values) or {}),
                )
                for event_type, count, value_sum, last, first, last_values, *_ in parts[_COUNTERS]
            },
            windows=plan.window_sums(
                [
                    (event_type, width, start, count, float(value_sum))
                    for event_type, width, start, count, value_sum, *_ in parts[_BUCKETS]
                ],
                now,
            ),
            channels={
                channel: ChannelActivity(channel, time(first), time(last), int(events))  # type: ignore[arg-type]
                for channel, first, last, events, *_ in parts[_CHANNELS]
            },
            interactions=tuple(
                InteractionSummary(
                    action_id,
                    channel,
                    decisions=int(decisions or 0),
                    impressions=int(impressions or 0),
                    clicks=int(clicks or 0),
                    accepts=int(accepts or 0),
                    rejects=int(rejects or 0),
                    conversions=int(conversions or 0),
                    last_contact_at=time(at),
                )
                for (
                    action_id,
                    channel,
                    decisions,
                    impressions,
                    clicks,
                    accepts,
                    rejects,
                    conversions,
                    at,
                ) in parts[_INTERACTIONS]
            ),
            predictions={
                name: Prediction(name, float(value), version, time(at))  # type: ignore[arg-type]
                for name, value, version, at, *_ in parts[_PREDICTIONS]
            },
            personalization=level,
            consents=consents,
            contacts=tuple(contacts),
        )
        return context if everything else context.honouring_consent()

    def consent(
        self, rows: Sequence[Sequence[Any]], default_level: PersonalizationLevel
    ) -> Consent:
        """The consent of the rows ``(purpose, granted, level, source, updated_at)``."""
        level, source, updated_at = default_level, "", None
        purposes: list[PurposeConsent] = []
        for purpose, granted, chosen, given_by, at, *_ in rows:
            if purpose == PERSONALIZATION:
                level = PersonalizationLevel(chosen or default_level.value)
                source, updated_at = given_by, self._time(at)
            else:
                purposes.append(PurposeConsent(purpose, bool(granted), given_by, self._time(at)))  # type: ignore[arg-type]
        purposes.sort(key=lambda p: p.purpose)
        return Consent(level, source, updated_at, tuple(purposes))
