"""What an EHR of each sandbox profile should hold of the adapter's resources."""

from collections import Counter

from sqlalchemy import select

from adapter.runtime import Runtime
from adapter.store.outbox import delivery_kind
from adapter.store.resources import NOT_DELIVERED
from adapter.store.tables import fhir_resources
from tests.sync.sandbox import delivered_kinds


def expected_in_ehr(runtime: Runtime, profile: str = "generic") -> Counter[str]:
    """How many copies of each type the EHR of a profile should hold: every resource of a type
    it writes, and the stand-ins (notes, a side effect's Observation) of the types it does not."""
    delivered = delivered_kinds(profile)
    query = select(fhir_resources.c.resource_type, fhir_resources.c.source_type)
    with runtime.store.engine.connect() as connection:
        rows = connection.execute(query).all()
    return Counter(
        kind
        for kind, source in rows
        if kind not in NOT_DELIVERED and delivered(delivery_kind(source, kind))
    )


def not_for_ehr(runtime: Runtime, profile: str = "generic") -> int:
    """How many queued resources the EHR of a profile does not get (the sync skips them)."""
    stored = sum(1 for r in runtime.resources.all_current() if r.resource_type not in NOT_DELIVERED)
    return stored - sum(expected_in_ehr(runtime, profile).values())
