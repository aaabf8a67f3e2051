"""arbitration: counters of volume constraints

One row per (constraint key, period): how many times the action, group or issue was chosen
in that period, shared by every replica (services/arbitration/volume.py).

On the arbitration branch, after 0004_arbitration.

Revision ID: 0004_arbitration_volume
Revises: 0004_arbitration
Create Date: 2026-11-24 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_arbitration_volume"
down_revision: str | None = "0004_arbitration"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "arbitration_volume",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("period_start", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "period_start", name=op.f("pk_arbitration_volume")),
    )


def downgrade() -> None:
    op.drop_table("arbitration_volume")
