"""/metrics in the Prometheus text format, for an admin key or a scrape key alone: what was
received, mapped and delivered, the runs, the EHR's answers, the breaker, the audit queue."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from tests.conftest import day_posted, grant
from tests.sync.sandbox import SandboxEhr


@pytest.fixture
def service(database_url: str, mappings_dir: Path, ehr: SandboxEhr) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, mappings_dir=mappings_dir, ehr_base_url=ehr.base)
    with TestClient(create_app(settings, background=False)) as client:
        yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_need_an_admin_or_a_scrape_key(service: TestClient) -> None:
    runtime: Runtime = service.app.state.runtime  # type: ignore[attr-defined]
    scrape = grant(runtime, role="metrics").api_key
    intake = grant(runtime, role="intake").api_key
    admin = grant(runtime).api_key

    def status(path: str, key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return service.get(path, headers=headers).status_code

    assert [status("/metrics", k) for k in (admin, scrape, intake, None)] == [200, 200, 403, 401]
    assert status("/api/v1/sync/runs", scrape) == 403


def test_metrics_say_what_was_received_mapped_and_delivered(service: TestClient) -> None:
    admin = day_posted(service)
    before = samples(service.get("/metrics", headers=admin).text)
    service.post("/api/v1/sync/run", headers=admin)
    service.post("/auth/token", data={"grant_type": "client_credentials"})
    answer = service.get("/metrics", headers=admin)
    after = samples(answer.text)

    assert answer.headers["content-type"].startswith("text/plain; version=")
    received = ("adapter_intake_records_total", (("outcome", "created"), ("record_type", "vitals")))
    assert after[received] == 9
    mapped = ("adapter_records", (("mapping_state", "mapped"), ("record_type", "infusion_session")))
    assert after[mapped] == 3
    procedures = (("resource_type", "Procedure"), ("state", "pending"))
    assert before[("adapter_resources", procedures)] == 3
    delivered = (("resource_type", "Procedure"), ("state", "delivered"))
    assert after[("adapter_resources", delivered)] == 3
    assert before[("adapter_oldest_undelivered_seconds", ())] > 0
    assert after[("adapter_oldest_undelivered_seconds", ())] == 0
    assert after[("adapter_sync_runs_total", (("status", "completed"), ("trigger", "api")))] == 1
    assert after[("adapter_sync_resource_outcomes_total", (("outcome", "delivered"),))] > 50
    assert after[("adapter_sync_run_duration_seconds_count", ())] == 1
    assert (
        after[
            ("adapter_ehr_request_duration_seconds_count", (("method", "POST"), ("status", "200")))
        ]
        >= 1
    )
    assert after[("adapter_ehr_breaker_open", ())] == 0
    assert after[("adapter_token_refusals_total", ())] == 1
    assert ("adapter_audit_queue_depth", ()) in after
    assert after[("adapter_sync_last_success_seconds", ())] > 0
