"""Patient confirmations: an admin's word that the EHR's Patient found by a clinic MRN is the
record's patient although its family name or birth date differs (who, when, which Patient).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from adapter.store.tables import UtcDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_patient_confirmations",
        sa.Column("mrn", sa.String(64), primary_key=True),
        sa.Column("ehr_id", sa.String(128), nullable=False),
        sa.Column("differs", sa.Text, nullable=False),
        sa.Column("confirmed_by", sa.String(64), nullable=False),
        sa.Column("confirmed_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sync_patient_confirmations")
