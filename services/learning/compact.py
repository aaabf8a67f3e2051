"""``nextbest log compact``: rewrite version 1 decision snapshots as version 2, in place.

A row is rewritten only when the catalog its snapshot names is stored by version and the
version 2 snapshot reads back as the same candidates: every field the version 1 snapshot
recorded, floats within float32 precision (``same_candidates``). Other rows stay as they
are (learning reads both formats). Each page of decisions is read, then its rewritten rows
are written in one short transaction: a running hub keeps recording decisions meanwhile.
Rows are rewritten whole, so running it again (or after an interrupted run) is safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Table, and_, bindparam, cast, func, or_, select, update

from libs.contracts.context import DecisionRecord
from libs.contracts.profile_snapshot import profile_context_from_dict
from libs.contracts.snapshot import (
    COMPACT_VERSION,
    SNAPSHOT_KEY,
    SNAPSHOT_VERSION,
    compact_snapshot,
)
from services.arbitration.model import Catalog
from services.context.store.sql import json_text
from services.context.tables import DecisionRow
from services.learning.dataset import (
    CatalogVersions,
    LoggedCandidate,
    LoggedDecision,
    read_logged_decision,
)
from services.learning.snapshot import snapshot_version, table_from_v1

__all__ = ["CompactReport", "compact_log", "compact_v1", "same_candidates"]

DECISIONS: Table = DecisionRow.__table__  # type: ignore[assignment]
# Relative tolerance of a number packed as float32 (2^-24 rounding, with margin).
_FLOAT32 = 1e-6


@dataclass
class CompactReport:
    dry_run: bool
    decisions: int = 0
    no_snapshot: int = 0
    already_compact: int = 0
    compacted: int = 0
    # Version 1 rows left as they are, by reason.
    unknown_catalog: int = 0
    not_convertible: int = 0
    # Payload bytes (JSON text as stored) of the rows compacted, before and after.
    bytes_before: int = 0
    bytes_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def text(self) -> str:
        verb = "would compact" if self.dry_run else "compacted"
        lines = [
            f"decisions read: {self.decisions} ({self.no_snapshot} without a snapshot, "
            f"{self.already_compact} already version 2)",
            f"{verb}: {self.compacted} version 1 rows, payload bytes "
            f"{self.bytes_before:,} -> {self.bytes_after:,}"
            + (
                f" ({self.bytes_after / self.bytes_before:.1%}; "
                f"{self.bytes_before / self.compacted:,.0f} -> "
                f"{self.bytes_after / self.compacted:,.0f} per row)"
                if self.compacted and self.bytes_before
                else ""
            ),
        ]
        if self.unknown_catalog or self.not_convertible:
            lines.append(
                f"left as version 1: {self.unknown_catalog} whose catalog version is not "
                f"stored, {self.not_convertible} that would not read back the same"
            )
        return "\n".join(lines)


def _close(left: float, right: float, relative: float) -> bool:
    return math.isclose(left, right, rel_tol=relative, abs_tol=1e-12)


# LoggedCandidate fields packed as float32 in version 2 (or derived from them).
_PACKED = frozenset({"propensity", "context_weight", "priority"})


def same_candidates(v1: LoggedDecision, v2: LoggedDecision, recorded: list[dict[str, Any]]) -> bool:
    """Whether the version 2 reading gives, for every candidate, what the version 1
    snapshot recorded (``recorded``: its candidate dicts; absent fields are not compared)."""
    if len(v1.candidates) != len(v2.candidates) or len(recorded) != len(v1.candidates):
        return False
    if (v1.channel, v1.placement, v1.request_context, v1.min_priority) != (
        v2.channel,
        v2.placement,
        v2.request_context,
        v2.min_priority,
    ):
        return False
    names = {f.name for f in fields(LoggedCandidate)}
    for old, new, raw in zip(v1.candidates, v2.candidates, recorded, strict=True):
        for name in names & set(raw) | {"action_id", "eligible", "removed_by"}:
            before, after = getattr(old, name), getattr(new, name)
            if isinstance(before, float):
                relative = _FLOAT32 if name in _PACKED else 1e-12
                if not _close(before, float(after), relative):
                    return False
            elif before != after:
                return False
    return True


def compact_v1(
    record: DecisionRecord, catalog: Catalog
) -> tuple[dict[str, Any] | None, LoggedDecision | None, LoggedDecision | None]:
    """The version 2 snapshot of ``record``'s version 1 snapshot placed in ``catalog`` (None
    when it cannot be: an action not in it, or a reading that differs), with both readings."""
    snapshot = record.payload[SNAPSHOT_KEY]
    before = read_logged_decision(record, [], None)
    if not isinstance(before, LoggedDecision):
        return None, None, None
    try:
        table = table_from_v1(snapshot, catalog)
    except (KeyError, ValueError, TypeError):
        return None, before, None
    compact = compact_snapshot(
        profile_context_from_dict(snapshot["context"]),
        dict(snapshot.get("request_context") or {}),
        str(snapshot.get("channel", record.channel)),
        str(snapshot.get("placement", record.placement)),
        table,
        float(snapshot.get("min_priority", 0.0)),
    )
    rewritten = DecisionRecord(
        record.decision_id,
        record.request_id,
        record.profile_id,
        record.channel,
        record.placement,
        record.action_id,
        record.decided_at,
        {**record.payload, SNAPSHOT_KEY: compact},
    )
    after = read_logged_decision(rewritten, [], None, {table.catalog_version: catalog})
    if not isinstance(after, LoggedDecision) or not same_candidates(
        before, after, list(snapshot.get("candidates") or [])
    ):
        return None, before, after if isinstance(after, LoggedDecision) else None
    return compact, before, after


async def _page(
    session: Any, since: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[DecisionRow]:
    query = select(DecisionRow).where(DecisionRow.decided_at >= since)
    if after is not None:
        at, decision_id = after
        query = query.where(
            or_(
                DecisionRow.decided_at > at,
                and_(DecisionRow.decided_at == at, DecisionRow.decision_id > decision_id),
            )
        )
    found = await session.scalars(
        query.order_by(DecisionRow.decided_at, DecisionRow.decision_id).limit(limit)
    )
    return list(found)


def _record(row: DecisionRow) -> DecisionRecord:
    return DecisionRecord(
        row.decision_id,
        row.request_id or "",
        row.profile_id,
        row.channel,
        row.placement,
        row.action_id,
        row.decided_at,
        dict(row.payload or {}),
    )


def _convert(
    report: CompactReport, record: DecisionRecord, catalogs: Mapping[str, Catalog | None]
) -> dict[str, Any] | None:
    """The new payload of ``record`` when it is to be rewritten; counts it in ``report``."""
    report.decisions += 1
    snapshot = record.payload.get(SNAPSHOT_KEY)
    if not isinstance(snapshot, dict):
        report.no_snapshot += 1
        return None
    try:
        version = snapshot_version(snapshot)
    except ValueError:
        report.not_convertible += 1
        return None
    if version == COMPACT_VERSION:
        report.already_compact += 1
        return None
    catalog = catalogs.get(str(snapshot.get("catalog_version", "")))
    if catalog is None:
        report.unknown_catalog += 1
        return None
    compact, _, _ = compact_v1(record, catalog)
    if compact is None:
        report.not_convertible += 1
        return None
    payload = {**record.payload, SNAPSHOT_KEY: compact}
    report.compacted += 1
    report.bytes_before += len(json_text(record.payload).encode())
    report.bytes_after += len(json_text(payload).encode())
    return payload


async def compact_log(
    database_url: str,
    since: datetime,
    *,
    dry_run: bool = False,
    page_size: int = 500,
    on_page: Callable[[int, int], None] | None = None,
) -> CompactReport:
    """Rewrite the version 1 snapshots of the decisions taken at or after ``since`` as
    version 2 where possible (``dry_run``: count only). ``on_page(read, total)`` after each
    page, for a progress bar."""
    from libs.storage import Database

    report = CompactReport(dry_run=dry_run)
    database = Database(database_url)
    try:
        reader = database.session(write=False)
        try:
            total = int(
                await reader.scalar(
                    select(func.count())
                    .select_from(DecisionRow)
                    .where(DecisionRow.decided_at >= since)
                )
                or 0
            )
            catalogs = CatalogVersions(reader)
            after: tuple[datetime, str] | None = None
            while True:
                rows = await _page(reader, since, after, page_size)
                records = [_record(row) for row in rows]
                known = await catalogs.for_records(records, version=SNAPSHOT_VERSION)
                rewritten = [
                    {"id": record.decision_id, "new_payload": json_text(payload)}
                    for record in records
                    if (payload := _convert(report, record, known)) is not None
                ]
                if rewritten and not dry_run:
                    writer = database.session(write=True)
                    # The payload's JSON text as the context service writes it (compact,
                    # orjson), not as SQLAlchemy's JSON type would (spaced).
                    text: Any = bindparam("new_payload", type_=String)
                    if writer.bind is not None and writer.bind.dialect.name == "postgresql":
                        text = cast(text, JSON)
                    try:
                        await writer.execute(
                            update(DECISIONS)
                            .where(DECISIONS.c.decision_id == bindparam("id"))
                            .values(payload=text),
                            rewritten,
                        )
                        await writer.commit()
                    finally:
                        await writer.close()
                if on_page is not None:
                    on_page(len(rows), total)
                if len(rows) < page_size:
                    break
                after = (rows[-1].decided_at, rows[-1].decision_id)
        finally:
            await reader.close()
    finally:
        await database.dispose()
    return report
