"""Mapping through the store, on SQLite and PostgreSQL: versions, arrival order, held records."""

from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

import adapter.mapping.service as service_module
from adapter.runtime import Runtime
from tests.conftest import EXAMPLE_DAY, fasting, ndjson, session, vitals
from tests.mapping.helpers import example_day

NDJSON = {"content-type": "application/x-ndjson"}


def _submit(runtime: Runtime, *bodies: dict) -> None:  # type: ignore[type-arg]
    runtime.intake.submit([(n, ndjson(body).strip()) for n, body in enumerate(bodies)])


def _resources(runtime: Runtime, record_type: str, source_id: str) -> dict[str, dict]:  # type: ignore[type-arg]
    found = {}
    for stored in runtime.resources.for_source(record_type, source_id):
        resource = orjson.loads(stored.content)
        found[
            resource["identifier"][0]["value"]
            if isinstance(resource["identifier"], list)
            else resource["identifier"]["value"]
        ] = resource
    return found


def test_the_example_day_is_stored_once_and_remapping_changes_nothing(runtime: Runtime) -> None:
    _submit(runtime, *example_day())

    first = runtime.mapping.run()
    again = runtime.mapping.run()
    runtime.intake.submit(list(enumerate(EXAMPLE_DAY.read_bytes().splitlines())))
    third = runtime.mapping.run()

    assert (first.mapped, first.waiting, first.failed) == (19, 0, 0)
    # 76 from the records; a note and an Observation per side effect (6); 4 protocol breaches
    # of the day, each a DetectedIssue with its note (8); an Encounter per session, a CarePlan
    # per series and a Patient per MRN (3 each).
    assert first.resources.created == 99
    assert first.sessions_checked == 3
    assert again.records == 0 and third.records == 0
    assert len(runtime.resources.all_current()) == 99
    assert {r.version_id for r in runtime.resources.all_current()} == {1}


def test_stored_resources_carry_version_and_last_updated(runtime: Runtime) -> None:
    _submit(runtime, vitals())
    runtime.mapping.run()

    heart = _resources(runtime, "vitals", "VIT-1")["VIT-1/heart_rate"]

    assert heart["meta"]["versionId"] == "1"
    assert heart["meta"]["lastUpdated"].endswith("+00:00")
    assert heart["meta"]["tag"][0]["code"] == f"mapping-{runtime.mapping.version}"


def test_fasting_before_its_session_waits_and_is_mapped_when_it_arrives(runtime: Runtime) -> None:
    _submit(runtime, fasting())
    runtime.mapping.run()
    held = runtime.mapping.queue.held()

    _submit(runtime, session())
    runtime.mapping.run()

    assert [(h.source_id, h.state) for h in held] == [("ATT-1", "waiting")]
    assert "SES-1" in held[0].detail["waiting_for"]
    assert runtime.mapping.queue.held() == []
    observation = _resources(runtime, "attestation", "ATT-1")["ATT-1"]
    assert observation["component"][0]["valueQuantity"]["value"] == 695  # 11 h 35 min


def test_a_new_session_revision_remaps_its_fasting_attestation(runtime: Runtime) -> None:
    _submit(runtime, session(), fasting(last_solid_food_at="2026-11-20T01:05:00-05:00"))
    runtime.mapping.run()

    _submit(runtime, session(revision=2, infusion_start="2026-11-20T08:55:00-05:00"))
    runtime.mapping.run()

    observation = _resources(runtime, "attestation", "ATT-1")["ATT-1"]
    assert observation["meta"]["versionId"] == "2"
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "N"


def test_an_amendment_makes_new_versions_and_a_dropped_measure_is_withdrawn(
    runtime: Runtime,
) -> None:
    _submit(runtime, vitals())
    runtime.mapping.run()

    _submit(runtime, vitals(revision=2, heart_rate=90, spo2=None))
    report = runtime.mapping.run()

    resources = _resources(runtime, "vitals", "VIT-1")
    heart = resources["VIT-1/heart_rate"]
    assert (heart["meta"]["versionId"], heart["status"], heart["valueQuantity"]["value"]) == (
        "2",
        "amended",
        90,
    )
    assert (resources["VIT-1/spo2"]["meta"]["versionId"], resources["VIT-1/spo2"]["status"]) == (
        "2",
        "entered-in-error",
    )
    assert report.resources.withdrawn == 1
    history = runtime.resources.history(heart["id"])
    assert [h.version_id for h in history] == [1, 2]
    assert orjson.loads(history[0].content)["valueQuantity"]["value"] == 84


def test_a_withdrawn_record_withdraws_its_resources(runtime: Runtime) -> None:
    _submit(runtime, vitals())
    runtime.mapping.run()

    _submit(runtime, vitals(revision=2, status="entered_in_error"))
    runtime.mapping.run()

    statuses = {r["status"] for r in _resources(runtime, "vitals", "VIT-1").values()}
    assert statuses == {"entered-in-error"}


