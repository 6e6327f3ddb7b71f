"""Clinical truth in the EHR: every side effect and protocol breach of a day arrives once in each
EHR profile, in a form it takes, and a record withdrawn after delivery stops looking current."""

from collections import Counter
from typing import Any

import orjson
import pytest

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import Sync, sync_once
from adapter.sync.reconcile import reconcile_once
from tests.conftest import ROOT, ndjson
from tests.sync.expected import expected_in_ehr
from tests.sync.sandbox import SandboxEhr, delivered_kinds

PROTOCOL_DAY = ROOT / "tests" / "fixtures" / "clinic-export" / "protocol-day.ndjson"
WITHDRAWN_STATUS = "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.status"
SIDE_EFFECTS = 3
BREACHES = 14
"""The day's side effects, and its protocol breaches (`mappings preview` of the file lists them)."""


def _load(runtime: Runtime, *bodies: dict[str, Any]) -> None:
    if bodies:
        runtime.intake.submit([(n, ndjson(body).strip()) for n, body in enumerate(bodies)])
    else:
        lines = [line for line in PROTOCOL_DAY.read_bytes().splitlines() if line.strip()]
        runtime.intake.submit(list(enumerate(lines, start=1)))
    runtime.mapping.run()


def _identifier(resource: dict[str, Any]) -> str:
    listed = resource["identifier"]
    return str((listed[0] if isinstance(listed, list) else listed)["value"])


def _by_identifier(ehr: SandboxEhr, resource_type: str) -> dict[str, dict[str, Any]]:
    return {_identifier(r): r for r in ehr.all(resource_type)}


def _skip_other_profiles_on_postgresql(settings: Settings, profile: str) -> None:
    if settings.database_url.startswith("postgresql") and profile != "generic":
        pytest.skip("the EHR profiles differ in the EHR, not in the store: PostgreSQL runs one")


@pytest.mark.parametrize("profile", ["generic", "epic", "oracle"])
def test_every_side_effect_and_breach_reaches_the_ehr_once(
    runtime: Runtime, settings: Settings, sync: Sync, ehr: SandboxEhr, profile: str
) -> None:
    _skip_other_profiles_on_postgresql(settings, profile)
    ehr.reset(profile)
    _load(runtime)

    report = sync_once(sync, trigger="test")

    assert report.status == "completed", report.error
    assert sync.outbox.counts()["dead"] == sync.outbox.counts()["waiting"] == 0
    for resource_type, count in expected_in_ehr(runtime, profile).items():
        copies = ehr.identifier_counts(resource_type)
        assert len(copies) == count and set(copies.values()) == {1}, resource_type
    notes = ehr.all("DocumentReference")
    findings = [o for o in ehr.all("Observation") if o["code"]["coding"][0]["code"] == "75321-0"]
    if profile == "epic":
        # No AdverseEvent or DetectedIssue writes: a note for each, and a coded Observation
        # for each side effect.
        assert not ehr.all("AdverseEvent") and not ehr.all("DetectedIssue")
        assert len(notes) == SIDE_EFFECTS + BREACHES
        assert len(findings) == SIDE_EFFECTS
    else:
        assert len(ehr.all("AdverseEvent")) == SIDE_EFFECTS
        assert len(ehr.all("DetectedIssue")) == BREACHES
        assert notes == [] and findings == []
    given = _by_identifier(ehr, "MedicationAdministration")["PD-AE-1/medication-1"]
    assert given["medicationCodeableConcept"] == {"text": "labetalol"}
    assert given["reasonCode"] == [
        {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "24184005",
                    "display": "Finding of increased blood pressure",
                }
            ],
            "text": "BP 212/121, infusion stopped, patient transferred",
        }
    ]


WITHDRAWALS = [
    {"record_type": "infusion_session", "id": "PD-SES-4"},
    {"record_type": "vitals", "id": "PD-VIT-2"},
    {"record_type": "adverse_event", "id": "PD-AE-2"},
    {"record_type": "attestation", "id": "PD-ATT-4"},
]
"""A record of each type withdrawn: the session takes its Procedure, its administration and
Observations and its breach with it; the side effect its rescue administration, note and
Observation; the unsafe ride home its two breaches (DetectedIssues and their notes)."""


