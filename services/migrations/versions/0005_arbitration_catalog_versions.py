"""arbitration: every applied catalog kept by version

The compact decision log (snapshot format 2, libs/contracts/snapshot.py) keeps a
decision's catalog version instead of a copy of its actions; learning reads the catalog of
that version from here. The catalog in force is copied in: its stored document, or for a
catalog applied before documents were kept (revision 0004_arbitration), one built from its
action rows as the repository loads it.

On the arbitration branch, after 0004_arbitration_volume.

Revision ID: 0005_arbitration_versions
Revises: 0004_arbitration_volume
Create Date: 2026-12-07 10:00:00.000000
"""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005_arbitration_versions"
down_revision: str | None = "0004_arbitration_volume"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json(value: Any) -> Any:
    """A JSON column as read with plain SQL: text on SQLite, already parsed on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    versions = op.create_table(
        "arbitration_catalog_versions",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_arbitration_catalog_versions")),
    )
    connection = op.get_bind()
    state = connection.execute(
        sa.text(
            "SELECT version, min_priority, defaults, applied_at, document"
            " FROM arbitration_catalog WHERE id = 1"
        )
    ).first()
    if state is None:
        return
    document = _json(state.document)
    if document is None:
        rows = connection.execute(
            sa.text(
                "SELECT action_id, name, issue, group_name, channels, value, lever, model,"
                " enabled, treatments, prior_propensity FROM arbitration_actions"
                " ORDER BY position"
            )
        )
        document = {
            "min_priority": state.min_priority,
            "defaults": _json(state.defaults) or {},
            "actions": [
                {
                    "id": row.action_id,
                    "name": row.name,
                    "issue": row.issue,
                    "group": row.group_name,
                    "channels": _json(row.channels),
                    "value": row.value,
                    "lever": row.lever,
                    "model": row.model,
                    "enabled": bool(row.enabled),
                    "treatments": _json(row.treatments),
                    "prior_propensity": row.prior_propensity,
                }
                for row in rows
            ],
        }
    applied_at = state.applied_at
    if isinstance(applied_at, str):  # SQLite's text: naive UTC, as the column type writes it
        applied_at = datetime.fromisoformat(applied_at)
    op.bulk_insert(
        versions,
        [{"version": state.version, "document": document, "applied_at": applied_at}],
    )


def downgrade() -> None:
    op.drop_table("arbitration_catalog_versions")
