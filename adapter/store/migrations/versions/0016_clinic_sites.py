"""Clinic sites: the site of each stored resource and outbox row, so that a group's sites are
synced and served apart; store keys that hold the site (`site:id`, up to 97 characters); the
sites an API client (and its $export jobs) is bound to; the site of each sync run.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

KEYS = {
    "source_records": ("source_id", "session_id", "series_id", "mrn"),
    "source_record_revisions": ("source_id",),
    "fhir_resources": ("source_id",),
    "sync_patients": ("mrn",),
    "sync_patient_confirmations": ("mrn",),
}
"""Columns holding store keys, widened from 64 to 100 characters (SQLite does not enforce a
length: there the columns stay as they are)."""


def _widen(length: int) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in KEYS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.String(length))


def upgrade() -> None:
    _widen(100)
    # Plain ADD COLUMNs: SQLite's outbox stays a WITHOUT ROWID table (0008).
    op.add_column("fhir_resources", sa.Column("site", sa.String(32)))
    op.add_column("sync_outbox", sa.Column("site", sa.String(32)))
    op.add_column("sync_runs", sa.Column("site", sa.String(32)))
    op.add_column("api_clients", sa.Column("sites", sa.Text))
    op.add_column("export_jobs", sa.Column("sites", sa.Text))
    op.create_index("ix_fhir_resources_site", "fhir_resources", ["site", "resource_type"])
    op.create_index("ix_sync_outbox_site", "sync_outbox", ["site", "state", "rank", "resource_id"])


def downgrade() -> None:
    op.drop_index("ix_sync_outbox_site", "sync_outbox")
    op.drop_index("ix_fhir_resources_site", "fhir_resources")
    for table, column in (
        ("export_jobs", "sites"),
        ("api_clients", "sites"),
        ("sync_runs", "site"),
        ("sync_outbox", "site"),
        ("fhir_resources", "site"),
    ):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
    _widen(64)
