"""Each resource's journey, received, mapped, sent and answered, per record in the records API
and as a histogram in /metrics."""

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, day_posted
from tests.sync.sandbox import SandboxEhr


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
