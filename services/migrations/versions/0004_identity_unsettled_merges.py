"""identity: merges whose context has not been confirmed moved yet

Revision ID: 0004_identity
Revises: 0003_identity
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import libs.storage.types

revision: str = "0004_identity"
down_revision: str | None = "0003_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_unsettled_merges",
        sa.Column("merged_id", sa.String(length=32), nullable=False),
        sa.Column("survivor_id", sa.String(length=32), nullable=False),
        sa.Column("merged_at", libs.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merged_id", name=op.f("pk_identity_unsettled_merges")),
    )
    with op.batch_alter_table("identity_unsettled_merges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_identity_unsettled_merges_survivor_id"), ["survivor_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("identity_unsettled_merges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_unsettled_merges_survivor_id"))
    op.drop_table("identity_unsettled_merges")
