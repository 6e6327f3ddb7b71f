"""The outbox remembers when a create of each resource was first sent to the EHR.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sync_outbox", sa.Column("sent_at", sa.DateTime(timezone=True)))
    # Whatever was queued before cannot say whether a create of it reached the EHR unheard:
    # each is looked up in the EHR before its next create, as before.
    op.execute("UPDATE sync_outbox SET sent_at = updated_at WHERE ehr_id IS NULL")


def downgrade() -> None:
    op.drop_column("sync_outbox", "sent_at")
