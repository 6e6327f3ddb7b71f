"""Alembic environment: runs migrations on the connection the adapter hands over."""

from alembic import context
from sqlalchemy import Connection

from adapter.store.tables import metadata

connection: Connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
