"""What an EHR of each sandbox profile should hold of the adapter's resources."""

from collections import Counter

from sqlalchemy import select

from adapter.runtime import Runtime
from adapter.store.outbox import delivery_kind
from adapter.store.resources import NOT_DELIVERED
from adapter.store.tables import fhir_resources
from tests.sync.sandbox import delivered_kinds


def _stored(runtime: Runtime, site: str | None) -> list[tuple[str, str]]:
    """The type and source type of each resource stored: of a site's records where `site`
    names one, else of every record."""
    query = select(fhir_resources.c.resource_type, fhir_resources.c.source_type)
    if site is not None:
        query = query.where(fhir_resources.c.site == site)
    with runtime.store.engine.connect() as connection:
        return [(kind, source) for kind, source in connection.execute(query)]


def expected_in_ehr(
    runtime: Runtime, profile: str = "generic", site: str | None = None
) -> Counter[str]:
    """How many copies of each type the EHR of a profile should hold: every resource of a type
    it writes, and the stand-ins (notes, a side effect's Observation) of the types it does not;
    with `site`, of that site's records alone (its EHR's share of a clinic group)."""
    delivered = delivered_kinds(profile)
    return Counter(
        kind
        for kind, source in _stored(runtime, site)
        if kind not in NOT_DELIVERED and delivered(delivery_kind(source, kind))
    )


def not_for_ehr(runtime: Runtime, profile: str = "generic", site: str | None = None) -> int:
    """How many queued resources the EHR of a profile does not get (the sync skips them)."""
    stored = sum(1 for kind, _ in _stored(runtime, site) if kind not in NOT_DELIVERED)
    return stored - sum(expected_in_ehr(runtime, profile, site).values())
