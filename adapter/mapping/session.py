"""infusion_session -> Procedure, the ketamine MedicationAdministration(s), pain and weight."""

from datetime import datetime

from adapter.intake.records import InfusionSession
from adapter.mapping.common import Built, Json, Vocabulary, instant, number

RECORD_TYPE = "infusion_session"


def procedure_reference(vocabulary: Vocabulary, session_id: str) -> Json:
    return vocabulary.reference("Procedure", RECORD_TYPE, session_id)


def session_to_resources(vocabulary: Vocabulary, session: InfusionSession) -> Built:
    built = Built()
    codes = vocabulary.mappings.codes
    indication = vocabulary.lookup(
        "indications", codes.indications, "indication", session.indication, built
    )
    drug = vocabulary.lookup("drugs", codes.drugs, "drug", session.drug, built)
    site = session.site and vocabulary.lookup("sites", codes.sites, "site", session.site, built)
    route = session.route and vocabulary.lookup(
        "routes", codes.routes, "route", session.route, built
    )
    if built.missing or indication is None or drug is None:
        return built
    procedure = _procedure(vocabulary, session)
    procedure["reasonCode"] = [vocabulary.concept(indication)]
    procedure["usedCode"] = [vocabulary.concept(drug)]
    if site:
        procedure["bodySite"] = [vocabulary.concept(site)]
    built.resources.append(procedure)
    administrations = _administrations(
        vocabulary,
        session,
        drug_concept=vocabulary.concept(drug),
        site=vocabulary.concept(site) if site else None,
        route=vocabulary.concept(route) if route else None,
    )
    built.resources += administrations
    built.resources += _observations(vocabulary, session)
    return built


def _procedure(vocabulary: Vocabulary, session: InfusionSession) -> Json:
    mapping = vocabulary.mappings.procedure
    procedure = vocabulary.resource("Procedure", RECORD_TYPE, session.id)
    extensions = _session_extensions(vocabulary, session)
    if extensions:
        procedure["extension"] = extensions
    procedure["status"] = getattr(mapping.status, session.status)
    reason = _status_reason(vocabulary, session)
    if reason:
        procedure["statusReason"] = {"text": reason}
    procedure["category"] = vocabulary.concept(mapping.category)
    code = vocabulary.concept(mapping.code)
    if mapping.cpt.enabled:
        code.setdefault("coding", []).append(vocabulary.coding(mapping.cpt.coding))
    procedure["code"] = code
    procedure["subject"] = vocabulary.patient(session.patient.mrn)
    period = _period(session.infusion_start, session.infusion_end)
    if period:
        procedure["performedPeriod"] = period
    if session.recorded_by:
        procedure["recorder"] = vocabulary.staff(session.recorded_by)
    performers = []
    if session.performer:
        performers.append(
            {
                "function": vocabulary.concept(mapping.performer_functions.nurse),
                "actor": vocabulary.staff(session.performer),
            }
        )
    if session.physician:
        performers.append(
            {
                "function": vocabulary.concept(mapping.performer_functions.physician),
                "actor": vocabulary.staff(session.physician),
            }
        )
    if performers:
        procedure["performer"] = performers
    if session.location:
        procedure["location"] = {"display": session.location}
    if session.notes:
        procedure["note"] = [{"text": session.notes}]
    return procedure


def _status_reason(vocabulary: Vocabulary, session: InfusionSession) -> str | None:
    if session.stop_reason:
        return session.stop_reason
    reasons = vocabulary.mappings.procedure.status_reasons
    return getattr(reasons, session.status, None)


def _period(start: datetime | None, end: datetime | None) -> Json | None:
    if start is None:
        return None
    period = {"start": instant(start)}
    if end is not None:
        period["end"] = instant(end)
    return period


