"""identity: re-point and eviction audit, merge audit details, index on merged_into

Revision ID: 0003_identity
Revises: 0002
Create Date: 2026-11-23 12:45:13.950174
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import libs.storage.types

revision: str = "0003_identity"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_repoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("identifier_type", sa.String(length=32), nullable=False),
        sa.Column("from_profile_id", sa.String(length=32), nullable=False),
        sa.Column("to_profile_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("at", libs.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("rpc", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_repoints")),
    )
    with op.batch_alter_table("identity_repoints", schema=None) as batch_op:
        batch_op.create_index("ix_identity_repoints_from", ["from_profile_id"], unique=False)
        batch_op.create_index("ix_identity_repoints_to", ["to_profile_id"], unique=False)

    with op.batch_alter_table("identity_merges", schema=None) as batch_op:
        # Merges recorded before this revision name no identifier types.
        batch_op.add_column(
            sa.Column(
                "identifier_types",
                sa.String(length=200),
                server_default=sa.text("''"),
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("rpc", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_identity_merges_merged", ["merged_id"], unique=False)

    # Merging and erasing look profiles up by the profile they were merged into.
    with op.batch_alter_table("identity_profiles", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_identity_profiles_merged_into"), ["merged_into"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("identity_profiles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_profiles_merged_into"))

    with op.batch_alter_table("identity_merges", schema=None) as batch_op:
        batch_op.drop_index("ix_identity_merges_merged")
        batch_op.drop_column("rpc")
        batch_op.drop_column("request_id")
        batch_op.drop_column("identifier_types")

    with op.batch_alter_table("identity_repoints", schema=None) as batch_op:
        batch_op.drop_index("ix_identity_repoints_to")
        batch_op.drop_index("ix_identity_repoints_from")

    op.drop_table("identity_repoints")
