"""adverse_event -> AdverseEvent, a MedicationAdministration for each medication given, and the
forms an EHR without AdverseEvent writes takes: a clinical note and a coded Observation.

A side effect is a safety fact: it never waits for a mapping row. A local code without a row
goes out as the clinic's words (a CodeableConcept with text alone) and is listed for IT; the
version with the coding follows when the row is added."""

import re
from datetime import datetime

from adapter.intake.records import AdverseEvent
from adapter.mapping.common import Built, Json, Vocabulary, clock_text, instant
from adapter.mapping.notes import note
from adapter.mapping.session import procedure_reference

RECORD_TYPE = "adverse_event"
WITHDRAWN_TEXT = "Entered in error: the clinic withdrew this record of a side effect"


def adverse_event_to_resources(
    vocabulary: Vocabulary, event: AdverseEvent, first_received_at: datetime
) -> Built:
    built = Built()
    codes = vocabulary.mappings.codes
    row = vocabulary.lookup("events", codes.events, "event", event.event, built)
    actions = [
        vocabulary.coded(
            vocabulary.lookup("actions", codes.actions, f"actions[{index}]", action, built),
            action,
        )
        for index, action in enumerate(event.actions)
    ]
    drugs = [
        vocabulary.lookup(
            "drugs", codes.drugs, f"medications_given[{index}].drug", given.drug, built
        )
        for index, given in enumerate(event.medications_given)
    ]
    routes = [
        vocabulary.lookup(
            "routes", codes.routes, f"medications_given[{index}].route", given.route, built
        )
        if given.route
        else None
        for index, given in enumerate(event.medications_given)
    ]
    concept = vocabulary.coded(row, event.event, event.description)
    # What the event is called in the clinic's table (the concept's text is the description).
    name = row.text if row else event.event
    resource = _adverse_event(vocabulary, event, first_received_at, concept, name, actions)
    built.resources.append(resource)
    observation_id = f"{event.id}/observation"
    for index, given in enumerate(event.medications_given):
        administration = vocabulary.resource(
            "MedicationAdministration", RECORD_TYPE, _given_id(event, index)
        )
        administration["status"] = "entered-in-error" if event.withdrawn else "completed"
        administration["medicationCodeableConcept"] = vocabulary.coded(
            drugs[index], given.drug, given.drug
        )
        administration["subject"] = resource["subject"]
        administration["context"] = vocabulary.encounter(event.session_id)
        administration["effectiveDateTime"] = instant(given.at or event.onset_at)
        administration["partOf"] = [procedure_reference(vocabulary, event.session_id)]
        # Given for the side effect: said in a standard element that every EHR keeps, the coded
        # event itself, besides the reference to the AdverseEvent (which not every EHR takes).
        administration["reasonCode"] = [concept]
        administration["supportingInformation"] = [{"reference": f"AdverseEvent/{resource['id']}"}]
        route = vocabulary.coded(routes[index], given.route) if given.route else None
        dose = _dose(vocabulary, given.dose)
        if dose is not None:
            dosage: Json = {"text": given.dose}
            if route:
                dosage["route"] = route
            administration["dosage"] = {**dosage, "dose": dose}
        elif given.dose or route:
            # A dosage needs a dose or a rate (mad-1); what cannot be read as one is kept as a note.
            said = ", ".join(
                part for part in (given.dose, route["text"] if route else None) if part
            )
            administration["note"] = [{"text": f"Given: {said}"}]
        built.resources.append(administration)
    built.resources.append(_observation(vocabulary, event, concept, observation_id))
    built.resources.append(
        note(
            vocabulary,
            RECORD_TYPE,
            f"{event.id}/note",
            subject=resource["subject"],
            recorded=first_received_at,
            author=resource.get("recorder"),
            description=f"Side effect during a ketamine infusion: {name}",
            text=_summary(event, name, actions),
            related=[
                {"reference": f"AdverseEvent/{resource['id']}"},
                procedure_reference(vocabulary, event.session_id),
            ],
            period=_period(event),
            encounter=vocabulary.encounter(event.session_id),
            withdrawn=event.withdrawn,
            withdrawn_text=f"{WITHDRAWN_TEXT} (it was: {name}).",
        )
    )
    return built


def _given_id(event: AdverseEvent, index: int) -> str:
    return f"{event.id}/medication-{index + 1}"


