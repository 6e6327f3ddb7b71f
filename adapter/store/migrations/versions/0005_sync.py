"""The sync to the EHR: outbox, runs, patient resolutions, run leases.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_outbox",
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
    )
    # The pending items in delivery order: a run walks it with a keyset.
    op.create_index("ix_sync_outbox_queue", "sync_outbox", ["state", "rank", "resource_id"])
    # Resources stored before the sync existed are queued too.
    op.execute(
        "INSERT INTO sync_outbox (resource_id, resource_type, rank, version_id, state, attempts, "
        "next_attempt_at, updated_at) SELECT id, resource_type, CASE resource_type "
        "WHEN 'Procedure' THEN 0 WHEN 'MedicationAdministration' THEN 1 "
        "WHEN 'AdverseEvent' THEN 2 WHEN 'Observation' THEN 3 ELSE 9 END, version_id, "
        "'pending', 0, last_updated, last_updated FROM fhir_resources"
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_sync_runs_started", "sync_runs", ["started_at"])
    op.create_table(
        "sync_patients",
        sa.Column("mrn", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ehr_id", sa.String(128)),
        sa.Column("detail", sa.Text),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "sync_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
    )
    op.execute("INSERT INTO sync_leases (name) VALUES ('sync')")


def downgrade() -> None:
    op.drop_table("sync_leases")
    op.drop_table("sync_patients")
    op.drop_index("ix_sync_runs_started", "sync_runs")
    op.drop_table("sync_runs")
    op.drop_index("ix_sync_outbox_queue", "sync_outbox")
    op.drop_table("sync_outbox")
