"""Each mapping rule: statuses, units, outcomes, fasting, withdrawal, and the checks that refuse."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapter.fhir.validation import ACCEPTED_LIMIT, InvalidResource, ResourceValidator
from adapter.mapping.mapper import Mapper
from tests.conftest import ROOT, adverse_event, fasting, session, vitals
from tests.mapping.helpers import map_record, mapper, only


@pytest.fixture(scope="module")
def shipped() -> Mapper:
    return mapper(ROOT / "mappings")


PROCEDURE_STATUS = [
    ("scheduled", "preparation", None),
    ("checked_in", "preparation", None),
    ("in_progress", "in-progress", "in-progress"),
    ("completed", "completed", "completed"),
    ("stopped_early", "stopped", "stopped"),
    ("cancelled", "not-done", "not-done"),
    ("no_show", "not-done", "not-done"),
    ("entered_in_error", "entered-in-error", "entered-in-error"),
]


@pytest.mark.parametrize(("status", "procedure", "administration"), PROCEDURE_STATUS)
def test_each_session_status(
    shipped: Mapper, status: str, procedure: str, administration: str | None
) -> None:
    started = status in ("in_progress", "completed", "stopped_early", "entered_in_error")
    body = session(
        status=status,
        stop_reason="panic attack" if status == "stopped_early" else None,
        infusion_start="2026-11-20T09:05:00-05:00" if started else None,
        infusion_end="2026-11-20T13:05:00-05:00" if status != "in_progress" and started else None,
    )

    resources = map_record(shipped, body).resources

    assert only(resources, "Procedure")["status"] == procedure
    given = [r for r in resources if r["resourceType"] == "MedicationAdministration"]
    assert [r["status"] for r in given] == ([administration] if administration else [])
    if status == "stopped_early":
        assert only(resources, "Procedure")["statusReason"] == {"text": "panic attack"}


def test_rate_changes_are_periods_contained_in_the_one_infusion(shipped: Mapper) -> None:
    body = session(
        rate_changes=[
            {
                "at": "2026-11-20T09:50:00-05:00",
                "rate_mg_per_kg_per_hr": 0.35,
                "reason": "blood pressure rising",
            }
        ]
    )

    resources = map_record(shipped, body).resources

    given = [r for r in resources if r["resourceType"] == "MedicationAdministration"]
    assert len(given) == 1, "one infusion, one administration: no period counts as a dose"
    whole = given[0]
    assert whole["dosage"]["dose"]["value"] == 118
    assert "rateQuantity" not in whole["dosage"], "one rate would be false for the whole infusion"
    assert whole["dosage"]["text"] == (
        "starting at 0.5 mg/kg/h, 118 mg in total, dosed for 68.5 kg, rate changed to "
        "0.35 mg/kg/h from 2026-11-20 09:50 -05:00 (blood pressure rising)"
    )
    first, second = whole["contained"]
    assert first["resourceType"] == second["resourceType"] == "MedicationAdministration"
    assert first["effectivePeriod"] == {
        "start": "2026-11-20T09:05:00-05:00",
        "end": "2026-11-20T09:50:00-05:00",
    }
    assert first["dosage"]["rateQuantity"]["value"] == 0.5
    assert second["dosage"]["rateQuantity"] == {
        "value": 0.35,
        "unit": "mg/kg/h",
        "system": "http://unitsofmeasure.org",
        "code": "mg/kg/h",
    }
    assert second["note"] == [{"text": "Rate changed: blood pressure rising"}]
    assert first["partOf"] == second["partOf"] == [{"reference": "#"}]


def test_a_single_rate_stays_on_the_administration(shipped: Mapper) -> None:
    whole = only(map_record(shipped, session()).resources, "MedicationAdministration")

    assert whole["dosage"]["rateQuantity"]["value"] == 0.5
    assert "contained" not in whole


def test_fahrenheit_is_converted_to_celsius(shipped: Mapper) -> None:
    body = vitals(temperature={"value": 98.1, "unit": "F"})

    temperature = only(map_record(shipped, body).resources, "Observation", "/temperature")

    assert temperature["valueQuantity"] == {
        "value": 36.7,
        "unit": "C",
        "system": "http://unitsofmeasure.org",
        "code": "Cel",
    }


def test_the_site_may_keep_fahrenheit(mappings_dir: Path) -> None:
    site = mappings_dir / "site.yaml"
    site.write_text(site.read_text().replace("temperature_unit: Cel", 'temperature_unit: "[degF]"'))
    body = vitals(temperature={"value": 39.5, "unit": "C"})

    temperature = only(
        map_record(mapper(mappings_dir), body).resources, "Observation", "/temperature"
    )

    assert temperature["valueQuantity"]["code"] == "[degF]"
    assert temperature["valueQuantity"]["value"] == 103.1
    assert temperature["interpretation"][0]["coding"][0]["code"] == "HH"


def test_blood_pressure_is_a_panel_with_flags(shipped: Mapper) -> None:
    panel = only(
        map_record(shipped, vitals(systolic=182, diastolic=104)).resources,
        "Observation",
        "/blood_pressure",
    )

    assert panel["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in panel
    codes = [
        (
            c["code"]["coding"][0]["code"],
            c["valueQuantity"]["value"],
            c["interpretation"][0]["coding"][0]["code"],
        )
        for c in panel["component"]
    ]
    assert codes == [("8480-6", 182, "HH"), ("8462-4", 104, "H")]
    assert panel["meta"]["profile"] == [
        "http://hl7.org/fhir/StructureDefinition/vitalsigns",
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs",
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure",
    ]


def test_spo2_carries_both_loinc_codes_and_pain_is_a_survey(shipped: Mapper) -> None:
    resources = map_record(shipped, vitals(pain=6)).resources

    spo2 = only(resources, "Observation", "/spo2")
    pain = only(resources, "Observation", "/pain")
    assert [c["code"] for c in spo2["code"]["coding"]] == ["2708-6", "59408-5"]
    assert spo2["category"][0]["coding"][0]["code"] == "vital-signs"
    assert pain["category"][0]["coding"][0]["code"] == "survey"
    assert pain["valueQuantity"]["code"] == "{score}"
    assert "profile" not in pain["meta"]


def test_phase_and_status_of_a_vitals_set(shipped: Mapper) -> None:
    heart = only(
        map_record(shipped, vitals(phase="recovery", revision=2)).resources,
        "Observation",
        "/heart_rate",
    )

    # A later revision maps to `final`: the store marks `amended` only what changed.
    assert heart["status"] == "final"
    assert heart["extension"][0]["valueCode"] == "recovery"


def test_withdrawn_vitals_are_entered_in_error(shipped: Mapper) -> None:
    resources = map_record(shipped, vitals(revision=2, status="entered_in_error")).resources

    assert resources and {r["status"] for r in resources} == {"entered-in-error"}


OUTCOMES = [
    ("resolved", "resolved"),
    ("resolving", "recovering"),
    ("not_resolved", "ongoing"),
    ("resolved_with_sequelae", "resolvedWithSequelae"),
    ("fatal", "fatal"),
    ("unknown", "unknown"),
]


@pytest.mark.parametrize(("outcome", "fhir"), OUTCOMES)
def test_each_adverse_event_outcome(shipped: Mapper, outcome: str, fhir: str) -> None:
    event = only(map_record(shipped, adverse_event(outcome=outcome)).resources, "AdverseEvent")

    assert event["outcome"]["coding"][0]["code"] == fhir


def test_adverse_event_keeps_actions_medications_and_suspect(shipped: Mapper) -> None:
    resources = map_record(shipped, adverse_event()).resources

    event = only(resources, "AdverseEvent")
    given = only(resources, "MedicationAdministration", "/medication-1")
    assert event["actuality"] == "actual"
    assert event["event"]["coding"][0]["code"] == "422587007"
    assert event["seriousness"]["coding"][0]["code"] == "non-serious"
    assert event["severity"]["coding"][0]["code"] == "mild"
    assert event["suspectEntity"][0]["instance"]["reference"].startswith("Procedure/")
    assert event["recordedDate"] == "2026-11-20T21:00:00+00:00"
    urls = [e["url"].rsplit("/", 1)[1] for e in event["extension"]]
    assert urls == ["adverse-event-action", "adverse-event-treatment"]
    assert (
        event["extension"][1]["valueReference"]["reference"]
        == f"MedicationAdministration/{given['id']}"
    )
    assert given["dosage"]["dose"] == {
        "value": 4,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert given["medicationCodeableConcept"]["coding"][0]["code"] == "26225"
    assert given["supportingInformation"] == [{"reference": f"AdverseEvent/{event['id']}"}]


@pytest.mark.parametrize(
    ("last_meal", "minutes", "answer", "flagged"),
    [
        ("2026-11-19T21:30:00-05:00", 695, "Y", False),
        ("2026-11-20T01:05:00-05:00", 480, "Y", False),
        ("2026-11-20T04:50:00-05:00", 255, "N", True),
    ],
)
def test_fasting_over_at_and_under_the_minimum(
    shipped: Mapper, last_meal: str, minutes: int, answer: str, flagged: bool
) -> None:
    observation = only(
        map_record(shipped, fasting(last_solid_food_at=last_meal), session()).resources,
        "Observation",
    )

    assert observation["code"]["coding"][0]["code"] == "49541-6"
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == answer
    assert observation["component"][0]["valueQuantity"] == {
        "value": minutes,
        "unit": "min",
        "system": "http://unitsofmeasure.org",
        "code": "min",
    }
    assert ("interpretation" in observation) is flagged


def test_fasting_counts_to_the_scheduled_start_when_the_infusion_has_not_started(
    shipped: Mapper,
) -> None:
    scheduled = session(status="scheduled", infusion_start=None, infusion_end=None)

    observation = only(
        map_record(
            shipped, fasting(last_solid_food_at="2026-11-20T01:00:00-05:00"), scheduled
        ).resources,
        "Observation",
    )

    assert observation["component"][0]["valueQuantity"]["value"] == 480
    assert "to the scheduled start at 2026-11-20 09:00 -05:00" in observation["note"][0]["text"]


def test_fasting_waits_for_its_session(shipped: Mapper) -> None:
    built = map_record(shipped, fasting(last_solid_food_at="2026-11-20T01:00:00-05:00"))

    assert built.resources == []
    assert built.waiting_for and "SES-1" in built.waiting_for


def test_transport_keeps_mode_escort_and_driving(shipped: Mapper) -> None:
    body = {
        "record_type": "attestation",
        "id": "ATT-2",
        "revision": 1,
        "session_id": "SES-1",
        "patient": {"mrn": "900001"},
        "kind": "transport",
        "attested_at": "2026-11-20T08:41:00-05:00",
        "mode": "escort_rideshare",
        "escort": {"name": "Eva Novak", "relationship": "daughter"},
        "patient_will_not_drive": True,
    }

    observation = only(map_record(shipped, body).resources, "Observation")

    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "escort-rideshare"
    assert [c.get("valueString", c.get("valueBoolean")) for c in observation["component"]] == [
        "Eva Novak, daughter",
        True,
    ]


def test_an_unmapped_indication_or_site_goes_out_as_the_clinics_words(shipped: Mapper) -> None:
    built = map_record(shipped, session(indication="WHIPLASH", site="NECK"))

    procedure = only(built.resources, "Procedure")
    assert procedure["reasonCode"] == [{"text": "WHIPLASH"}]
    assert procedure["bodySite"] == [{"text": "NECK"}]
    assert built.missing == []
    assert [(m.table, m.field, m.code) for m in built.uncoded] == [
        ("codes/indications.yaml", "indication", "WHIPLASH"),
        ("codes/sites.yaml", "site", "NECK"),
    ]


def test_an_unmapped_session_drug_holds_the_session(shipped: Mapper) -> None:
    built = map_record(shipped, session(drug="ESKETAMINE"))

    assert built.resources == []
    assert [(m.table, m.field, m.code) for m in built.missing] == [
        ("codes/drugs.yaml", "drug", "ESKETAMINE")
    ]


def test_cpt_coding_is_added_when_the_site_enables_it(mappings_dir: Path) -> None:
    procedure_file = mappings_dir / "resources" / "procedure.yaml"
    procedure_file.write_text(procedure_file.read_text().replace("enabled: false", "enabled: true"))

    procedure = only(map_record(mapper(mappings_dir), session()).resources, "Procedure")

    assert [c["code"] for c in procedure["code"]["coding"]] == ["14152002", "96365"]


def test_a_resource_breaking_a_required_binding_is_refused() -> None:
    validator = ResourceValidator()
    procedure = {
        "resourceType": "Procedure",
        "id": "p1",
        "status": "bogus",
        "subject": {"reference": "Patient/1"},
    }

    with pytest.raises(InvalidResource, match="status: 'bogus' is not in the required value set"):
        validator.check(procedure)


@pytest.mark.parametrize(
    ("element", "bad", "message"),
    [
        ("effectiveDateTime", "2026-13-45T99:00:00", ""),
        ("id", "has spaces", ""),
        ("status", "final ", ""),
    ],
)
def test_the_fast_path_refuses_what_the_model_refuses(
    shipped: Mapper, element: str, bad: str, message: str
) -> None:
    validator = shipped.validator
    good = only(map_record(shipped, vitals()).resources, "Observation", "/heart_rate")
    validator.check(good)  # the shape is now known

    with pytest.raises(InvalidResource):
        validator.check({**good, element: bad})


def test_reference_to_a_wrong_target_type_is_refused(shipped: Mapper) -> None:
    good = only(map_record(shipped, vitals()).resources, "Observation", "/heart_rate")

    with pytest.raises(InvalidResource, match="partOf: 'Patient' is not an allowed target"):
        shipped.validator.check({**good, "partOf": [{"reference": "Patient/123"}]})


def test_a_unit_outside_ucum_is_refused(shipped: Mapper) -> None:
    good = only(map_record(shipped, vitals()).resources, "Observation", "/heart_rate")
    bad = {**good, "valueQuantity": {**good["valueQuantity"], "code": "beats per minute"}}

    with pytest.raises(InvalidResource, match="known UCUM code"):
        shipped.validator.check(bad)


def test_the_vital_signs_profile_needs_its_category(shipped: Mapper) -> None:
    good = only(map_record(shipped, vitals()).resources, "Observation", "/heart_rate")

    with pytest.raises(InvalidResource, match="vital-signs category"):
        shipped.validator.check({**good, "category": [{"text": "vitals"}]})


def test_what_the_validator_remembers_is_bounded_and_still_refuses_after_a_clear(
    shipped: Mapper,
) -> None:
    """A long-running service validates values seen once (ids, times): the set of values
    remembered as accepted is emptied at its limit rather than growing with every record."""
    validator = ResourceValidator()
    good = only(map_record(shipped, vitals()).resources, "Observation", "/heart_rate")
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    sizes = []
    for second in range(ACCEPTED_LIMIT // 2 + 100):  # two new values each: past the limit
        moment = (start + timedelta(seconds=second)).isoformat()
        validator.check({**good, "id": f"o{second}", "effectiveDateTime": moment})
        sizes.append(len(validator._accepted))

    assert max(sizes) <= ACCEPTED_LIMIT and sizes[-1] < sizes[-200]  # emptied once, refilled
    with pytest.raises(InvalidResource):
        validator.check({**good, "effectiveDateTime": "2026-13-45T99:00:00"})
