"""Each session record names its infusion series, so that the protocol checks of a series (its
session numbers in order, none repeated) find the series' sessions by an index; and the versions
of a type are indexed by time, newest first, so that type history pages without a sort.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_fhir_resource_versions_type_updated",
        "fhir_resource_versions",
        ["resource_type", "last_updated", "id"],
    )
    op.add_column("source_records", sa.Column("series_id", sa.String(64)))
    op.create_index("ix_source_records_series", "source_records", ["series_id"])
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT r.source_id, v.parsed FROM source_records r JOIN source_record_revisions v "
            "ON v.record_type = r.record_type AND v.source_id = r.source_id "
            "AND v.revision = r.revision WHERE r.record_type = 'infusion_session'"
        )
    ).fetchall()
    named = [
        {"series": series, "id": source_id}
        for source_id, parsed in rows
        if (series := json.loads(parsed).get("series_id"))
    ]
    if named:
        bind.execute(
            sa.text(
                "UPDATE source_records SET series_id = :series "
                "WHERE record_type = 'infusion_session' AND source_id = :id"
            ),
            named,
        )


def downgrade() -> None:
    op.drop_index("ix_fhir_resource_versions_type_updated", "fhir_resource_versions")
    op.drop_index("ix_source_records_series", "source_records")
    op.drop_column("source_records", "series_id")
