"""FHIR resources with their versions, and the mapping state of each source record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_records") as batch:
        batch.add_column(
            sa.Column("mapping_state", sa.String(16), nullable=False, server_default="pending")
        )
        batch.add_column(sa.Column("mapping_seq", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("mapping_detail", sa.Text))
        batch.add_column(sa.Column("mapped_version", sa.String(32)))
    op.create_index("ix_source_records_mapping_state", "source_records", ["mapping_state"])
    op.create_table(
        "fhir_resources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("source_type", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_fhir_resources_source", "fhir_resources", ["source_id", "source_type"])
    op.create_table(
        "fhir_resource_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
    )
    op.create_table(
        "adapter_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("adapter_state")
    op.drop_table("fhir_resource_versions")
    op.drop_index("ix_fhir_resources_source", "fhir_resources")
    op.drop_table("fhir_resources")
    op.drop_index("ix_source_records_mapping_state", "source_records")
    with op.batch_alter_table("source_records") as batch:
        batch.drop_column("mapped_version")
        batch.drop_column("mapping_detail")
        batch.drop_column("mapping_seq")
        batch.drop_column("mapping_state")
