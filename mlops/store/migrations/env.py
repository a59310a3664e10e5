"""Alembic environment: run programmatically by `mlops.store.migrate`, never at import time."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from mlops.store.models import Base

# An arbitrary constant: serialises concurrent upgrades of one PostgreSQL database.
_PG_LOCK_KEY = 7_243_951_112


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes migrating an empty database at once would both try CREATE TABLE.
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})"))
        context.run_migrations()


run_migrations_online()
