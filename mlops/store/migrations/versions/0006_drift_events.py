"""drift_events: every drift alert and what it caused (a retrain, or suppressed and why)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("drift_report_id", sa.Integer(), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["drift_report_id"], ["drift_reports.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_drift_events_model_name", "drift_events", ["model_name"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_drift_events_model_name", table_name="drift_events")
    op.drop_table("drift_events")
