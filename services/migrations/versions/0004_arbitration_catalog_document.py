"""arbitration: the catalog's validated document (issues, groups, policies, exploration)

Revision ID: 0004_arbitration
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_arbitration"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("arbitration_catalog", schema=None) as batch_op:
        # A catalog applied before keeps no document: replicas rebuild it from its rows
        # (services/arbitration/repository.py) until the next apply stores one.
        batch_op.add_column(sa.Column("document", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("arbitration_catalog", schema=None) as batch_op:
        batch_op.drop_column("document")
