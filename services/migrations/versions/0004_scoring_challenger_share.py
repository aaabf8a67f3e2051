"""scoring: the traffic share of a challenger model version

Champion/challenger: a registered version with status "challenger" scores this share of
the profiles beside the active one. Existing versions get 0 (no challenge).

A branch of its own from 0002, like the other services' migrations.

Revision ID: 0004_scoring
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_scoring"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("traffic_share", sa.Float(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("scoring_models", schema=None) as batch_op:
        batch_op.drop_column("traffic_share")
