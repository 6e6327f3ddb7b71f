"""The store's tables. The schema itself is created and upgraded by the Alembic migrations."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back with its offset, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


metadata = MetaData()

source_records = Table(
    "source_records",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("record_type", String(32), primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("withdrawn", Boolean, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("session_id", String(64)),
    Column("first_received_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_source_records_session", "session_id"),
)
"""One row per record: its current revision (number and content hash), withdrawn or not.

source_id leads the key so that a batch's look-up by ids uses it even before PostgreSQL has
gathered statistics on a freshly loaded table."""

source_record_revisions = Table(
    "source_record_revisions",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("record_type", String(32), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("withdrawn", Boolean, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("raw", Text, nullable=False),
    Column("parsed", Text, nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
)
"""Every revision ever accepted, as received (raw) and as validated (parsed)."""
