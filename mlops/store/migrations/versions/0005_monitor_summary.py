"""drift_reports gets the monitor's summary: model name, window, estimated and realized
quality, alerts, the JSON report's path

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_name", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("window_start", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("window_end", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("estimated", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("realized", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("alerts", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("json_path", sa.Text(), nullable=True))
        batch_op.create_index("ix_drift_reports_model_name", ["model_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_drift_reports_model_name")
        for name in (
            "json_path",
            "alerts",
            "realized",
            "estimated",
            "window_end",
            "window_start",
            "model_name",
        ):
            batch_op.drop_column(name)
