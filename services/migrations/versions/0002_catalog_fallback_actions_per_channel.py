"""catalog fallback actions per channel

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:19:53.409647
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("arbitration_catalog", schema=None) as batch_op:
        # Existing catalogs get no fallbacks.
        batch_op.add_column(
            sa.Column("defaults", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("arbitration_catalog", schema=None) as batch_op:
        batch_op.drop_column("defaults")
