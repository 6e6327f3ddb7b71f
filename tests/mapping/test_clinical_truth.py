"""What a clinician reads must be true: fasts decided on exact durations, side effects never
held back, unsafe rides flagged, one infusion one dose, indications no more specific than said."""

import base64
from typing import Any

import pytest

from adapter.mapping.mapper import Mapper
from tests.conftest import ROOT, adverse_event, fasting, session, transport
from tests.mapping.helpers import map_record, mapper, only


@pytest.fixture(scope="module")
def shipped() -> Mapper:
    return mapper(ROOT / "mappings")


def _fast(shipped: Mapper, last_meal: str, start: str) -> dict[str, Any]:
    return only(
        map_record(
            shipped, fasting(last_solid_food_at=last_meal), session(infusion_start=start)
        ).resources,
        "Observation",
    )


@pytest.mark.parametrize(
    ("last_meal", "start", "met", "minutes", "said"),
    [
        # The fast of the report: 7 h 59 min was shown as 8 h and met.
        ("2026-11-20T02:02:00-05:00", "2026-11-20T10:01:00-05:00", False, 479, "7 h 59 min"),
        ("2026-11-20T02:01:00-05:00", "2026-11-20T10:01:00-05:00", True, 480, "8 h"),
        # Seconds do not round a miss into a pass.
        ("2026-11-20T02:01:01-05:00", "2026-11-20T10:01:00-05:00", False, 479, "7 h 59 min"),
        ("2026-11-20T02:01:00-05:00", "2026-11-20T10:01:59-05:00", True, 480, "8 h"),
        ("2026-11-20T01:30:00-05:00", "2026-11-20T10:01:00-05:00", True, 511, "8 h 31 min"),
    ],
)
def test_a_fast_is_met_only_when_its_exact_duration_reaches_the_minimum(
    shipped: Mapper, last_meal: str, start: str, met: bool, minutes: int, said: str
) -> None:
    observation = _fast(shipped, last_meal, start)

    assert observation["valueCodeableConcept"]["coding"][0]["code"] == ("Y" if met else "N")
    assert ("interpretation" in observation) is not met
    assert observation["component"][0]["valueQuantity"]["value"] == minutes
    assert observation["note"][0]["text"].startswith(f"Fasted {said} from solid food")
    if not met:
        assert "under the site minimum of 8 h" in observation["interpretation"][0]["text"]


def test_a_fast_is_counted_to_the_real_start_once_the_infusion_starts(shipped: Mapper) -> None:
    meal = "2026-11-20T01:10:00-05:00"
    planned = session(status="checked_in", infusion_start=None, infusion_end=None)
    late = session(infusion_start="2026-11-20T09:30:00-05:00")

    before = only(
        map_record(shipped, fasting(last_solid_food_at=meal), planned).resources, "Observation"
    )
    after = only(
        map_record(shipped, fasting(last_solid_food_at=meal), late).resources, "Observation"
    )

    assert before["valueCodeableConcept"]["coding"][0]["code"] == "N"  # 7 h 50 min to 09:00
    assert "the scheduled start" in before["note"][0]["text"]
    assert after["valueCodeableConcept"]["coding"][0]["code"] == "Y"  # 8 h 20 min to 09:30
    assert "the infusion start at 2026-11-20 09:30 -05:00" in after["note"][0]["text"]


def test_a_serious_side_effect_goes_out_with_a_drug_that_has_no_row(shipped: Mapper) -> None:
    body = adverse_event(
        event="HYPERTENSION",
        description="BP 212/121, infusion stopped",
        severity="severe",
        serious=True,
        actions=["STOPPED", "MED_GIVEN", "TRANSFERRED"],
        medications_given=[
            {"drug": "labetalol", "dose": "10 mg", "route": "IV", "at": "2026-11-20T10:05:00-05:00"}
        ],
        outcome="not_resolved",
    )

    built = map_record(shipped, body)

    assert built.missing == []
    assert [(m.table, m.code) for m in built.uncoded] == [("codes/drugs.yaml", "labetalol")]
    event = only(built.resources, "AdverseEvent")
    assert event["seriousness"]["coding"][0]["code"] == "serious"
    given = only(built.resources, "MedicationAdministration")
    assert given["medicationCodeableConcept"] == {"text": "labetalol"}
    assert given["dosage"]["dose"]["value"] == 10


def test_a_side_effect_with_an_unknown_event_goes_out_as_text(shipped: Mapper) -> None:
    built = map_record(shipped, adverse_event(event="LARYNGOSPASM", description=None))

    assert only(built.resources, "AdverseEvent")["event"] == {"text": "LARYNGOSPASM"}
    assert [m.code for m in built.uncoded] == ["LARYNGOSPASM"]


def test_a_rescue_medication_says_what_it_was_given_for(shipped: Mapper) -> None:
    resources = map_record(shipped, adverse_event()).resources

    given = only(resources, "MedicationAdministration")
    assert given["reasonCode"][0]["coding"][0]["code"] == "422587007"  # nausea