def _withdraw(runtime: Runtime) -> None:
    day = [orjson.loads(line) for line in PROTOCOL_DAY.read_bytes().splitlines() if line]
    wanted = {(w["record_type"], w["id"]) for w in WITHDRAWALS}
    _load(
        runtime,
        *[
            {**body, "revision": body["revision"] + 1, "status": "entered_in_error"}
            for body in day
            if (body["record_type"], body["id"]) in wanted
        ],
    )


def _withdrawn_resources(runtime: Runtime) -> list[dict[str, Any]]:
    found = []
    for stored in runtime.resources.all_current():
        resource = orjson.loads(stored.content)
        tags = [t["code"] for t in resource.get("meta", {}).get("tag", [])]
        if resource.get("status") == "entered-in-error" or "entered-in-error" in tags:
            found.append(resource)
    return found


@pytest.mark.parametrize("profile", ["generic", "epic", "oracle"])
def test_a_record_of_each_type_withdrawn_after_delivery_stops_looking_current(
    runtime: Runtime, settings: Settings, sync: Sync, ehr: SandboxEhr, profile: str
) -> None:
    _skip_other_profiles_on_postgresql(settings, profile)
    ehr.reset(profile)
    _load(runtime)
    sync_once(sync, trigger="test")

    _withdraw(runtime)
    report = sync_once(sync, trigger="test")

    assert report.status == "completed", report.error
    withdrawn = _withdrawn_resources(runtime)
    delivered = delivered_kinds(profile)
    kinds = {resource["resourceType"] for resource in withdrawn}
    assert kinds >= {
        "Procedure",
        "MedicationAdministration",
        "Observation",
        "AdverseEvent",
        "DetectedIssue",
        "DocumentReference",
    }
    checked = Counter[str]()
    for resource in withdrawn:
        resource_type, identifier = resource["resourceType"], _identifier(resource)
        copies = _by_identifier(ehr, resource_type)
        if resource_type in ("AdverseEvent", "DetectedIssue") and not delivered(resource_type):
            assert identifier not in copies
            continue
        stand_in = identifier.endswith("/note") or identifier.endswith("/observation")
        if stand_in and identifier not in copies:
            continue  # a stand-in this EHR does not get
        copy = copies.get(identifier)
        if resource_type == "AdverseEvent" and profile == "generic":
            assert copy is None, "deleted where the EHR allows DELETE"
        elif resource_type == "AdverseEvent":
            assert copy is not None
            assert "coding" not in copy["event"] and "seriousness" not in copy
            assert copy["event"]["text"].startswith("Entered in error")
            assert {"url": WITHDRAWN_STATUS, "valueCode": "entered-in-error"} in copy["extension"]
        else:
            assert copy is not None, (resource_type, identifier)
            assert copy["status"] == "entered-in-error", (resource_type, identifier)
        checked[resource_type] += 1
    assert checked["Procedure"] == 1 and checked["Observation"] >= 5
    if profile == "epic":
        assert checked["DocumentReference"] >= 3  # the side effect's note, the breaches' notes

    reconciled = reconcile_once(sync)

    assert reconciled.counts["missing"] == reconciled.counts["different"] == 0, reconciled.counts


def test_reconciliation_deletes_again_a_withdrawn_side_effect_put_back_in_the_ehr(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    _load(runtime)
    sync_once(sync, trigger="test")
    kept = _by_identifier(ehr, "AdverseEvent")["PD-AE-2"]
    _withdraw(runtime)
    sync_once(sync, trigger="test")
    assert "PD-AE-2" not in _by_identifier(ehr, "AdverseEvent")
    # Someone restores the deleted event in the EHR.
    ehr.http.post(
        f"{ehr.base}/AdverseEvent",
        data=orjson.dumps({key: value for key, value in kept.items() if key not in ("id", "meta")}),
        headers={"content-type": "application/fhir+json"},
    ).raise_for_status()

    reconciled = reconcile_once(sync)
    sync_once(sync, trigger="test")

    assert reconciled.counts["different"] == 1
    assert "PD-AE-2" not in _by_identifier(ehr, "AdverseEvent")
