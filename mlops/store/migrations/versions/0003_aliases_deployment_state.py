"""model aliases, deployment state per model name, and its typed audit

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=32), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_name", "alias", name="uq_model_aliases_name_alias"),
    )
    op.create_index("ix_model_aliases_model_name", "model_aliases", ["model_name"])
    op.create_table(
        "deployment_states",
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("production_version_id", sa.Integer(), nullable=True),
        sa.Column("canary_version_id", sa.Integer(), nullable=True),
        sa.Column("canary_share", sa.Float(), nullable=False),
        sa.Column("shadow_version_id", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["production_version_id"], ["model_versions.id"]),
        sa.ForeignKeyConstraint(["canary_version_id"], ["model_versions.id"]),
        sa.ForeignKeyConstraint(["shadow_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("model_name"),
    )
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("share", sa.Float(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deployment_events_model_name", "deployment_events", ["model_name"])
    # Carry existing stores forward: each model name's production version becomes its
    # production alias and deployment state (revision 1, audited as a promote).
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT name, MAX(id) FROM model_versions WHERE stage = 'production' GROUP BY name")
    ).fetchall()

    for name, version_id in rows:
        conn.execute(
            sa.text(
                "INSERT INTO model_aliases (model_name, alias, model_version_id, updated_at, "
                "updated_by) VALUES (:n, 'production', :v, CURRENT_TIMESTAMP, 'migration')"
            ),
            {"n": name, "v": version_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO deployment_states (model_name, production_version_id, canary_share, "
                "revision, updated_at, updated_by) VALUES (:n, :v, 0, 1, CURRENT_TIMESTAMP, "
                "'migration')"
            ),
            {"n": name, "v": version_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO deployment_events (model_name, action, model_version_id, revision, "
                "actor, reason, created_at) VALUES (:n, 'promote', :v, 1, 'migration', "
                "'carried forward from the stage column', CURRENT_TIMESTAMP)"
            ),
            {"n": name, "v": version_id},
        )


def downgrade() -> None:
    op.drop_index("ix_deployment_events_model_name", table_name="deployment_events")
    op.drop_table("deployment_events")
    op.drop_table("deployment_states")
    op.drop_index("ix_model_aliases_model_name", table_name="model_aliases")
    op.drop_table("model_aliases")
