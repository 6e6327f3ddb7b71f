"""adverse_event -> AdverseEvent, and a MedicationAdministration for each medication given."""

import re
from datetime import datetime

from adapter.intake.records import AdverseEvent
from adapter.mapping.common import Built, Json, Vocabulary, instant
from adapter.mapping.session import procedure_reference

RECORD_TYPE = "adverse_event"


def adverse_event_to_resources(
    vocabulary: Vocabulary, event: AdverseEvent, first_received_at: datetime
) -> Built:
    built = Built()
    codes = vocabulary.mappings.codes
    row = vocabulary.lookup("events", codes.events, "event", event.event, built)
    actions = [
        vocabulary.lookup("actions", codes.actions, f"actions[{index}]", action, built)
        for index, action in enumerate(event.actions)
    ]
    drugs = [
        vocabulary.lookup(
            "drugs", codes.drugs, f"medications_given[{index}].drug", given.drug, built
        )
        for index, given in enumerate(event.medications_given)
    ]
    routes = [
        given.route
        and vocabulary.lookup(
            "routes", codes.routes, f"medications_given[{index}].route", given.route, built
        )
        for index, given in enumerate(event.medications_given)
    ]
    if built.missing or row is None:
        return built
    mapping = vocabulary.mappings.adverse_event
    resource = vocabulary.resource("AdverseEvent", RECORD_TYPE, event.id)
    resource["identifier"] = resource["identifier"][0]  # 0..1 in R4
    if event.withdrawn:
        resource["meta"] = {
            **resource["meta"],
            "tag": [*resource["meta"]["tag"], vocabulary.withdrawn_tag],
        }
    extensions: list[Json] = []
    for action in actions:
        assert action is not None
        extensions.append(
            {
                "url": vocabulary.extension("adverse-event-action"),
                "valueCodeableConcept": vocabulary.concept(action),
            }
        )
    given_ids = []
    for index in range(len(event.medications_given)):
        given_id = f"{event.id}/medication-{index + 1}"
        given_ids.append(given_id)
        extensions.append(
            {
                "url": vocabulary.extension("adverse-event-treatment"),
                "valueReference": vocabulary.reference(
                    "MedicationAdministration", RECORD_TYPE, given_id
                ),
            }
        )
    if event.resolved_at:
        extensions.append(
            {
                "url": vocabulary.extension("adverse-event-resolved"),
                "valueDateTime": instant(event.resolved_at),
            }
        )
    if extensions:
        resource["extension"] = extensions
    resource["actuality"] = "actual"
    resource["event"] = vocabulary.concept(row, text=event.description)
    resource["subject"] = vocabulary.patient(event.patient.mrn)
    resource["date"] = instant(event.onset_at)
    resource["recordedDate"] = instant(first_received_at)
    if event.recorded_by:
        resource["recorder"] = vocabulary.staff(event.recorded_by)
    if event.serious is not None:
        seriousness = (
            mapping.seriousness.serious if event.serious else mapping.seriousness.not_serious
        )
        resource["seriousness"] = {"coding": [vocabulary.coding(seriousness)]}
    if event.severity:
        resource["severity"] = {
            "coding": [vocabulary.coding(getattr(mapping.severity, event.severity))]
        }
    if event.outcome:
        outcome = getattr(mapping.outcome, event.outcome)
        resource["outcome"] = {"coding": [{"system": mapping.outcome_system, "code": outcome}]}
    resource["suspectEntity"] = [
        {
            "instance": procedure_reference(vocabulary, event.session_id),
            "causality": [{"productRelatedness": mapping.causality_text}],
        }
    ]
    built.resources.append(resource)
    for index, given in enumerate(event.medications_given):
        drug, route = drugs[index], routes[index]
        assert drug is not None
        administration = vocabulary.resource(
            "MedicationAdministration", RECORD_TYPE, given_ids[index]
        )
        administration["status"] = "entered-in-error" if event.withdrawn else "completed"
        administration["medicationCodeableConcept"] = vocabulary.concept(drug, text=given.drug)
        administration["subject"] = resource["subject"]
        administration["effectiveDateTime"] = instant(given.at or event.onset_at)
        administration["partOf"] = [procedure_reference(vocabulary, event.session_id)]
        administration["supportingInformation"] = [{"reference": f"AdverseEvent/{resource['id']}"}]
        dose = _dose(vocabulary, given.dose)
        if dose is not None:
            dosage: Json = {"text": given.dose}
            if route:
                dosage["route"] = vocabulary.concept(route)
            administration["dosage"] = {**dosage, "dose": dose}
        elif given.dose or route:
            # A dosage needs a dose or a rate (mad-1); what cannot be read as one is kept as a note.
            said = ", ".join(part for part in (given.dose, route.text if route else None) if part)
            administration["note"] = [{"text": f"Given: {said}"}]
        built.resources.append(administration)
    return built


_DOSE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(\S+)\s*$")


def _dose(vocabulary: Vocabulary, text: str | None) -> Json | None:
    """A dose written as `4 mg` (a unit the mapping knows) as a UCUM quantity; else None."""
    found = _DOSE.match(text or "")
    unit = found and vocabulary.mappings.adverse_event.dose_units.get(found.group(2))
    if not found or not unit:
        return None
    return vocabulary.quantity(float(found.group(1)), unit, unit)
