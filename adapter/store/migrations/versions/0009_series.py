"""Each record keeps its patient's MRN, and a session its infusion series, each indexed: a
patient's demographics are read from all the records that name them, and the protocol checks of
a series (its session numbers in order, none repeated) find the series' sessions. The versions
of a type are indexed by time, so that type history pages without a sort.

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
    op.add_column("source_records", sa.Column("mrn", sa.String(64)))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT r.record_type, r.source_id, v.parsed FROM source_records r "
            "JOIN source_record_revisions v ON v.record_type = r.record_type "
            "AND v.source_id = r.source_id AND v.revision = r.revision"
        )
    )
    named = []
    for record_type, source_id, parsed in rows:
        body = json.loads(parsed)
        named.append(
            {
                "type": record_type,
                "id": source_id,
                "mrn": (body.get("patient") or {}).get("mrn"),
                "series": body.get("series_id") if record_type == "infusion_session" else None,
            }
        )
    for start in range(0, len(named), 1000):
        bind.execute(
            sa.text(
                "UPDATE source_records SET mrn = :mrn, series_id = :series "
                "WHERE record_type = :type AND source_id = :id"
            ),
            named[start : start + 1000],
        )
    op.create_index("ix_source_records_series", "source_records", ["series_id"])
    op.create_index("ix_source_records_mrn", "source_records", ["mrn"])


def downgrade() -> None:
    op.drop_index("ix_fhir_resource_versions_type_updated", "fhir_resource_versions")
    op.drop_index("ix_source_records_mrn", "source_records")
    op.drop_index("ix_source_records_series", "source_records")
    op.drop_column("source_records", "mrn")
    op.drop_column("source_records", "series_id")
