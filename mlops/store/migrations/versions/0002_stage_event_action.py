"""stage events record their action (gate, promote, archive, override, rollback)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 22:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stage_events", schema=None) as batch_op:
        # Rows written before this revision were registrations or moves whose kind was not
        # kept: "" says so rather than guessing.
        batch_op.add_column(
            sa.Column("action", sa.String(length=32), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("stage_events", schema=None) as batch_op:
        batch_op.drop_column("action")
