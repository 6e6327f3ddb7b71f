"""infusion_session -> Procedure, the ketamine MedicationAdministration(s), pain and weight."""

from datetime import datetime

from adapter.intake.records import InfusionSession
from adapter.mapping.common import Built, Json, Vocabulary, clock_text, instant, number
from adapter.mapping.protocol import dose_from_rates, dose_mismatch_text
from adapter.mapping.site import location_reference

RECORD_TYPE = "infusion_session"


def procedure_reference(vocabulary: Vocabulary, session_id: str) -> Json:
    return vocabulary.reference("Procedure", RECORD_TYPE, session_id)


def session_to_resources(vocabulary: Vocabulary, session: InfusionSession) -> Built:
    """The session's resources. Its `drug` is the one local code that holds a record: the
    session is the clinic's routine record of what it infused, and a MedicationAdministration
    whose drug the EHR cannot code escapes its medication list, allergy and interaction checks;
    the session's safety facts (vitals, side effects, attestations, breaches) travel in records
    of their own and do not wait for it. An unknown indication, site or route goes out as the
    clinic's words, listed for IT."""
    built = Built()
    codes = vocabulary.mappings.codes
    indication = vocabulary.lookup(
        "indications", codes.indications, "indication", session.indication, built
    )
    drug = vocabulary.lookup("drugs", codes.drugs, "drug", session.drug, built, holds=True)
    site = (
        vocabulary.lookup("sites", codes.sites, "site", session.site, built)
        if session.site
        else None
    )
    route = (
        vocabulary.lookup("routes", codes.routes, "route", session.route, built)
        if session.route
        else None
    )
    if built.missing or drug is None:
        return built
    procedure = _procedure(vocabulary, session)
    procedure["reasonCode"] = [vocabulary.coded(indication, session.indication)]
    procedure["usedCode"] = [vocabulary.concept(drug)]
    site_concept = vocabulary.coded(site, session.site) if session.site else None
    route_concept = vocabulary.coded(route, session.route) if session.route else None
    if site_concept:
        procedure["bodySite"] = [site_concept]
    built.resources.append(procedure)
    administrations = _administrations(
        vocabulary,
        session,
        drug_concept=vocabulary.concept(drug),
        site=site_concept,
        route=route_concept,
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
    procedure["encounter"] = vocabulary.encounter(session.id)
    if session.series_id:
        procedure["basedOn"] = [vocabulary.care_plan(session.series_id)]
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
    place = location_reference(vocabulary, session.location)
    if place is not None:
        procedure["location"] = place
    elif session.location:
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
    """What no standard element of the Procedure says: the scheduled start (R4's Encounter has
    no planned start), and the place in a series of a session that names no series (a session
    of a series is `basedOn` its CarePlan, whose activities say "session 3 of 5")."""
    extensions: list[Json] = []
    series: list[Json] = []
    if not session.series_id:
        if session.session_number:
            series.append({"url": "sessionNumber", "valuePositiveInt": session.session_number})
        if session.sessions_planned:
            series.append({"url": "sessionsPlanned", "valuePositiveInt": session.sessions_planned})
    if series:
        extensions.append({"url": vocabulary.extension("infusion-series"), "extension": series})
    timing = [{"url": "scheduledStart", "valueDateTime": instant(session.scheduled_start)}]
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
    whole["context"] = vocabulary.encounter(session.id)
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
    periods = (
        _rate_periods(vocabulary, session, whole, drug_concept, site, route)
        if session.rate_changes
        and session.infusion_start
        and session.dose
        and session.dose.rate_mg_per_kg_per_hr is not None
        else []
    )
    dosage = _dosage(vocabulary, session, site, route, rate_changes=bool(periods))
    if "dose" in dosage or "rateQuantity" in dosage:
        whole["dosage"] = dosage
    elif dosage:
        # A dosage needs a dose or a rate (mad-1): without either, the rest is kept as a note.
        said = dosage.get("text") or "Planned: " + ", ".join(
            concept["text"] for key in ("route", "site") if (concept := dosage.get(key))
        )
        whole["note"] = [{"text": said}]
    if periods:
        # One infusion is one administration, as a MAR keeps it (one administration, a line per
        # action: new bag, rate change, stopped). Each rate period is a MedicationAdministration
        # of its own, as FHIR asks of rate changes (MedicationAdministration.dosage.rate[x]),
        # contained in the infusion and `partOf` it, so that no consumer that counts
        # administrations counts a rate period as a dose.
        whole["contained"] = periods
    given = dose_from_rates(session)
    tolerance = vocabulary.mappings.site.protocol.dose_total_tolerance_percent.value
    total = session.dose.total_mg if session.dose else None
    if given is not None and total is not None and abs(given - total) > total * tolerance / 100:
        whole.setdefault("note", []).append({"text": dose_mismatch_text(session, given, tolerance)})
    return [whole]


def _rate(vocabulary: Vocabulary, rate: float) -> Json:
    return vocabulary.quantity(rate, "mg/kg/h", "mg/kg/h")


def _dosage(
    vocabulary: Vocabulary,
    session: InfusionSession,
    site: Json | None,
    route: Json | None,
    rate_changes: bool,
) -> Json:
    """The infusion's dosage: its total dose, and its rate unless the rate changed (a single
    rate for the whole infusion would say something false; FHIR does not use the rate for an
    average either). The text says the starting rate and every change."""
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
        if not rate_changes:
            dosage["rateQuantity"] = _rate(vocabulary, dose.rate_mg_per_kg_per_hr)
        parts.insert(0, f"starting at {number(dose.rate_mg_per_kg_per_hr)} mg/kg/h")
    if dose and dose.weight_kg is not None:
        parts.append(f"dosed for {number(dose.weight_kg)} kg")
    if rate_changes:
        parts.append(
            "rate changed to "
            + "; ".join(
                f"{number(change.rate_mg_per_kg_per_hr)} mg/kg/h from {clock_text(change.at)}"
                + (f" ({change.reason})" if change.reason else "")
                for change in sorted(session.rate_changes, key=lambda change: change.at)
            )
        )
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
    """Each period at one rate, from the start or a rate change to the next or the end."""
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
        last = index == len(starts)
        withdrawn = whole["status"] == "entered-in-error"
        period: Json = {
            "resourceType": "MedicationAdministration",
            "id": f"rate-{index}",
            "status": whole["status"] if last or withdrawn else "completed",
            "medicationCodeableConcept": drug_concept,
            "subject": whole["subject"],
            "effectivePeriod": _period(start, end),
            "partOf": [{"reference": "#"}],
        }
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
    status = "entered-in-error" if session.withdrawn else "final"
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
        observation["encounter"] = vocabulary.encounter(session.id)
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
        observation["encounter"] = vocabulary.encounter(session.id)
        observation["effectiveDateTime"] = instant(
            session.infusion_start or session.scheduled_start
        )
        observation["partOf"] = [procedure_reference(vocabulary, session.id)]
        observation["valueQuantity"] = vocabulary.quantity(
            session.dose.weight_kg, weight.unit.code, weight.unit.display
        )
        observations.append(observation)
    return observations
