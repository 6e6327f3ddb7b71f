"""What the EHR refuses goes to dead letters with its OperationOutcome, holds nothing else up,
and is delivered after a replay once the cause is fixed; unsettled patients wait."""

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import Sync, sync_once
from tests.conftest import EXAMPLE_DAY, ndjson, session, vitals
from tests.sync.expected import expected_in_ehr
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import load_example_day, sync_with

DELIVERED_TYPES = (
    "Encounter",
    "CarePlan",
    "Procedure",
    "MedicationAdministration",
    "Observation",
    "AdverseEvent",
    "DetectedIssue",
)

SNOMED_HYPERTENSION = ("http://snomed.info/sct", "24184005")


def test_a_refused_resource_is_a_dead_letter_until_replayed_after_the_fix(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    system, code = SNOMED_HYPERTENSION
    ehr.control("PUT", "/reject", {"system": system, "code": code, "status": 422})
    load_example_day(runtime)

    report = sync_once(sync, trigger="test")

    dead = runtime.outbox.listed(("dead",), 100)
    assert [item.resource_type for item in dead] == ["AdverseEvent"]
    assert report.counts["dead"] == 1
    assert dead[0].detail is not None and dead[0].detail["status"] == 422
    assert dead[0].detail["outcome"]["resourceType"] == "OperationOutcome"
    delivered = runtime.outbox.counts()["delivered"]
    assert delivered == sum(expected_in_ehr(runtime).values()) - 1
    assert ehr.all("AdverseEvent") and len(ehr.all("AdverseEvent")) == 2

    ehr.control("DELETE", "/reject")
    assert sync_once(sync, trigger="test").counts.get("delivered", 0) == 0
    assert runtime.outbox.requeue(sync.clock(), ["dead"], [dead[0].resource_id]) == 1
    sync_once(sync, trigger="test")

    assert runtime.outbox.counts()["dead"] == 0
    assert len(ehr.all("AdverseEvent")) == 3


@pytest.mark.parametrize(("status", "batch"), [(422, 50), (403, 5)])
def test_a_bundle_entry_refused_leaves_no_reference_to_it_in_the_ehr(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, status: int, batch: int
) -> None:
    """The EHR refuses a session's Procedure, as unprocessable (422: the transaction holding it
    is refused, and its entries are sent one by one) or as a type the adapter may not write
    (403: the run sends no more Procedures). What referenced that Procedure by its urn:uuid in
    the Bundle waits for it; none reaches the EHR with a reference to nothing."""
    load_example_day(runtime)
    stored = [orjson.loads(r.content) for r in runtime.resources.all_current()]
    procedure = next(r for r in stored if r["resourceType"] == "Procedure")
    coding = procedure["code"]["coding"][0]
    rule = {"system": coding["system"], "code": coding["code"], "resourceType": "Procedure"}
    ehr.control("PUT", "/reject", {**rule, "status": status})

    sync_once(sync_with(runtime, settings, sync_batch_size=batch), trigger="test")

    held = orjson.dumps([r for kind in DELIVERED_TYPES for r in ehr.all(kind)]).decode()
    assert "urn:uuid:" not in held
    assert '"resourceType":"Encounter"' in held  # the rest was delivered
    waiting = runtime.outbox.listed(("waiting",), 1000)
    procedures = {r["id"] for r in stored if r["resourceType"] == "Procedure"}
    waits_for_one = [
        item
        for item in waiting
        if any(p in (item.detail or {}).get("reason", "") for p in procedures)
    ]
    assert waits_for_one, [item.detail for item in waiting][:5]


def test_a_patient_the_ehr_does_not_know_holds_only_that_patients_resources(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    runtime.intake.submit(
        [
            (1, ndjson(session(patient={"mrn": "555555"})).strip()),
            (2, ndjson(vitals(patient={"mrn": "555555"})).strip()),
        ]
    )
    load_example_day(runtime)

    sync_once(sync, trigger="test")

    waiting = runtime.outbox.listed(("waiting",), 100)
    assert waiting and all(
        item.detail and item.detail["reason"] == "no Patient in the EHR has this MRN"
        for item in waiting
    )
    assert {item.detail["patient_mrn"] for item in waiting if item.detail} == {"555555"}
    assert runtime.outbox.counts()["dead"] == 0

    ehr.add_patients(["555555"])
    sync_once(sync, trigger="test")

    assert runtime.outbox.counts()["waiting"] == 0


def test_a_patient_whose_birth_date_differs_is_not_guessed(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    record = session(patient={"mrn": "100234", "family": "Rivera", "birth_date": "1979-03-15"})
    runtime.intake.submit([(1, ndjson(record).strip())])
    runtime.mapping.run()

    sync_once(sync, trigger="test")

    waiting = runtime.outbox.listed(("waiting",), 10)
    assert "Procedure" in {item.resource_type for item in waiting}
    for item in waiting:
        assert item.detail and "different birth date" in item.detail["reason"]
        assert "1979" not in orjson.dumps(item.detail).decode()
    assert ehr.all("Procedure") == []


def test_an_ehr_that_demands_if_match_without_saying_so_is_learnt(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    ehr.configure(transactions=False)
    load_example_day(runtime)
    sync_once(sync, trigger="test")
    ehr.configure(requireIfMatch=True)
    line = next(
        orjson.loads(raw)
        for raw in EXAMPLE_DAY.read_bytes().splitlines()
        if raw.strip() and orjson.loads(raw)["record_type"] == "infusion_session"
    )
    line["revision"] += 1
    line["notes"] = "rate reduced at 40 minutes"
    runtime.intake.submit([(1, orjson.dumps(line))])
    runtime.mapping.run()

    report = sync_once(sync, trigger="test")

    assert report.status == "completed"
    assert runtime.outbox.counts()["dead"] == 0
    assert ehr.stats().get("PUT 428", 0) == 1


def test_dead_letters_and_runs_are_listed_and_replayed_through_the_api(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, client: TestClient
) -> None:
    system, code = SNOMED_HYPERTENSION
    ehr.control("PUT", "/reject", {"system": system, "code": code, "status": 422})
    load_example_day(runtime)
    sync_once(sync, trigger="test")

    dead = client.get("/api/v1/sync/dead-letters").json()
    runs = client.get("/api/v1/sync/runs").json()
    status = client.get("/api/v1/sync/status").json()

    assert dead["count"] == 1 and dead["items"][0]["status"] == 422
    assert dead["items"][0]["outcome"]["resourceType"] == "OperationOutcome"
    assert runs["runs"][0]["counts"]["dead"] == 1
    assert status["outbox"]["dead"] == 1 and status["ehr_configured"] is True
    ehr.control("DELETE", "/reject")
    replay = client.post("/api/v1/sync/replay", json={"all": True})
    assert replay.json() == {"queued": 1}
    run = client.post("/api/v1/sync/run")
    assert run.status_code == 200 and run.json()["counts"]["delivered"] == 1
    assert client.get("/api/v1/sync/dead-letters").json()["count"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": []},
        {"all": True, "states": ["delivered"]},
        {"ids": ["a\u0000b"]},  # PostgreSQL's text holds no NUL: it was a 500 there
        {"ids": ["../x"]},
    ],
)
def test_a_replay_without_a_target_is_refused(client: TestClient, body: dict[str, object]) -> None:
    answer = client.post("/api/v1/sync/replay", json=body)

    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("before", ["0", "9223372036854775808", "x"])
def test_a_runs_cursor_out_of_range_is_refused(client: TestClient, before: str) -> None:
    answer = client.get("/api/v1/sync/runs", params={"before": before})

    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"
