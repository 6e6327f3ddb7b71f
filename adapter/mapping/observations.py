"""vitals and attestation records -> Observations, each partOf the session's Procedure."""

from datetime import timedelta

from adapter.intake.records import FastingAttestation, InfusionSession, TransportAttestation, Vitals
from adapter.mapping.common import (
    Built,
    Json,
    Vocabulary,
    clock_text,
    duration_text,
    instant,
    whole_minutes,
)
from adapter.mapping.config import Measure
from adapter.mapping.session import procedure_reference

_QUANTITY_MEASURES = ("heart_rate", "spo2", "resp_rate", "etco2", "pain", "sedation_rass")


def observation_status(withdrawn: bool) -> str:
    """`final`, or `entered-in-error` for a withdrawn record. A later version that changes
    what a final one said becomes `amended` when it is stored (resources.amended): only what
    changed is marked so."""
    return "entered-in-error" if withdrawn else "final"


def vitals_to_observations(vocabulary: Vocabulary, vitals: Vitals) -> Built:
    """One Observation per measure present; blood pressure as a panel with two components."""
    built = Built()
    measures = vocabulary.mappings.observations.measures
    common = _common(vocabulary, vitals)
    for name in _QUANTITY_MEASURES:
        value = getattr(vitals, name)
        if value is not None:
            measure: Measure = getattr(measures, name)
            built.resources.append(
                _observation(
                    vocabulary, vitals, name, measure, common, _value(vocabulary, measure, value)
                )
            )
    if vitals.systolic is not None and vitals.diastolic is not None:
        panel = _observation(
            vocabulary, vitals, "blood_pressure", measures.blood_pressure, common, {}
        )
        panel["component"] = [
            _component(vocabulary, measures.systolic, vitals.systolic),
            _component(vocabulary, measures.diastolic, vitals.diastolic),
        ]
        built.resources.append(panel)
    if vitals.temperature is not None:
        measure = measures.temperature
        unit = vocabulary.mappings.site.temperature_unit
        value = vitals.temperature.value
        if vitals.temperature.unit == "F" and unit == "Cel":
            value = round((value - 32) * 5 / 9, 1)
        elif vitals.temperature.unit == "C" and unit == "[degF]":
            value = round(value * 9 / 5 + 32, 1)
        celsius = value if unit == "Cel" else (value - 32) * 5 / 9
        quantity: Json = {
            "valueQuantity": vocabulary.quantity(value, unit, "C" if unit == "Cel" else "F")
        }
        interpretation = vocabulary.interpretation(celsius, measure.interpretation)
        if interpretation:
            quantity["interpretation"] = interpretation
        built.resources.append(
            _observation(vocabulary, vitals, "temperature", measure, common, quantity)
        )
    return built


def _common(vocabulary: Vocabulary, vitals: Vitals) -> Json:
    common: Json = {
        "status": observation_status(vitals.withdrawn),
        "subject": vocabulary.patient(vitals.patient.mrn),
        "encounter": vocabulary.encounter(vitals.session_id),
        "effectiveDateTime": instant(vitals.taken_at),
        "partOf": [procedure_reference(vocabulary, vitals.session_id)],
    }
    if vitals.recorded_by:
        common["performer"] = [vocabulary.staff(vitals.recorded_by)]
    if vitals.device:
        common["device"] = {
            "type": "Device",
            "identifier": {"system": vocabulary.systems.devices, "value": vitals.device},
        }
    return common


def _value(vocabulary: Vocabulary, measure: Measure, value: float) -> Json:
    assert measure.unit, "every quantity measure has a unit (checked when the mapping loads)"
    body: Json = {
        "valueQuantity": vocabulary.quantity(value, measure.unit.code, measure.unit.display)
    }
    interpretation = vocabulary.interpretation(value, measure.interpretation)
    if interpretation:
        body["interpretation"] = interpretation
    return body


def _component(vocabulary: Vocabulary, measure: Measure, value: float) -> Json:
    return {"code": vocabulary.concept(measure), **_value(vocabulary, measure, value)}


def _observation(
    vocabulary: Vocabulary, vitals: Vitals, name: str, measure: Measure, common: Json, value: Json
) -> Json:
    observation = vocabulary.resource("Observation", "vitals", f"{vitals.id}/{name}")
    if measure.category == "vital-signs":
        profile = vocabulary.mappings.observations.vital_signs_profile
        observation["meta"] = {**observation["meta"], "profile": [profile]}
    observation["extension"] = [
        {"url": vocabulary.extension("infusion-phase"), "valueCode": vitals.phase}
    ]
    observation["status"] = common["status"]
    observation["category"] = vocabulary.category(measure.category)
    observation["code"] = vocabulary.concept(measure)
    observation["subject"] = common["subject"]
    observation["encounter"] = common["encounter"]
    observation["effectiveDateTime"] = common["effectiveDateTime"]
    observation["partOf"] = common["partOf"]
    if "performer" in common:
        observation["performer"] = common["performer"]
    if "valueQuantity" in value:
        observation["valueQuantity"] = value["valueQuantity"]
    if "interpretation" in value:
        observation["interpretation"] = value["interpretation"]
    if "device" in common:
        observation["device"] = common["device"]
    return observation