def _adverse_event(
    vocabulary: Vocabulary,
    event: AdverseEvent,
    first_received_at: datetime,
    concept: Json,
    name: str,
    actions: list[Json],
) -> Json:
    """The AdverseEvent; withdrawn, it keeps who, when and what it was, and says nothing a
    reader could take for a current event: no coded event, seriousness, severity or outcome."""
    mapping = vocabulary.mappings.adverse_event
    resource = vocabulary.resource("AdverseEvent", RECORD_TYPE, event.id)
    resource["identifier"] = resource["identifier"][0]  # 0..1 in R4
    if event.withdrawn:
        resource["meta"] = {
            **resource["meta"],
            "tag": [*resource["meta"]["tag"], vocabulary.withdrawn_tag],
        }
    extensions: list[Json] = []
    if event.withdrawn:
        extensions.append(
            {"url": mapping.withdrawn_status_extension, "valueCode": "entered-in-error"}
        )
    else:
        for action in actions:
            extensions.append(
                {
                    "url": vocabulary.extension("adverse-event-action"),
                    "valueCodeableConcept": action,
                }
            )
        for index in range(len(event.medications_given)):
            extensions.append(
                {
                    "url": vocabulary.extension("adverse-event-treatment"),
                    "valueReference": vocabulary.reference(
                        "MedicationAdministration", RECORD_TYPE, _given_id(event, index)
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
    if event.withdrawn:
        resource["event"] = {"text": f"{WITHDRAWN_TEXT} (it was: {name})."}
    else:
        resource["event"] = concept
    resource["subject"] = vocabulary.patient(event.patient.mrn)
    resource["encounter"] = vocabulary.encounter(event.session_id)
    resource["date"] = instant(event.onset_at)
    resource["recordedDate"] = instant(first_received_at)
    if event.recorded_by:
        resource["recorder"] = vocabulary.staff(event.recorded_by)
    if event.withdrawn:
        return resource
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
    return resource


def _observation(
    vocabulary: Vocabulary, event: AdverseEvent, concept: Json, observation_id: str
) -> Json:
    """The side effect as a coded Observation, for EHRs that file no AdverseEvent."""
    notes = vocabulary.mappings.notes
    observation = vocabulary.resource("Observation", RECORD_TYPE, observation_id)
    observation["status"] = "entered-in-error" if event.withdrawn else "final"
    observation["category"] = [{"coding": [vocabulary.coding(notes.side_effect_category)]}]
    observation["code"] = vocabulary.concept(notes.side_effect)
    observation["subject"] = vocabulary.patient(event.patient.mrn)
    observation["encounter"] = vocabulary.encounter(event.session_id)
    period = _period(event)
    if "end" in period:
        observation["effectivePeriod"] = period
    else:
        observation["effectiveDateTime"] = period["start"]
    if event.recorded_by:
        observation["performer"] = [vocabulary.staff(event.recorded_by)]
    observation["partOf"] = [procedure_reference(vocabulary, event.session_id)]
    observation["valueCodeableConcept"] = concept
    words = [
        f"Severity: {event.severity}" if event.severity else None,
        ("Serious" if event.serious else "Not serious") if event.serious is not None else None,
        f"Outcome: {event.outcome.replace('_', ' ')}" if event.outcome else None,
    ]
    said = "; ".join(word for word in words if word)
    if said:
        observation["note"] = [{"text": said}]
    return observation


def _period(event: AdverseEvent) -> Json:
    period = {"start": instant(event.onset_at)}
    if event.resolved_at:
        period["end"] = instant(event.resolved_at)
    return period


def _summary(event: AdverseEvent, name: str, actions: list[Json]) -> str:
    """The note's text: the side effect as a clinician reads it, every fact the record has."""
    lines = [f"Side effect during a ketamine infusion (session {event.session_id})"]
    lines.append(f"Event: {name}")
    if event.description:
        lines.append(f"Description: {event.description}")
    lines.append(f"Onset: {clock_text(event.onset_at)}")
    if event.resolved_at:
        lines.append(f"Resolved: {clock_text(event.resolved_at)}")
    if event.severity:
        lines.append(f"Severity: {event.severity}")
    if event.serious is not None:
        lines.append(f"Serious adverse event: {'yes' if event.serious else 'no'}")
    if actions:
        lines.append("Actions: " + "; ".join(action["text"] for action in actions))
    for given in event.medications_given:
        parts = [given.drug, given.dose, given.route]
        at = f" at {clock_text(given.at)}" if given.at else ""
        lines.append("Treatment: " + " ".join(part for part in parts if part) + at)
    if event.outcome:
        lines.append(f"Outcome: {event.outcome.replace('_', ' ')}")
    staff = event.recorded_by
    if staff:
        lines.append(
            "Recorded by: "
            + (staff.name or staff.staff_id)
            + (f" ({staff.role})" if staff.role else "")
        )
    return "\n".join(lines) + "\n"


_DOSE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(\S+)\s*$")


def _dose(vocabulary: Vocabulary, text: str | None) -> Json | None:
    """A dose written as `4 mg` (a unit the mapping knows) as a UCUM quantity; else None."""
    found = _DOSE.match(text or "")
    unit = found and vocabulary.mappings.adverse_event.dose_units.get(found.group(2))
    if not found or not unit:
        return None
    return vocabulary.quantity(float(found.group(1)), unit, unit)
