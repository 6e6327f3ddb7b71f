"""On SQLite the outbox is kept in the order of its key (a WITHOUT ROWID table).

A run walks the outbox in delivery order, (rank, resource_id), and writes each item twice (the
create noted, the outcome). In a rowid table the rows lie in the order they were queued, so
consecutive items sit on scattered pages and each commit rewrote a page per item or so to the
write-ahead log; kept in the order of resource_id, the items of a commit share a few pages.
PostgreSQL is left as it is: its tables have no such order to keep.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = (
    "resource_id, resource_type, rank, version_id, state, attempts, next_attempt_at, detail, "
    "ehr_id, ehr_version, delivered_version, updated_at, sent_at"
)


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_table(
        "sync_outbox_rebuilt",
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("ehr_id", sa.String(128)),
        sa.Column("ehr_version", sa.String(128)),
        sa.Column("delivered_version", sa.Integer),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sqlite_with_rowid=with_rowid,
    )
    op.execute(f"INSERT INTO sync_outbox_rebuilt ({COLUMNS}) SELECT {COLUMNS} FROM sync_outbox")
    op.drop_index("ix_sync_outbox_queue", "sync_outbox")
    op.drop_table("sync_outbox")
    op.rename_table("sync_outbox_rebuilt", "sync_outbox")
    op.create_index("ix_sync_outbox_queue", "sync_outbox", ["state", "rank", "resource_id"])


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
