"""Journey: when each resource's record was received, when the resource was mapped, sent to the
EHR and answered, kept on its outbox row; the outbox's urgent items (side effects, protocol
breaches, vitals outside their thresholds) found ahead of a backlog; records received while a
mapping run works found ahead of its backlog.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from adapter.store.tables import UtcDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite's outbox stays a WITHOUT ROWID table (0008).
    op.add_column(
        "sync_outbox", sa.Column("urgent", sa.Boolean, nullable=False, server_default=sa.false())
    )
    for name in ("received_at", "mapped_at", "requested_at", "answered_at"):
        op.add_column("sync_outbox", sa.Column(name, UtcDateTime()))
    op.create_index("ix_sync_outbox_urgent", "sync_outbox", ["urgent", "state", "received_at"])
    op.create_index("ix_source_records_arrival", "source_records", ["mapping_state", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_source_records_arrival", "source_records")
    op.drop_index("ix_sync_outbox_urgent", "sync_outbox")
    with op.batch_alter_table("sync_outbox") as table:
        for name in ("answered_at", "requested_at", "mapped_at", "received_at", "urgent"):
            table.drop_column(name)
