"""The clinic's patients: one Patient per MRN, from the demographics its records state."""

from collections.abc import Iterable
from dataclasses import dataclass

from adapter.intake.records import AnyRecord
from adapter.mapping.common import Json, Vocabulary

SOURCE_TYPE = "patient"
"""The source of a Patient: (patient, MRN)."""


@dataclass(frozen=True)
class Demographics:
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.family, self.given, self.birth_date)


def demographics(records: Iterable[AnyRecord]) -> Demographics:
    """What the records say of their patient, newest first: each field from the newest record
    that states it; a withdrawn record states nothing."""
    family = given = birth_date = None
    for record in records:
        if record.withdrawn:
            continue
        patient = record.patient
        family = family or patient.family
        given = given or patient.given
        birth_date = birth_date or (patient.birth_date.isoformat() if patient.birth_date else None)
        if family and given and birth_date:
            break
    return Demographics(family, given, birth_date)


def patient_id(vocabulary: Vocabulary, mrn: str) -> str:
    return vocabulary.id_of(vocabulary.systems.mrn, mrn)


def patient_to_resource(vocabulary: Vocabulary, mrn: str, facts: Demographics) -> Json:
    """The Patient of an MRN: the MRN as the EHR knows it, the name and birth date as the
    clinic recorded them, and what is not known said so (US Core needs a name and a gender)."""
    mapping = vocabulary.mappings.patient
    patient: Json = {
        "resourceType": "Patient",
        "id": patient_id(vocabulary, mrn),
        "meta": {**vocabulary.meta},
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [vocabulary.coding(mapping.mrn_type)]},
                "system": vocabulary.systems.mrn,
                "value": mrn,
            }
        ],
    }
    name: Json = {}
    if facts.family:
        name["family"] = facts.family
    if facts.given:
        name["given"] = [facts.given]
    if not name:
        name["extension"] = [
            {"url": mapping.data_absent_reason.url, "valueCode": mapping.data_absent_reason.code}
        ]
    patient["name"] = [name]
    patient["gender"] = mapping.gender_not_recorded
    if facts.birth_date:
        patient["birthDate"] = facts.birth_date
    return patient