def _session_extensions(vocabulary: Vocabulary, session: InfusionSession) -> list[Json]:
    extensions: list[Json] = []
    series: list[Json] = []
    if session.series_id:
        series.append(
            {
                "url": "series",
                "valueIdentifier": {
                    "system": vocabulary.systems.series,
                    "value": session.series_id,
                },
            }
        )
    if session.session_number:
        series.append({"url": "sessionNumber", "valuePositiveInt": session.session_number})
    if session.sessions_planned:
        series.append({"url": "sessionsPlanned", "valuePositiveInt": session.sessions_planned})
    if series:
        extensions.append({"url": vocabulary.extension("infusion-series"), "extension": series})
    timing = [{"url": "scheduledStart", "valueDateTime": instant(session.scheduled_start)}]
    if session.discharged_at:
        timing.append({"url": "dischargedAt", "valueDateTime": instant(session.discharged_at)})
    extensions.append({"url": vocabulary.extension("infusion-timing"), "extension": timing})
    return extensions


def _administrations(
    vocabulary: Vocabulary,
    session: InfusionSession,
    drug_concept: Json,
    site: Json | None,
    route: Json | None,
) -> list[Json]:
    """The ketamine given, as one MedicationAdministration, and one more per rate period."""
    status = getattr(vocabulary.mappings.procedure.medication_status, session.status)
    if status is None:
        return []
    whole = vocabulary.resource("MedicationAdministration", RECORD_TYPE, f"{session.id}/medication")
    whole["status"] = status
    reason = _status_reason(vocabulary, session)
    if reason and status in ("not-done", "stopped", "on-hold"):
        whole["statusReason"] = [{"text": reason}]
    whole["medicationCodeableConcept"] = drug_concept
    whole["subject"] = vocabulary.patient(session.patient.mrn)
    period = _period(session.infusion_start, session.infusion_end)
    if period:
        whole["effectivePeriod"] = period
    else:
        whole["effectiveDateTime"] = instant(session.scheduled_start)
    if session.performer:
        whole["performer"] = [{"actor": vocabulary.staff(session.performer)}]
    whole["partOf"] = [procedure_reference(vocabulary, session.id)]
    if session.dose and session.dose.weight_kg is not None:
        whole["supportingInformation"] = [
            vocabulary.reference("Observation", RECORD_TYPE, f"{session.id}/body-weight")
        ]
    dosage = _dosage(vocabulary, session, site, route)
    if "dose" in dosage or "rateQuantity" in dosage:
        whole["dosage"] = dosage
    elif dosage:
        # A dosage needs a dose or a rate (mad-1): without either, the rest is kept as a note.
        planned = [concept["text"] for key in ("route", "site") if (concept := dosage.get(key))]
        whole["note"] = [{"text": "Planned: " + ", ".join(planned)}]
    resources = [whole]
    if (
        session.rate_changes
        and session.infusion_start
        and session.dose
        and session.dose.rate_mg_per_kg_per_hr is not None
    ):
        resources += _rate_periods(vocabulary, session, whole, drug_concept, site, route)
    return resources


def _rate(vocabulary: Vocabulary, rate: float) -> Json:
    return vocabulary.quantity(rate, "mg/kg/h", "mg/kg/h")


def _dosage(
    vocabulary: Vocabulary, session: InfusionSession, site: Json | None, route: Json | None
) -> Json:
    dosage: Json = {}
    parts = []
    if site:
        dosage["site"] = site
    if route:
        dosage["route"] = route
    dose = session.dose
    if dose and dose.total_mg is not None:
        dosage["dose"] = vocabulary.quantity(dose.total_mg, "mg", "mg")
        parts.append(f"{number(dose.total_mg)} mg in total")
    if dose and dose.rate_mg_per_kg_per_hr is not None:
        dosage["rateQuantity"] = _rate(vocabulary, dose.rate_mg_per_kg_per_hr)
        parts.insert(0, f"starting at {number(dose.rate_mg_per_kg_per_hr)} mg/kg/h")
    if dose and dose.weight_kg is not None:
        parts.append(f"dosed for {number(dose.weight_kg)} kg")
    if parts:
        dosage["text"] = ", ".join(parts)
    return dosage


