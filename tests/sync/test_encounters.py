"""Which visit the EHR's copies name (mappings/ehr.yaml `encounters`): the EHR's own Encounter
found by identifier, the adapter's, or none."""

from pathlib import Path
from typing import Any

import pytest

from adapter.errors import MappingFileError
from adapter.mapping.config import load_ehr_rules
from adapter.runtime import Runtime
from adapter.sync.engine import Sync, sync_once
from adapter.sync.reconcile import reconcile_once
from tests.conftest import EXAMPLE_DAY
from tests.sync.sandbox import SandboxEhr

VISITS = "urn:oid:1.2.840.114350.1.13.0.1.7.3.698084.8"
"""The system under which the test EHR files the clinic's session ids (an Epic-style OID)."""
SESSION_ID = "https://ketamine-clinic.example.org/fhir/sid/infusion-charting/infusion_session"


def _rules(mappings_dir: Path, encounters: str) -> None:
    path = mappings_dir / "ehr.yaml"
    text = path.read_text()
    assert "encounters: {use: auto}" in text
    path.write_text(text.replace("encounters: {use: auto}", f"encounters: {encounters}"))


def _load(runtime: Runtime) -> None:
    lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    runtime.intake.submit(list(enumerate(lines)))
    runtime.mapping.run()


def _visit(ehr: SandboxEhr, session_id: str, mrn: str) -> str:
    """The EHR's own Encounter for a session's visit, filed under its session id; its id."""
    patient = next(
        p for p in ehr.all("Patient") if any(i.get("value") == mrn for i in p.get("identifier", []))
    )
    ehr.control(
        "POST",
        "/seed",
        [
            {
                "resourceType": "Encounter",
                "status": "in-progress",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "identifier": [{"system": VISITS, "value": session_id}],
                "subject": {"reference": f"Patient/{patient['id']}"},
            }
        ],
    )
    return next(
        str(e["id"])
        for e in ehr.all("Encounter")
        if any(i.get("value") == session_id for i in e.get("identifier", []))
    )


def _procedure(ehr: SandboxEhr, session_id: str) -> dict[str, Any]:
    return next(
        p
        for p in ehr.all("Procedure")
        if any(i.get("value") == session_id for i in p.get("identifier", []))
    )


def _session_observations(ehr: SandboxEhr, procedure: dict[str, Any]) -> list[dict[str, Any]]:
    reference = f"Procedure/{procedure['id']}"
    return [
        o
        for o in ehr.all("Observation")
        if any(p.get("reference") == reference for p in o.get("partOf", []))
    ]


def test_the_ehrs_own_visit_is_named_and_ours_never_sent(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, mappings_dir: Path
) -> None:
    _rules(mappings_dir, f'{{use: ehr, identifier_system: "{VISITS}"}}')
    visit = _visit(ehr, "SES-2026-00412", "100234")
    _load(runtime)

    first = sync_once(sync, trigger="test")

    assert first.status == "completed", first.error
    # Only the EHR's own visit is there: the adapter sent none of its Encounters.
    assert [e["id"] for e in ehr.all("Encounter")] == [visit]
    procedure = _procedure(ehr, "SES-2026-00412")
    assert procedure["encounter"]["reference"] == f"Encounter/{visit}"
    observations = _session_observations(ehr, procedure)
    assert observations
    assert all(o["encounter"]["reference"] == f"Encounter/{visit}" for o in observations)
    # The other visit is not in the EHR yet: its resources went without, owed an update.
    other = _procedure(ehr, "SES-2026-00415")
    assert "encounter" not in other
    waiting = sync.outbox.counts()["waiting"]
    assert waiting > 0

    later = _visit(ehr, "SES-2026-00415", "100871")
    second = sync_once(sync, trigger="test")

    assert second.status == "completed", second.error
    assert _procedure(ehr, "SES-2026-00415")["encounter"]["reference"] == f"Encounter/{later}"
    assert sync.outbox.counts()["waiting"] < waiting
    copies = ehr.identifier_counts("Procedure")
    assert all(count == 1 for count in copies.values())
    report = reconcile_once(sync)
    assert report.counts["different"] == report.counts["missing"] == 0


def test_omit_names_no_visit_and_owes_nothing(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, mappings_dir: Path
) -> None:
    _rules(mappings_dir, "{use: omit}")
    _load(runtime)

    report = sync_once(sync, trigger="test")

    assert report.status == "completed", report.error
    assert ehr.all("Encounter") == []
    assert not any("encounter" in p for p in ehr.all("Procedure"))
    assert not any("encounter" in o for o in ehr.all("Observation"))
    assert sync.outbox.counts()["waiting"] == 0


def test_ehr_without_its_identifier_system_is_refused_by_name(mappings_dir: Path) -> None:
    _rules(mappings_dir, "{use: ehr}")

    with pytest.raises(MappingFileError) as refused:
        load_ehr_rules(mappings_dir)

    assert "identifier_system" in str(refused.value)
