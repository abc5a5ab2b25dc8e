"""Alembic environment: migrations always run on the connection the catalog hands over
(config.attributes["connection"]), never on a URL from an ini file."""

from __future__ import annotations

from alembic import context

from repository.catalog import metadata

connection = context.config.attributes["connection"]
# Batch mode: SQLite cannot ALTER most things, Alembic then copies the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
