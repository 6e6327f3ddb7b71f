"""Scheduled jobs shared by replicas: the ticks each job has run (one row per job and tick,
claimed by the process that runs it), and the leases of the mapping pass, the export runs and
the alert check.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from adapter.store.tables import UtcDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None
LEASES = ("job:map-pending-records", "job:run-exports", "job:check-alerts")


def upgrade() -> None:
    op.create_table(
        "job_ticks",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("slot", UtcDateTime(), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("claimed_at", UtcDateTime(), nullable=False),
    )
    leases = sa.table("sync_leases", sa.column("name", sa.String(64)))
    op.bulk_insert(leases, [{"name": name} for name in LEASES])


def downgrade() -> None:
    op.execute(
        "DELETE FROM sync_leases WHERE name IN (" + ", ".join(f"'{n}'" for n in LEASES) + ")"
    )
    op.drop_table("job_ticks")