def _rate_periods(
    vocabulary: Vocabulary,
    session: InfusionSession,
    whole: Json,
    drug_concept: Json,
    site: Json | None,
    route: Json | None,
) -> list[Json]:
    assert (
        session.infusion_start and session.dose and session.dose.rate_mg_per_kg_per_hr is not None
    )
    changes = sorted(session.rate_changes, key=lambda change: change.at)
    starts: list[tuple[datetime, float, str | None]] = [
        (session.infusion_start, session.dose.rate_mg_per_kg_per_hr, None)
    ]
    starts += [(change.at, change.rate_mg_per_kg_per_hr, change.reason) for change in changes]
    periods = []
    for index, (start, rate, reason) in enumerate(starts, start=1):
        end = starts[index][0] if index < len(starts) else session.infusion_end
        period = vocabulary.resource(
            "MedicationAdministration", RECORD_TYPE, f"{session.id}/medication/rate-{index}"
        )
        last = index == len(starts)
        withdrawn = whole["status"] == "entered-in-error"
        period["status"] = whole["status"] if last or withdrawn else "completed"
        period["medicationCodeableConcept"] = drug_concept
        period["subject"] = whole["subject"]
        period["effectivePeriod"] = _period(start, end)
        if "performer" in whole:
            period["performer"] = whole["performer"]
        period["partOf"] = [{"reference": f"MedicationAdministration/{whole['id']}"}]
        if reason:
            period["note"] = [{"text": f"Rate changed: {reason}"}]
        dosage: Json = {}
        if site:
            dosage["site"] = site
        if route:
            dosage["route"] = route
        dosage["rateQuantity"] = _rate(vocabulary, rate)
        period["dosage"] = dosage
        periods.append(period)
    return periods


def _observations(vocabulary: Vocabulary, session: InfusionSession) -> list[Json]:
    """Pain before and after, and the weight used for dosing, each partOf the Procedure."""
    measures = vocabulary.mappings.observations.measures
    status = (
        "entered-in-error"
        if session.withdrawn
        else ("amended" if session.revision > 1 else "final")
    )
    observations = []
    moments = {
        "pain-before": (session.pain_before, session.infusion_start or session.scheduled_start),
        "pain-after": (
            session.pain_after,
            session.infusion_end or session.discharged_at or session.infusion_start,
        ),
    }
    for suffix, (score, moment) in moments.items():
        if score is None or moment is None:
            continue
        observation = vocabulary.resource("Observation", RECORD_TYPE, f"{session.id}/{suffix}")
        observation["status"] = status
        observation["category"] = vocabulary.category(measures.pain.category)
        observation["code"] = vocabulary.concept(measures.pain)
        observation["subject"] = vocabulary.patient(session.patient.mrn)
        observation["effectiveDateTime"] = instant(moment)
        observation["partOf"] = [procedure_reference(vocabulary, session.id)]
        assert measures.pain.unit
        observation["valueQuantity"] = vocabulary.quantity(
            score, measures.pain.unit.code, measures.pain.unit.display
        )
        observation["note"] = [
            {
                "text": "Reported before the infusion"
                if suffix == "pain-before"
                else "Reported after the infusion"
            }
        ]
        observations.append(observation)
    if session.dose and session.dose.weight_kg is not None:
        weight = measures.body_weight
        assert weight.unit
        observation = vocabulary.resource("Observation", RECORD_TYPE, f"{session.id}/body-weight")
        observation["meta"] = {
            **observation["meta"],
            "profile": [vocabulary.mappings.observations.vital_signs_profile],
        }
        observation["status"] = status
        observation["category"] = vocabulary.category(weight.category)
        observation["code"] = vocabulary.concept(weight)
        observation["subject"] = vocabulary.patient(session.patient.mrn)
        observation["effectiveDateTime"] = instant(
            session.infusion_start or session.scheduled_start
        )
        observation["partOf"] = [procedure_reference(vocabulary, session.id)]
        observation["valueQuantity"] = vocabulary.quantity(
            session.dose.weight_kg, weight.unit.code, weight.unit.display
        )
        observations.append(observation)
    return observations