def test_an_unmapped_session_drug_is_held_then_released_by_a_mapping_change(
    client: TestClient, settings_mappings: Path
) -> None:
    client.post("/api/v1/records", content=ndjson(session(drug="ESKETAMINE")), headers=NDJSON)
    client.post("/api/v1/mapping/reload")

    held = client.get("/api/v1/mapping/pending").json()
    record = client.get("/api/v1/records/infusion_session/SES-1").json()

    assert held["records"][0]["missing"] == [
        {"table": "codes/drugs.yaml", "field": "drug", "code": "ESKETAMINE"}
    ]
    assert record["mapping"]["state"] == "waiting" and record["mapping"]["resources"] == []

    table = settings_mappings / "codes" / "drugs.yaml"
    table.write_text(
        table.read_text() + "  - local: ESKETAMINE\n    text: Esketamine\n    codings: []\n"
    )
    reloaded = client.post("/api/v1/mapping/reload").json()

    assert reloaded["changed"] is True and reloaded["mapped"] == 1
    assert client.get("/api/v1/mapping/pending").json()["count"] == 0
    record = client.get("/api/v1/records/infusion_session/SES-1").json()
    assert record["mapping"]["state"] == "mapped"
    assert {r["resourceType"] for r in record["mapping"]["resources"]} == {
        "Procedure",
        "MedicationAdministration",
        "Observation",
    }


def test_an_uncoded_indication_goes_out_and_gets_its_coding_when_the_row_comes(
    client: TestClient, settings_mappings: Path
) -> None:
    client.post("/api/v1/records", content=ndjson(session(indication="WHIPLASH")), headers=NDJSON)
    client.post("/api/v1/mapping/reload")

    record = client.get("/api/v1/records/infusion_session/SES-1").json()
    held = client.get("/api/v1/mapping/pending").json()
    procedure_id = next(
        r["id"] for r in record["mapping"]["resources"] if r["resourceType"] == "Procedure"
    )
    first = client.get(f"/fhir/Procedure/{procedure_id}").json()

    assert record["mapping"]["state"] == "uncoded"
    assert record["mapping"]["uncoded"] == [
        {"table": "codes/indications.yaml", "field": "indication", "code": "WHIPLASH"}
    ]
    assert held["records"][0]["uncoded"] == record["mapping"]["uncoded"]
    assert first["reasonCode"] == [{"text": "WHIPLASH"}]

    table = settings_mappings / "codes" / "indications.yaml"
    table.write_text(
        table.read_text()
        + "  - local: WHIPLASH\n    text: Whiplash injury\n    codings:\n"
        + "      - {system: http://snomed.info/sct, code: '39848009', display: Whiplash injury"
        + " to neck, source: 'https://browser.ihtsdotools.org/?conceptId1=39848009'}\n"
    )
    client.post("/api/v1/mapping/reload")

    later = client.get(f"/fhir/Procedure/{procedure_id}").json()
    assert later["meta"]["versionId"] == "2"
    assert later["reasonCode"][0]["coding"][0]["code"] == "39848009"
    assert client.get("/api/v1/mapping/pending").json()["count"] == 0


def test_a_mapping_change_makes_new_versions_only_where_the_output_changed(
    client: TestClient, settings_mappings: Path
) -> None:
    client.post("/api/v1/records", content=EXAMPLE_DAY.read_bytes(), headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    events = settings_mappings / "codes" / "events.yaml"
    events.write_text(events.read_text().replace("text: Nausea", "text: Nausea (post-infusion)"))

    reloaded = client.post("/api/v1/mapping/reload").json()

    assert reloaded["changed"] is True and reloaded["mapped"] == 19
    ae_2292 = client.get("/api/v1/records/adverse_event/AE-2292").json()["mapping"]["resources"]
    ae_2291 = client.get("/api/v1/records/adverse_event/AE-2291").json()["mapping"]["resources"]
    assert [r["versionId"] for r in ae_2291 if r["resourceType"] == "AdverseEvent"] == ["1"]
    assert [r["versionId"] for r in ae_2292 if r["resourceType"] == "AdverseEvent"] == ["2"]


def test_a_broken_mapping_on_reload_is_refused_and_the_old_one_kept(
    client: TestClient, settings_mappings: Path
) -> None:
    before = client.get("/api/v1/mapping/status").json()["version"]
    procedure = settings_mappings / "resources" / "procedure.yaml"
    procedure.write_text(
        procedure.read_text().replace("completed: completed", "completed: done", 1)
    )

    response = client.post("/api/v1/mapping/reload")

    assert response.status_code == 400
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "resources/procedure.yaml: status.completed: Input should be" in diagnostics
    assert client.get("/api/v1/mapping/status").json()["version"] == before


def test_unchanged_mapping_files_are_not_parsed_again(
    runtime: Runtime, settings_mappings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Path] = []
    real = service_module.load_group
    monkeypatch.setattr(
        service_module, "load_group", lambda folder: parsed.append(folder) or real(folder)
    )
    runtime.reload_mappings()
    assert runtime.reload_mappings() is False
    assert len(parsed) == 1  # the second look found the files as they were

    procedure = settings_mappings / "resources" / "procedure.yaml"
    procedure.write_text(procedure.read_text() + "\n# edited\n")
    runtime.reload_mappings()
    assert len(parsed) == 2
