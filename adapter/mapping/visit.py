"""A session's visit -> Encounter: arrival, the infusion chair, recovery, discharge home."""

from datetime import datetime

from adapter.intake.records import TransportAttestation, Vitals
from adapter.mapping.common import Built, Json, Vocabulary, instant
from adapter.mapping.protocol import SessionFacts
from adapter.mapping.site import location_reference, organization_reference

SOURCE_TYPE = "encounter"
"""The source of a session's Encounter: (encounter, session id)."""
RECORD_TYPE = "infusion_session"
_RIDES = {
    "escort_private_vehicle": "driven home by an escort",
    "escort_rideshare": "by rideshare with an escort",
    "medical_transport": "by medical transport",
    "none_arranged": "no transport arranged",
}


def visit_to_encounter(vocabulary: Vocabulary, facts: SessionFacts) -> Built:
    """The Encounter of a session; withdrawn with it."""
    session = facts.session
    mapping = vocabulary.mappings.encounter
    built = Built()
    encounter = vocabulary.resource("Encounter", RECORD_TYPE, f"{session.id}/encounter")
    encounter["status"] = getattr(mapping.status, session.status)
    encounter["class"] = vocabulary.coding(mapping.class_)
    encounter["type"] = [vocabulary.concept(mapping.type)]
    encounter["subject"] = vocabulary.patient(session.patient.mrn)
    participants = []
    for staff, concept in (
        (session.performer, mapping.participant_types.nurse),
        (session.physician, mapping.participant_types.physician),
    ):
        if staff is not None:
            participants.append(
                {"type": [vocabulary.concept(concept)], "individual": vocabulary.staff(staff)}
            )
    if participants:
        encounter["participant"] = participants
    encounter["period"] = _period(facts)
    row = vocabulary.mappings.codes.indications.find(session.indication)
    encounter["reasonCode"] = [vocabulary.coded(row, session.indication)]
    if session.discharged_at is not None:
        encounter["hospitalization"] = {"dischargeDisposition": _disposition(vocabulary, facts)}
    locations = _locations(vocabulary, facts)
    if locations:
        encounter["location"] = locations
    provider = organization_reference(vocabulary)
    if provider is not None:
        encounter["serviceProvider"] = provider
    built.resources.append(encounter)
    return built


def _arrival(facts: SessionFacts) -> datetime | None:
    """The first moment the records place the patient on site: an attestation taken, baseline
    vitals, or the infusion start."""
    moments = [record.attested_at for record in facts.current() if hasattr(record, "attested_at")]
    moments += [
        v.taken_at for v in facts.current() if isinstance(v, Vitals) and v.phase == "baseline"
    ]
    if facts.session.infusion_start:
        moments.append(facts.session.infusion_start)
    return min(moments) if moments else None


def _period(facts: SessionFacts) -> Json:
    session = facts.session
    arrived = (
        _arrival(facts) if session.status not in ("scheduled", "cancelled", "no_show") else None
    )
    period = {"start": instant(arrived or session.scheduled_start)}
    if session.discharged_at is not None:
        period["end"] = instant(session.discharged_at)
    return period


def _locations(vocabulary: Vocabulary, facts: SessionFacts) -> list[Json]:
    """The infusion chair for the infusion, then recovery until discharge."""
    session = facts.session
    mapping = vocabulary.mappings.encounter
    if session.infusion_start is None:
        return []
    chair = mapping.infusion_location
    ended = session.infusion_end is not None
    chair_period = {"start": instant(session.infusion_start)}
    if session.infusion_end is not None:
        chair_period["end"] = instant(session.infusion_end)
    locations = [
        {
            "location": _place(vocabulary, session.location or chair.text),
            "status": "completed" if ended else "active",
            "physicalType": {
                "coding": [vocabulary.coding(chair.physical_type)],
                "text": chair.text,
            },
            "period": chair_period,
        }
    ]
    if session.infusion_end is not None:
        recovery = mapping.recovery_location
        recovery_period = {"start": instant(session.infusion_end)}
        if session.discharged_at is not None:
            recovery_period["end"] = instant(session.discharged_at)
        locations.append(
            {
                "location": _place(vocabulary, recovery.text),
                "status": "completed" if session.discharged_at else "active",
                "physicalType": {
                    "coding": [vocabulary.coding(recovery.physical_type)],
                    "text": recovery.text,
                },
                "period": recovery_period,
            }
        )
    return locations


def _place(vocabulary: Vocabulary, text: str) -> Json:
    """A place on the premises: the site's Location where it has one, else the text alone."""
    return location_reference(vocabulary, text) or {"display": text}


def _disposition(vocabulary: Vocabulary, facts: SessionFacts) -> Json:
    """Discharged home, and how: the latest transport attestation's ride and escort."""
    rides = [r for r in facts.current() if isinstance(r, TransportAttestation)]
    text = "Home"
    if rides:
        ride = max(rides, key=lambda r: r.attested_at)
        text += ", " + _RIDES[ride.mode]
        escort = ride.escort
        if escort is not None and escort.relationship and ride.mode != "none_arranged":
            text += f" ({escort.relationship})"
    return {
        "coding": [vocabulary.coding(vocabulary.mappings.encounter.discharged_home)],
        "text": text,
    }