def fasting_to_observation(
    vocabulary: Vocabulary, attestation: FastingAttestation, session: InfusionSession | None
) -> Built:
    """Whether the fast met the site minimum, decided on the exact durations to the infusion
    start (or, before it starts, to the scheduled start), and the minutes fasted."""
    built = Built()
    if session is None:
        built.waiting_for = f"session {attestation.session_id}: fasting is counted to its start"
        return built
    mapping = vocabulary.mappings.observations.fasting
    rule = vocabulary.mappings.site.protocol.fasting_minimum_hours
    minimum = timedelta(minutes=round(rule.value * 60))
    start = session.infusion_start or session.scheduled_start
    counted_to = "the infusion start" if session.infusion_start else "the scheduled start"
    fasted = start - attestation.last_solid_food_at
    met = fasted >= minimum
    observation = _attestation(vocabulary, attestation, vocabulary.concept(mapping))
    observation["valueCodeableConcept"] = {
        "coding": [vocabulary.coding(mapping.answers.met if met else mapping.answers.not_met)]
    }
    said = (
        f"Fasted {duration_text(fasted)} from solid food (last at "
        f"{clock_text(attestation.last_solid_food_at)}) to {counted_to} at {clock_text(start)}"
    )
    if not met:
        observation["interpretation"] = [
            {
                "coding": [vocabulary.coding(mapping.below_minimum_interpretation)],
                "text": f"{said}: under the site minimum of {duration_text(minimum)}",
            }
        ]
    components = [
        {
            "code": vocabulary.concept(mapping.duration),
            "valueQuantity": vocabulary.quantity(whole_minutes(fasted), "min", "min"),
        }
    ]
    if attestation.last_clear_liquid_at is not None:
        liquid = start - attestation.last_clear_liquid_at
        components.append(
            {
                "code": vocabulary.concept(mapping.clear_liquid),
                "valueQuantity": vocabulary.quantity(whole_minutes(liquid), "min", "min"),
            }
        )
    observation["component"] = components
    observation["note"] = [{"text": f"{said}; the site minimum is {duration_text(minimum)}."}]
    built.resources.append(observation)
    built.used.append(f"site.yaml: protocol.fasting_minimum_hours {duration_text(minimum)}")
    return built


def transport_to_observation(vocabulary: Vocabulary, attestation: TransportAttestation) -> Built:
    """Transport home: the mode, the escort, and whether the patient will not drive; an
    unsafe answer (none arranged, or not confirming they will not drive) is flagged."""
    mapping = vocabulary.mappings.observations.transport
    observation = _attestation(vocabulary, attestation, vocabulary.concept(mapping))
    observation["valueCodeableConcept"] = {
        "coding": [vocabulary.coding(getattr(mapping.modes, attestation.mode))]
    }
    unsafe = [
        words
        for flagged, words in (
            (attestation.mode == "none_arranged", "no transport home arranged"),
            (attestation.patient_will_not_drive is not True, "the patient may drive"),
        )
        if flagged
    ]
    if unsafe:
        observation["interpretation"] = [
            {
                "coding": [vocabulary.coding(mapping.unsafe_interpretation)],
                "text": "Unsafe after sedation: " + " and ".join(unsafe),
            }
        ]
    components: list[Json] = []
    escort = attestation.escort
    if escort is not None:
        described = ", ".join(
            part for part in (escort.name, escort.relationship, escort.phone) if part
        )
        if described:
            components.append(
                {"code": vocabulary.concept(mapping.escort), "valueString": described}
            )
    if attestation.patient_will_not_drive is not None:
        components.append(
            {
                "code": vocabulary.concept(mapping.will_not_drive),
                "valueBoolean": attestation.patient_will_not_drive,
            }
        )
    if components:
        observation["component"] = components
    return Built(resources=[observation])


def _attestation(
    vocabulary: Vocabulary,
    attestation: FastingAttestation | TransportAttestation,
    code: Json,
) -> Json:
    observation = vocabulary.resource("Observation", "attestation", attestation.id)
    observation["status"] = observation_status(attestation.withdrawn)
    observation["category"] = vocabulary.category("survey")
    observation["code"] = code
    observation["subject"] = vocabulary.patient(attestation.patient.mrn)
    observation["encounter"] = vocabulary.encounter(attestation.session_id)
    observation["effectiveDateTime"] = instant(attestation.attested_at)
    verifier = attestation.verified_by or attestation.recorded_by
    if verifier:
        observation["performer"] = [vocabulary.staff(verifier)]
    observation["partOf"] = [procedure_reference(vocabulary, attestation.session_id)]
    return observation
