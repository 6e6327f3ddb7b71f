"""Search index of the FHIR resources: tokens and references, and each resource's date range.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fhir_resources") as batch:
        batch.add_column(sa.Column("date_start", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("date_end", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_fhir_resources_type_updated", "fhir_resources", ["resource_type", "last_updated", "id"]
    )
    op.create_index(
        "ix_fhir_resources_type_date", "fhir_resources", ["resource_type", "date_start", "id"]
    )
    op.create_table(
        "fhir_search_tokens",
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255)),
        sa.Column("code", sa.String(255), nullable=False),
    )
    op.create_index(
        "ix_fhir_search_tokens_lookup", "fhir_search_tokens", ["param", "code", "resource_id"]
    )
    op.create_index("ix_fhir_search_tokens_resource", "fhir_search_tokens", ["resource_id"])


def downgrade() -> None:
    op.drop_index("ix_fhir_search_tokens_resource", "fhir_search_tokens")
    op.drop_index("ix_fhir_search_tokens_lookup", "fhir_search_tokens")
    op.drop_table("fhir_search_tokens")
    op.drop_index("ix_fhir_resources_type_date", "fhir_resources")
    op.drop_index("ix_fhir_resources_type_updated", "fhir_resources")
    with op.batch_alter_table("fhir_resources") as batch:
        batch.drop_column("date_end")
        batch.drop_column("date_start")