def test_a_side_effect_also_becomes_a_note_and_a_coded_observation(shipped: Mapper) -> None:
    resources = map_record(shipped, adverse_event()).resources

    note = only(resources, "DocumentReference")
    observation = only(resources, "Observation", "/observation")
    text = base64.b64decode(note["content"][0]["attachment"]["data"]).decode()
    assert note["status"] == "current"
    assert note["type"]["coding"][0]["code"] == "28570-0"
    assert note["category"][0]["coding"][0]["code"] == "clinical-note"
    for fact in (
        "Event: Nausea",
        "Onset: 2026-11-20 13:20 -05:00",
        "Severity: mild",
        "Serious adverse event: no",
        "Actions: Medication given",
        "Treatment: Ondansetron 4 mg IV at 2026-11-20 13:22 -05:00",
        "Outcome: resolved",
    ):
        assert fact in text
    assert observation["code"]["coding"][0]["code"] == "75321-0"
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "422587007"


def test_a_withdrawn_side_effect_claims_no_current_event(shipped: Mapper) -> None:
    resources = map_record(shipped, adverse_event(revision=2, status="entered_in_error")).resources

    event = only(resources, "AdverseEvent")
    assert "coding" not in event["event"]
    assert event["event"]["text"].startswith("Entered in error")
    for element in ("seriousness", "severity", "outcome", "suspectEntity"):
        assert element not in event
    assert {
        "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.status",
        "valueCode": "entered-in-error",
    } in event["extension"]
    assert "entered-in-error" in [t["code"] for t in event["meta"]["tag"]]
    others = [r for r in resources if r["resourceType"] != "AdverseEvent"]
    assert others and {r["status"] for r in others} == {"entered-in-error"}


def _transport(shipped: Mapper, **fields: Any) -> dict[str, Any]:
    body = transport(**fields)
    return only(map_record(shipped, body).resources, "Observation")


def test_the_transport_question_does_not_assert_its_answer(shipped: Mapper) -> None:
    observation = _transport(shipped, mode="none_arranged")

    assert "arranged" not in observation["code"]["coding"][0]["display"]
    assert "arranged" not in observation["code"]["text"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"mode": "none_arranged"}, "no transport home arranged"),
        ({"patient_will_not_drive": False}, "the patient may drive"),
        (
            {"mode": "none_arranged", "patient_will_not_drive": False},
            "no transport home arranged and the patient may drive",
        ),
    ],
)
def test_an_unsafe_ride_home_is_flagged(
    shipped: Mapper, fields: dict[str, Any], reason: str
) -> None:
    observation = _transport(shipped, **fields)

    assert observation["interpretation"][0]["coding"][0]["code"] == "A"
    assert observation["interpretation"][0]["text"] == f"Unsafe after sedation: {reason}"


def test_a_safe_ride_home_is_not_flagged(shipped: Mapper) -> None:
    assert "interpretation" not in _transport(shipped)


def test_a_total_that_disagrees_with_the_rates_is_said_and_kept(shipped: Mapper) -> None:
    # 0.5 mg/kg/h x 68.5 kg for 4 h is 137 mg; the clinic recorded 118 mg.
    whole = only(map_record(shipped, session()).resources, "MedicationAdministration")

    assert whole["dosage"]["dose"]["value"] == 118
    assert "recorded total dose of 118 mg differs from the 137.0 mg" in whole["note"][-1]["text"]


def test_a_total_within_the_tolerance_is_not_questioned(shipped: Mapper) -> None:
    body = session(dose={"weight_kg": 68.5, "rate_mg_per_kg_per_hr": 0.5, "total_mg": 130.0})

    assert "note" not in only(map_record(shipped, body).resources, "MedicationAdministration")


INDICATIONS = [
    ("CRPS_UPPER", [("http://snomed.info/sct", "712537009")]),
    ("CRPS_LOWER", [("http://snomed.info/sct", "734986006")]),
    (
        "RSD",
        [("http://hl7.org/fhir/sid/icd-10-cm", "G90.50"), ("http://snomed.info/sct", "128200000")],
    ),
    ("NEUROPATHY", [("http://snomed.info/sct", "247398009")]),
]


@pytest.mark.parametrize(("indication", "codes"), INDICATIONS)
def test_an_indication_is_coded_no_more_specifically_than_the_clinic_said(
    shipped: Mapper, indication: str, codes: list[tuple[str, str]]
) -> None:
    procedure = only(map_record(shipped, session(indication=indication)).resources, "Procedure")

    coded = [(c["system"], c["code"]) for c in procedure["reasonCode"][0]["coding"]]
    assert coded == codes
    displays = " ".join(c["display"] for c in procedure["reasonCode"][0]["coding"])
    if indication.startswith("CRPS"):
        assert " I" not in displays and "type" not in displays.lower()
    assert "olyneuropathy" not in displays
