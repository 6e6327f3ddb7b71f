"""The EHR's copy made from the stored text says what the walk of the parsed resource says."""

from typing import Any

import orjson
import pytest

from adapter.mapping.config import ExtraCoding
from adapter.runtime import Runtime
from adapter.sync.outgoing import (
    DROP,
    EhrCopy,
    StoredText,
    ehr_copy,
    patient_mrn,
    text_copy,
)
from tests.sync.test_delivery import MRN_SYSTEM, load_example_day

Json = dict[str, Any]


def to_ehr(resource_type: str, target_id: str) -> str:
    return f"{resource_type}/ehr-{target_id}"


def by_urn(_: str, target_id: str) -> str:
    return f"urn:uuid:{target_id}"


def left_out(_: str, __: str) -> object:
    return DROP


def stored(**elements: Any) -> str:
    """A resource as the store writes it: type, id, then meta with its version and time."""
    meta = {
        "versionId": "3",
        "lastUpdated": "2026-11-20T10:00:00+00:00",
        **elements.pop("meta", {}),
    }
    resource = {"resourceType": "Observation", "id": "obs-1", "meta": meta, **elements}
    return orjson.dumps(resource).decode()


SUBJECT = {"type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": "100234"}}
PART_OF = [{"reference": "Procedure/proc-1"}]


def same_copy(content: str, patient: str | None, resolve: Any) -> EhrCopy:
    """The text copy, checked against the walk's copy of the same resource."""
    copy = text_copy(StoredText.of(content), patient, resolve, [])
    assert copy is not None
    walked = ehr_copy(orjson.loads(content), patient, resolve, [])
    assert copy.body() == walked.body()
    assert orjson.loads(copy.with_id("e-9")) == {**walked.body(), "id": "e-9"}
    return copy


def test_every_mapped_resource_of_the_example_day_is_copied_from_its_text(
    runtime: Runtime,
) -> None:
    load_example_day(runtime)
    resources = runtime.resources.all_current()
    assert {r.resource_type for r in resources} >= {
        "Procedure",
        "Observation",
        "AdverseEvent",
        "MedicationAdministration",
        "DetectedIssue",
        "DocumentReference",
        "Encounter",
        "CarePlan",
    }
    for resource in resources:
        if resource.resource_type == "Patient":
            continue  # never copied to the EHR, which has its own
        parsed = orjson.loads(resource.content)
        mrn = StoredText.of(resource.content).mrn(MRN_SYSTEM)
        assert mrn == patient_mrn(parsed, MRN_SYSTEM)
        patient = f"Patient/p-{mrn}" if mrn else None
        if "contained" in parsed:
            # Made by the walk: the contained rate periods are filed under the EHR's patient.
            assert text_copy(StoredText.of(resource.content), patient, to_ehr, []) is None
            walked = ehr_copy(parsed, patient, to_ehr, []).body()
            assert walked["subject"]["reference"] == patient
            assert {c["subject"]["reference"] for c in walked["contained"]} == {patient}
            continue
        for resolve in (to_ehr, by_urn):
            copy = same_copy(resource.content, patient, resolve)
            assert "id" not in copy.body()
            assert "versionId" not in copy.body().get("meta", {})


def test_references_are_swapped_and_the_patient_given_by_reference() -> None:
    content = stored(subject=SUBJECT, partOf=PART_OF, status="final")
    copy = same_copy(content, "Patient/p-1", to_ehr)
    assert copy.body()["partOf"] == [{"reference": "Procedure/ehr-proc-1"}]
    assert copy.body()["subject"] == {**SUBJECT, "reference": "Patient/p-1"}
    # A reference before the subject and one after it, the patient's put in between.
    both_sides = stored(partOf=PART_OF, subject=SUBJECT, focus=[{"reference": "Procedure/p-2"}])
    copy = same_copy(both_sides, "Patient/p-1", to_ehr)
    assert copy.body()["focus"] == [{"reference": "Procedure/ehr-p-2"}]
    assert "meta" not in copy.body()


def test_meta_with_only_the_stores_fields_goes_and_other_meta_stays() -> None:
    assert "meta" not in same_copy(stored(status="final"), None, to_ehr).body()
    tagged = stored(meta={"source": "clinic"}, status="final")
    assert same_copy(tagged, None, to_ehr).body()["meta"] == {"source": "clinic"}


def test_what_only_the_walk_can_copy_is_left_to_it() -> None:
    rule = ExtraCoding.model_validate(
        {
            "resource_type": "Observation",
            "match": {"system": "http://loinc.org", "code": "8867-4"},
            "add": {
                "system": "urn:site:flowsheet",
                "code": "HR",
                "display": "Heart rate",
                "source": "the site's flowsheet rows",
            },
        }
    )
    dropped = stored(subject=SUBJECT, partOf=PART_OF)
    contained = stored(contained=[{"resourceType": "Patient", "id": "p"}], subject=SUBJECT)
    local = stored(subject=SUBJECT, partOf=[{"reference": "#proc"}])
    named = stored(subject={**SUBJECT, "reference": "Patient/old"})
    foreign = orjson.dumps({"resourceType": "Observation", "status": "final"}).decode()
    assert text_copy(StoredText.of(dropped), None, left_out, []) is None
    assert text_copy(StoredText.of(stored(subject=SUBJECT)), None, to_ehr, [rule]) is None
    assert text_copy(StoredText.of(contained), None, to_ehr, []) is None
    assert text_copy(StoredText.of(local), None, to_ehr, []) is None
    assert text_copy(StoredText.of(named), "Patient/p-1", to_ehr, []) is None
    assert text_copy(StoredText.of(foreign), None, to_ehr, []) is None
    walked = ehr_copy(orjson.loads(named), "Patient/p-1", to_ehr, []).body()
    assert walked["subject"]["reference"] == "Patient/p-1"
    assert ehr_copy(orjson.loads(foreign), None, to_ehr, []).body() == orjson.loads(foreign)


@pytest.mark.parametrize(
    "subject",
    [
        SUBJECT,
        {"type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": 'a"b'}},
        {"type": "Patient", "identifier": {"system": "urn:other", "value": "1"}},
        {"type": "Group", "identifier": {"system": MRN_SYSTEM, "value": "1"}},
        {"type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": ""}},
        None,
    ],
)
def test_the_mrn_read_from_the_text_is_the_one_the_parsed_resource_gives(
    subject: Json | None,
) -> None:
    content = stored(subject=subject) if subject is not None else stored(status="final")
    assert StoredText.of(content).mrn(MRN_SYSTEM) == patient_mrn(orjson.loads(content), MRN_SYSTEM)
