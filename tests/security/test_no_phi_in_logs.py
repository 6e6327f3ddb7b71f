"""No protected health information in the logs: the example day goes in, the whole API is
called (reads, searches, export, intake with errors, admin, refusals) and the sync runs, with
every logger at DEBUG; no log line carries a patient's name, MRN, birth date, phone number or a
free-text note."""

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, vitals
from tests.sync.conftest import ehr, sandbox_server  # noqa: F401 (fixtures)
from tests.sync.sandbox import SandboxEhr

IDENTIFYING = {"mrn", "family", "given", "birth_date", "phone", "notes", "name"}
QUOTING = "Invalid isoformat string: 'Rivera 100234 1979-03-14'"
"""The text of an error that quotes what a caller sent (as datetime.fromisoformat's does)."""


def _identifying_values() -> set[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in IDENTIFYING and isinstance(inner, str):
                    found.add(inner)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    for line in EXAMPLE_DAY.read_bytes().splitlines():
        if line.strip():
            walk(orjson.loads(line))
    return found


@pytest.fixture
def settings(
    database_url: str,
    mappings_dir: Path,
    sandbox_server: SandboxEhr,  # noqa: F811
    tmp_path: Path,
) -> Settings:
    return Settings(
        database_url=database_url,
        mappings_dir=mappings_dir,
        ehr_base_url=sandbox_server.base,
        export_dir=tmp_path / "exports",
    )


def _whole_surface(client: TestClient, ehr: SandboxEhr) -> None:  # noqa: F811
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    client.post(
        "/api/v1/records",
        content=EXAMPLE_DAY.read_bytes(),
        headers={"content-type": "application/x-ndjson"},
    )
    bad = vitals(heart_rate="fast", patient={"mrn": "100234", "family": "Rivera"}, notes="x")
    client.post("/api/v1/records", json=bad)
    client.post("/api/v1/records", content=b'{"patient": {"mrn": "100234"', headers={})
    runtime.mapping.run()
    for path in (
        "/api/v1/records/infusion_session/SES-2026-00412",
        "/api/v1/records/infusion_session/SES-2026-00412/revisions/1",
        "/api/v1/records/vitals/NOT-THERE",
        "/api/v1/mapping/pending",
        "/api/v1/mapping/status",
        "/fhir/Observation?patient:identifier=urn:clinic:mrn|100234&_count=5",
        "/fhir/Procedure?_revinclude=Observation:part-of",
        "/fhir/Observation?date=ge2026-13",
        "/fhir/Observation/_history",
        "/fhir/Patient/100234",
        "/fhir/Observation?subject.name=Rivera",
    ):
        client.get(path)
    procedure = client.get("/fhir/Procedure").json()["entry"][0]["resource"]
    client.get(f"/fhir/Procedure/{procedure['id']}")
    client.get(f"/fhir/Procedure/{procedure['id']}/_history")
    client.post("/fhir/Observation/_search", data={"patient:identifier": "urn:clinic:mrn|100234"})
    location = client.get("/fhir/$export", headers={"Prefer": "respond-async"}).headers[
        "content-location"
    ]
    runtime.exports.run()
    for output in client.get(location).json()["output"]:
        client.get(output["url"])
    client.post("/api/v1/mapping/reload")
    client.get("/fhir/Observation", headers={"Authorization": "Bearer iat_stolen"})
    client.post("/auth/token", data={"grant_type": "client_credentials"})
    ehr.control("PUT", "/reject", {"system": "http://loinc.org", "code": "8867-4", "status": 422})
    client.post("/api/v1/sync/run")
    refused = client.get("/api/v1/sync/dead-letters").json()
    assert refused["count"] >= 1, "the EHR refused nothing: the error path was not run"
    client.get("/api/v1/sync/runs")
    client.post("/api/v1/sync/replay", json={"all": True})
    client.get("/api/v1/audit")
    client.get("/api/v1/audit", params={"format": "fhir"})
    _error_paths(client)


def _error_paths(client: TestClient) -> None:
    """Refusals whose input names a patient, and an unexpected error whose text quotes one."""
    client.get("/fhir/Observation", params={"date": "Rivera", "_cursor": "100234"})
    client.get("/fhir/Patient/100234/_history/Rivera")
    client.get("/api/v1/audit", params={"since": "1979-03-14T99:00", "client_id": "Rivera"})
    client.post("/api/v1/records", content=b'{"patient": {"mrn": "100234"}, "a": 1, "a": 2}')
    client.post("/fhir/Observation/_search", data={"patient": "Rivera\u0000"})
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    versions = runtime.fhir_reads.versions

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError(QUOTING)  # a traceback shows this line: the text is not in it

    runtime.fhir_reads.versions = broken
    try:
        assert client.get("/fhir/Observation/_history").status_code == 500
    finally:
        runtime.fhir_reads.versions = versions


def test_no_identifying_value_reaches_a_log_line(
    client: TestClient,
    ehr: SandboxEhr,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = _identifying_values()
    assert {"100234", "Rivera", "1979-03-14", "+1-555-0142"} <= values

    with caplog.at_level(logging.DEBUG):
        _whole_surface(client, ehr)
        client.app.state.audit_writer.flush()  # type: ignore[attr-defined]

    # The test's own HTTP client (httpx2) logs what it sends; it is the caller, not the adapter.
    own = [r for r in caplog.records if not r.name.startswith("httpx")]
    lines = [caplog.handler.format(record) for record in own]
    assert any(r.name.startswith("adapter.") for r in own), "nothing of the adapter captured"
    leaked = {value: line for value in values for line in lines if value in line}
    assert leaked == {}
