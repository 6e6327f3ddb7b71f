"""Clinical truth through the store, on SQLite and PostgreSQL: every meaningful change is a new
version, only what changed is amended, and the protocol's breaches follow the records."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.fhir.indexing import index
from adapter.runtime import Runtime
from tests.conftest import adverse_event, fasting, ndjson, session, transport, vitals

NDJSON = {"content-type": "application/x-ndjson"}


def _submit(runtime: Runtime, *bodies: dict[str, Any]) -> None:
    runtime.intake.submit([(n, ndjson(body).strip()) for n, body in enumerate(bodies)])
    runtime.mapping.run()


def _by_identifier(runtime: Runtime, source_type: str, source_id: str) -> dict[str, Any]:
    found = {}
    for stored in runtime.resources.for_source(source_type, source_id):
        resource = orjson.loads(stored.content)
        identifier = resource["identifier"]
        identifier = identifier[0] if isinstance(identifier, list) else identifier
        found[identifier["value"]] = resource
    return found


def test_withdrawing_a_mapped_adverse_event_makes_a_new_version(runtime: Runtime) -> None:
    _submit(runtime, adverse_event())

    runtime.intake.submit([(0, ndjson(adverse_event(revision=2, status="entered_in_error")))])
    report = runtime.mapping.run()

    event = _by_identifier(runtime, "adverse_event", "AE-1")["AE-1"]
    # The event, its rescue administration, note and Observation: none left as it was.
    assert report.resources.updated == 4
    assert event["meta"]["versionId"] == "2"
    assert "entered-in-error" in [tag["code"] for tag in event["meta"]["tag"]]
    others = _by_identifier(runtime, "adverse_event", "AE-1")
    assert {r["status"] for key, r in others.items() if key != "AE-1"} == {"entered-in-error"}


def test_only_the_measure_that_changed_is_amended(runtime: Runtime) -> None:
    _submit(runtime, vitals())

    _submit(runtime, vitals(revision=2, heart_rate=90))

    resources = _by_identifier(runtime, "vitals", "VIT-1")
    heart, spo2 = resources["VIT-1/heart_rate"], resources["VIT-1/spo2"]
    panel = resources["VIT-1/blood_pressure"]
    assert (heart["status"], heart["meta"]["versionId"]) == ("amended", "2")
    assert (spo2["status"], spo2["meta"]["versionId"]) == ("final", "1")
    assert (panel["status"], panel["meta"]["versionId"]) == ("final", "1")


def test_an_amended_measure_mapped_again_stays_as_it_is(runtime: Runtime) -> None:
    _submit(runtime, vitals())
    _submit(runtime, vitals(revision=2, heart_rate=90))
    with runtime.mapping.queue.engine.begin() as connection:
        runtime.mapping.queue.requeue(connection, ["mapped"])

    report = runtime.mapping.run()

    heart = _by_identifier(runtime, "vitals", "VIT-1")["VIT-1/heart_rate"]
    assert report.resources.created == report.resources.updated == 0
    assert (heart["status"], heart["meta"]["versionId"]) == ("amended", "2")


def test_a_fast_is_counted_again_when_the_infusion_starts(runtime: Runtime) -> None:
    planned = session(status="checked_in", infusion_start=None, infusion_end=None)
    _submit(runtime, planned, fasting(last_solid_food_at="2026-11-20T01:10:00-05:00"))
    before = _by_identifier(runtime, "attestation", "ATT-1")["ATT-1"]

    _submit(
        runtime,
        session(
            revision=2,
            status="in_progress",
            infusion_end=None,
            infusion_start="2026-11-20T09:30:00-05:00",
        ),
    )

    after = _by_identifier(runtime, "attestation", "ATT-1")["ATT-1"]
    assert before["valueCodeableConcept"]["coding"][0]["code"] == "N"
    assert before["component"][0]["valueQuantity"]["value"] == 470
    assert after["valueCodeableConcept"]["coding"][0]["code"] == "Y"
    assert after["component"][0]["valueQuantity"]["value"] == 500
    assert (after["meta"]["versionId"], after["status"]) == ("2", "amended")


def _issues(runtime: Runtime, session_id: str) -> dict[str, dict[str, Any]]:
    return {
        key.split("/", 1)[1]: resource
        for key, resource in _by_identifier(runtime, "protocol", session_id).items()
        if resource["resourceType"] == "DetectedIssue"
    }


def test_a_breach_is_withdrawn_when_the_record_that_ends_it_arrives(runtime: Runtime) -> None:
    _submit(runtime, session(), fasting())
    raised = _issues(runtime, "SES-1")["transport-unattested"]

    _submit(runtime, transport())

    withdrawn = _issues(runtime, "SES-1")["transport-unattested"]
    assert raised["status"] == "final"
    assert (withdrawn["status"], withdrawn["meta"]["versionId"]) == ("entered-in-error", "2")


def test_a_breach_changes_when_its_figures_change(runtime: Runtime) -> None:
    _submit(runtime, session(), fasting(last_solid_food_at="2026-11-20T03:00:00-05:00"))
    first = _issues(runtime, "SES-1")["fasting-short"]

    _submit(runtime, fasting(revision=2, last_solid_food_at="2026-11-20T02:00:00-05:00"))

    second = _issues(runtime, "SES-1")["fasting-short"]
    assert "Fasted 6 h 5 min" in first["detail"]
    assert "Fasted 7 h 5 min" in second["detail"]
    assert (second["status"], second["meta"]["versionId"]) == ("amended", "2")


def test_series_breaches_follow_every_session_of_the_series(runtime: Runtime) -> None:
    _submit(
        runtime,
        session(series_id="SER-1", session_number=2),
        session(
            id="SES-2",
            series_id="SER-1",
            session_number=2,
            scheduled_start="2026-11-21T09:00:00-05:00",
        ),
    )
    assert "series-number-repeated" in _issues(runtime, "SES-1")
    assert "series-number-repeated" in _issues(runtime, "SES-2")

    # SES-2 moves to another series: SES-1's breach, which named it, is withdrawn too.
    _submit(
        runtime,
        session(
            id="SES-2",
            revision=2,
            series_id="SER-9",
            session_number=2,
            scheduled_start="2026-11-21T09:00:00-05:00",
        ),
    )

    assert _issues(runtime, "SES-1")["series-number-repeated"]["status"] == "entered-in-error"
    assert _issues(runtime, "SES-2")["series-number-repeated"]["status"] == "entered-in-error"


def test_a_withdrawn_session_withdraws_its_breaches(runtime: Runtime) -> None:
    _submit(runtime, session(), fasting(last_solid_food_at="2026-11-20T04:00:00-05:00"))

    _submit(runtime, session(revision=2, status="entered_in_error"))

    assert {i["status"] for i in _issues(runtime, "SES-1").values()} == {"entered-in-error"}


def test_a_sessions_breaches_are_listed_with_its_record(client: TestClient) -> None:
    day = ndjson(session(), fasting(last_solid_food_at="2026-11-20T04:00:00-05:00"))
    client.post("/api/v1/records", content=day, headers=NDJSON)
    client.post("/api/v1/mapping/reload")

    body = client.get("/api/v1/records/infusion_session/SES-1").json()

    breaches = {b["code"]: b for b in body["protocol_breaches"]}
    fast = breaches["Fasted less than the site minimum before the infusion"]
    assert fast["severity"] == "high" and fast["status"] == "final"
    assert fast["detail"].startswith("Fasted 5 h 5 min from solid food")
    assert "No transport home attested" in breaches


def test_breaches_are_searchable_on_the_fhir_endpoint(client: TestClient) -> None:
    day = ndjson(session(), fasting(last_solid_food_at="2026-11-20T04:00:00-05:00"))
    client.post("/api/v1/records", content=day, headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    procedure = client.get("/fhir/Procedure").json()["entry"][0]["resource"]["id"]
    local = "https://ketamine-clinic.example.org/fhir/CodeSystem/infusion-adapter"

    by_patient = client.get(
        "/fhir/DetectedIssue",
        params={"patient:identifier": "https://ketamine-clinic.example.org/fhir/sid/mrn|900001"},
    ).json()
    by_code = client.get(
        "/fhir/DetectedIssue", params={"code": f"{local}|fasting-below-minimum"}
    ).json()
    by_date = client.get("/fhir/DetectedIssue", params={"identified": "2026-11-20"}).json()
    by_procedure = client.get(
        "/fhir/DetectedIssue", params={"implicated": f"Procedure/{procedure}"}
    ).json()
    revinclude = client.get(
        "/fhir/Procedure", params={"_id": procedure, "_revinclude": "DetectedIssue:implicated"}
    ).json()

    def count(bundle: dict[str, Any]) -> int:
        return len(bundle.get("entry", []))

    assert count(by_patient) == 3  # the fast, the ride home and the dose total
    assert count(by_code) == 1
    assert count(by_date) == 3
    assert count(by_procedure) == 3
    assert {e["resource"]["resourceType"] for e in revinclude["entry"]} == {
        "Procedure",
        "DetectedIssue",
    }


def test_a_record_moved_to_another_session_leaves_its_old_session_checked_again(
    runtime: Runtime,
) -> None:
    _submit(runtime, session(), session(id="SES-2"), fasting())
    assert "fasting-unattested" not in _issues(runtime, "SES-1")

    _submit(runtime, fasting(revision=2, session_id="SES-2"))

    assert _issues(runtime, "SES-1")["fasting-unattested"]["status"] == "final"
    assert _issues(runtime, "SES-2")["fasting-unattested"]["status"] == "entered-in-error"


@pytest.mark.parametrize(
    ("moment", "edge"),
    [("0001-01-01T00:00:00+01:00", datetime.min), ("9999-12-31T23:00:00-05:00", datetime.max)],
)
def test_a_moment_at_the_edge_of_the_calendar_is_indexed_as_that_edge(
    moment: str, edge: datetime
) -> None:
    """Intake refuses a year before 1900, but a resource stored before that rule may hold one:
    its index takes the calendar's edge rather than failing the mapping batch it is in."""
    found = index({"resourceType": "Encounter", "status": "planned", "period": {"start": moment}})

    assert found.date_start == edge.replace(tzinfo=UTC)
