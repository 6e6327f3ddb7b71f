"""Commit order: the version clock whose row lock puts the writers of resource versions in
turn, so that lastUpdated rises in commit order; and the claim a mapping batch holds on each
record it maps.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from adapter.store.tables import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    clock = op.create_table(
        "version_clock",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("turns", sa.BigInteger, nullable=False),
        sa.Column("last_updated", UtcDateTime(), nullable=False),
    )
    versions = sa.table("fhir_resource_versions", sa.column("last_updated", UtcDateTime()))
    latest = op.get_bind().execute(sa.select(sa.func.max(versions.c.last_updated))).scalar()
    start = latest or datetime(2000, 1, 1, tzinfo=UTC)
    op.bulk_insert(clock, [{"id": 1, "turns": 0, "last_updated": start}])
    with op.batch_alter_table("source_records") as batch:
        batch.add_column(sa.Column("mapping_claim", sa.String(36)))
        batch.add_column(sa.Column("mapping_claimed_until", UtcDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("source_records") as batch:
        batch.drop_column("mapping_claimed_until")
        batch.drop_column("mapping_claim")
    op.drop_table("version_clock")
