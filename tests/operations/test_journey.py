"""Each resource's journey, received, mapped, sent and answered, per record in the records API
and as a histogram in /metrics."""

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.tables import sync_outbox
from adapter.sync.engine import sync_once
from adapter.sync.outgoing import adapter_identifier
from tests.conftest import EXAMPLE_DAY, day_posted
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import load_example_day, sync_with


@pytest.fixture
def service(database_url: str, mappings_dir: Path, ehr: SandboxEhr) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, mappings_dir=mappings_dir, ehr_base_url=ehr.base)
    with TestClient(create_app(settings, background=False)) as client:
        yield client


def test_a_records_resources_show_their_journey_and_metrics_count_it(
    service: TestClient,
) -> None:
    admin = day_posted(service)
    mapped = service.get("/api/v1/records/vitals/VIT-77001", headers=admin).json()
    waiting = [r["journey"] for r in mapped["mapping"]["resources"]]

    run = service.post("/api/v1/sync/run", headers=admin).json()
    record = service.get("/api/v1/records/vitals/VIT-77001", headers=admin).json()
    metrics = service.get("/metrics", headers=admin).text

    assert waiting and all(j["sent"] is None and j["answered"] is None for j in waiting)
    resources = record["mapping"]["resources"]
    assert resources
    for resource in resources:
        journey = resource["journey"]
        assert journey["state"] == "delivered" and journey["versionId"] == resource["versionId"]
        moments = [datetime.fromisoformat(journey[k]) for k in ("mapped", "sent", "answered")]
        received = datetime.fromisoformat(record["updated_at"])
        assert [received, *moments] == sorted([received, *moments])
        assert journey["seconds_to_ehr"] == pytest.approx(
            (moments[-1] - received).total_seconds(), abs=0.001
        )
    histogram = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name.startswith("adapter_record_to_ehr_seconds")
    }
    delivered = run["counts"]["delivered"] + run["counts"].get("delivered_partially", 0)
    assert histogram["adapter_record_to_ehr_seconds_count"] == delivered > 0


def test_a_resource_the_ehr_is_not_sent_shows_no_time_sent(service: TestClient) -> None:
    """The sandbox EHR takes no DocumentReference: a side effect's clinical note is skipped,
    and its journey says it was never sent."""
    admin = day_posted(service)
    service.post("/api/v1/sync/run", headers=admin)
    journeys = [
        resource["journey"]
        for line in EXAMPLE_DAY.read_bytes().splitlines()
        if b'"adverse_event"' in line
        for resource in service.get(
            f"/api/v1/records/adverse_event/{orjson.loads(line)['id']}", headers=admin
        ).json()["mapping"]["resources"]
    ]

    skipped = [j for j in journeys if j["state"] == "skipped"]
    assert skipped and all(j["sent"] is None and j["answered"] is None for j in skipped)
    assert any(j["state"] == "delivered" and j["sent"] for j in journeys)


def test_only_a_resource_a_request_carried_shows_a_time_sent(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """The EHR refuses every write (403): once it has refused a type, the run sends no more of
    it, and those not sent show no time sent; those a request carried do, refused or not."""
    load_example_day(runtime)
    sync = sync_with(runtime, settings, ehr_base_url=ehr.base, sync_batch_size=5)
    bodies: list[str] = []
    request = sync.client.request

    def noted(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method in ("POST", "PUT") and kwargs.get("body"):
            bodies.append(str(kwargs["body"]))
        return request(method, path, *args, **kwargs)

    sync.client.request = noted  # type: ignore[method-assign]
    ehr.quirk(forbidden="writes")
    try:
        sync_once(sync, trigger="test")
    finally:
        ehr.quirk()

    sent = "\n".join(bodies)
    records_system = runtime.mapping.mapper.mappings.site.identifier_systems.records
    stored = {r.id: r.content for r in runtime.resources.all_current()}
    with runtime.store.engine.connect() as connection:
        rows = connection.execute(
            select(sync_outbox.c.resource_id, sync_outbox.c.requested_at, sync_outbox.c.detail)
        ).all()
    refused = [row for row in rows if orjson.loads(row.detail or "{}").get("forbidden")]
    carried = {}
    for row in refused:
        resource = orjson.loads(stored[row.resource_id])
        identifier = adapter_identifier(resource, records_system)
        assert identifier
        carried[row.resource_id] = (
            f"urn:uuid:{row.resource_id}" in sent or orjson.dumps(identifier[1]).decode() in sent
        )
    assert any(carried.values()) and not all(carried.values()), carried
    for row in refused:
        assert (row.requested_at is not None) == carried[row.resource_id], row
