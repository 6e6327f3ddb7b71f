"""Patients are searched by name (name, family, given), a MedicationAdministration by its visit
(context) and a DocumentReference by its visit (encounter), and an Encounter's or a CarePlan's
period is indexed for `date`: the search index of the current resources of these types is
written again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

import json

import sqlalchemy as sa
from alembic import op

from adapter.fhir.indexing import index

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TYPES = ("Patient", "MedicationAdministration", "DocumentReference", "Encounter", "CarePlan")


def _reindex() -> None:
    """Tokens, and the date range, of each current resource of TYPES."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, content FROM fhir_resources WHERE resource_type IN :types").bindparams(
            sa.bindparam("types", expanding=True)
        ),
        {"types": list(TYPES)},
    ).all()
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        bind.execute(
            sa.text("DELETE FROM fhir_search_tokens WHERE resource_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": [row[0] for row in chunk]},
        )
        indexed = {row[0]: index(json.loads(row[1])) for row in chunk}
        values = [
            {"resource_id": resource_id, "param": param, "system": system, "code": code}
            for resource_id, search in indexed.items()
            for param, system, code in search.tokens
        ]
        bind.execute(
            sa.text(
                "UPDATE fhir_resources SET date_start = :start, date_end = :end WHERE id = :id"
            ),
            [
                {"id": resource_id, "start": search.date_start, "end": search.date_end}
                for resource_id, search in indexed.items()
            ],
        )
        if values:
            bind.execute(
                sa.text(
                    "INSERT INTO fhir_search_tokens (resource_id, param, system, code) "
                    "VALUES (:resource_id, :param, :system, :code)"
                ),
                values,
            )


def upgrade() -> None:
    _reindex()


def downgrade() -> None:
    """The extra index rows are harmless to the earlier code, which never asks for them."""
