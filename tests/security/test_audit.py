"""The record of access: every read, search, export, intake and admin action is recorded, with
who, what and the outcome; the record is append-only; admins read it as JSON or as AuditEvents
in the BALP shapes, which pass three validators."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from adapter.fhir.models import parse
from adapter.fhir.validation import own_checks
from tests.conftest import EXAMPLE_DAY, Credentials, FhirValidator, sign_in


@pytest.fixture
def day(client: TestClient) -> TestClient:
    answer = client.post(
        "/api/v1/records",
        content=EXAMPLE_DAY.read_bytes(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert answer.status_code == 200
    client.app.state.runtime.mapping.run()  # type: ignore[attr-defined]
    return client


def _entries(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = client.get("/api/v1/audit", params=params).json()["entries"]
    return entries


def test_each_kind_of_access_is_recorded_with_who_what_and_outcome(day: TestClient) -> None:
    credentials: Credentials = day.auth.credentials  # type: ignore[attr-defined]
    observation = day.get("/fhir/Observation?_count=1").json()["entry"][0]["resource"]
    day.get(f"/fhir/Observation/{observation['id']}")
    day.post("/fhir/Procedure/_search", data={"identifier": "SES-2026-00415"})
    day.get("/fhir/$export?_type=Procedure", headers={"Prefer": "respond-async"})
    day.get("/api/v1/sync/status")
    day.get("/fhir/Observation", headers={"Authorization": "Bearer iat_not-a-token"})
    day.get("/healthz")
    day.get("/fhir/metadata")

    entries = _entries(day)
    by_interaction = {e["interaction"]: e for e in reversed(entries)}

    intake = by_interaction["intake"]
    assert intake["method"] == "POST" and intake["outcome"] == 200
    assert intake["client_id"] != credentials.smart.id and intake["query"] == "records=19"
    assert "infusion_session/SES-2026-00412" in intake["resource_ids"]
    read = by_interaction["read"]
    assert read["resource_ids"] == [f"Observation/{observation['id']}"]
    assert read["client_id"] == credentials.smart.id and read["outcome"] == 200
    search = [e for e in entries if e["interaction"] == "search-type"]
    assert any(e["query"] == "_count=1" and e["resource_type"] == "Observation" for e in search)
    assert any(e["query"] == "identifier=SES-2026-00415" for e in search)
    export = by_interaction["export"]
    assert export["outcome"] == 202 and len(export["resource_ids"]) == 1
    assert by_interaction["admin:status"]["path"] == "/api/v1/sync/status"
    refused = [e for e in entries if e["outcome"] == 401]
    assert refused and refused[0]["client_id"] is None
    assert not [e for e in entries if e["path"] in ("/healthz", "/fhir/metadata")]


def test_the_record_filters_and_pages(day: TestClient) -> None:
    for _ in range(3):
        day.get("/fhir/Procedure")

    searches = _entries(day, interaction="search-type", limit=2)
    page = day.get("/api/v1/audit", params={"limit": 2}).json()
    following = _entries(day, limit=2, before=page["next_before"])

    assert len(searches) == 2 and {e["interaction"] for e in searches} == {"search-type"}
    assert following[0]["id"] < page["entries"][-1]["id"]


def test_the_record_is_append_only_in_the_store(day: TestClient) -> None:
    day.get("/fhir/Procedure")
    day.get("/api/v1/audit")
    engine = day.app.state.runtime.store.engine  # type: ignore[attr-defined]

    for statement in ("UPDATE audit_events SET outcome = 200", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one() > 0


def test_audit_events_follow_balp_and_pass_three_validators(
    day: TestClient, fhir_validator: FhirValidator
) -> None:
    observation = day.get("/fhir/Observation?_count=1").json()["entry"][0]["resource"]
    day.get(f"/fhir/Observation/{observation['id']}")
    day.get("/fhir/AdverseEvent", headers={"Authorization": "Bearer iat_wrong"})

    bundle = day.get("/api/v1/audit", params={"format": "fhir", "limit": 50}).json()
    events = [entry["resource"] for entry in bundle["entry"]]
    profiles = {p for e in events for p in e.get("meta", {}).get("profile", [])}

    assert bundle["resourceType"] == "Bundle"
    assert {e["action"] for e in events} >= {"C", "R", "E"}
    assert profiles >= {
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Read",
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query",
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create",
    }
    assert any(e["outcome"] == "4" for e in events)
    for event in events:
        parse(event)
        assert list(own_checks(event)) == []  # the BALP profiles included
        # The independent validator knows the R4 profiles only (the BALP package is not on the
        # package registries this project installs from): it checks the base resource.
        assert fhir_validator.problems({k: v for k, v in event.items() if k != "meta"}) == []


def test_an_audit_reader_needs_the_admin_role(client: TestClient) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    from tests.conftest import grant

    sign_in(client, grant(runtime, role="intake"))

    assert client.get("/api/v1/audit").status_code == 403


def test_an_event_that_breaks_its_balp_profile_is_caught(day: TestClient) -> None:
    observation = day.get("/fhir/Observation?_count=1").json()["entry"][0]["resource"]
    day.get(f"/fhir/Observation/{observation['id']}")
    bundle = day.get("/api/v1/audit", params={"format": "fhir", "interaction": "read"}).json()
    event = bundle["entry"][0]["resource"]
    assert list(own_checks(event)) == []

    event["action"] = "E"
    event["agent"] = event["agent"][1:]

    problems = list(own_checks(event))
    assert any(p.startswith("action: BALP needs R") for p in problems)
    assert any(p.startswith("agent: BALP needs the client (110152)") for p in problems)
