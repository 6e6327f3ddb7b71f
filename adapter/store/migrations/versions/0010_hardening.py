"""Hardening: the audit record closed and chained, methods and revisions that fit.

The audit record is closed to TRUNCATE (PostgreSQL) and to replacing inserts (SQLite), and
chained: each entry carries an HMAC over the one before and itself, and a one-row head names
the last entry. Methods of any length fit; entry ids are 64-bit on PostgreSQL too. Revisions
up to 2^53 - 1 on both stores.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

NO_TRUNCATE_POSTGRESQL = (
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
)
NO_REPLACE_SQLITE = (
    "CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events "
    "WHEN EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.id) "
    "BEGIN SELECT RAISE(ABORT, 'the audit record is append-only'); END"
)
"""INSERT OR REPLACE deletes the row it replaces without firing DELETE triggers (unless
recursive_triggers is on): an insert naming an id that exists is refused before it runs."""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute(NO_TRUNCATE_POSTGRESQL)
        op.alter_column("audit_events", "method", type_=sa.String(32))
        op.alter_column("audit_events", "id", type_=sa.BigInteger)
        for table in ("source_records", "source_record_revisions"):
            op.alter_column(table, "revision", type_=sa.BigInteger)
    else:
        op.execute(NO_REPLACE_SQLITE)
    op.add_column("audit_events", sa.Column("chain", sa.String(64)))
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("last_chain", sa.String(64)),
    )
    last = op.get_bind().execute(sa.text("SELECT max(id) FROM audit_events")).scalar()
    op.bulk_insert(head, [{"id": 1, "last_id": last or 0, "last_chain": None}])


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    op.drop_column("audit_events", "chain")
    if op.get_bind().dialect.name == "postgresql":
        for table in ("source_records", "source_record_revisions"):
            op.alter_column(table, "revision", type_=sa.Integer)
        op.alter_column("audit_events", "method", type_=sa.String(8))
        op.alter_column("audit_events", "id", type_=sa.Integer)
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
    else:
        op.execute("DROP TRIGGER audit_events_no_replace")
