"""The clinic's protocol checked for one session: every breach found in its records."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from adapter.intake.records import (
    AnyRecord,
    FastingAttestation,
    InfusionSession,
    TransportAttestation,
    Vitals,
)
from adapter.mapping.common import Json, Vocabulary, clock_text, duration_text, number

CHECKED_STATUSES = frozenset({"checked_in", "in_progress", "completed", "stopped_early"})
"""Sessions the protocol applies to: one scheduled, cancelled or missed has given nothing."""
ENDED_STATUSES = frozenset({"completed", "stopped_early"})


@dataclass(frozen=True)
class SessionFacts:
    """What the checks of one session read: the session, the current revisions of the records
    that name it, and the other sessions of its series."""

    session: InfusionSession
    records: Sequence[AnyRecord] = ()
    series: Sequence[InfusionSession] = ()

    def current(self) -> list[AnyRecord]:
        return [record for record in self.records if not record.withdrawn]


@dataclass(frozen=True)
class Breach:
    """One rule of the protocol a session broke, said in words with the exact figures."""

    rule: str
    """The rule's key in resources/detected_issue.yaml."""
    detail: str
    identified: datetime
    """When the breach happened (the infusion start for a fast, the discharge for monitoring)."""
    evidence: list[Json] = field(default_factory=list)
    """References to the Observations it rests on."""
    implicated: list[Json] = field(default_factory=list)
    """References beyond the session's Procedure (the other sessions of a series)."""


def breaches(vocabulary: Vocabulary, facts: SessionFacts) -> list[Breach]:
    """Every breach of the protocol in this session's records, in the order of the rules."""
    session = facts.session
    if session.withdrawn or session.status not in CHECKED_STATUSES:
        return []
    found: list[Breach] = []
    for check in _CHECKS:
        found += check(vocabulary, facts)
    return found


def _ended(session: InfusionSession) -> bool:
    """Charting of the infusion is done: what is missing now is missing."""
    return session.status in ENDED_STATUSES or session.discharged_at is not None


def _of(facts: SessionFacts, kind: type[AnyRecord]) -> list[AnyRecord]:
    return [record for record in facts.current() if isinstance(record, kind)]


def _fasting(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    session, rules = facts.session, vocabulary.mappings.site.protocol
    start = session.infusion_start
    attestations = [a for a in _of(facts, FastingAttestation) if isinstance(a, FastingAttestation)]
    if start is None:
        return
    if not attestations:
        if _ended(session):
            yield Breach(
                "fasting_unattested",
                f"No fasting attestation was recorded before the infusion started at "
                f"{clock_text(start)}.",
                start,
            )
        return
    timely = [a for a in attestations if a.attested_at <= start]
    if not timely:
        late = min(a.attested_at for a in attestations)
        yield Breach(
            "fasting_attested_late",
            f"Fasting was attested at {clock_text(late)}, after the infusion started at "
            f"{clock_text(start)}.",
            start,
            [_attestation_reference(vocabulary, a) for a in attestations],
        )
    # The fast itself is judged whenever it was attested: a late attestation hides nothing.
    attestation = max(timely or attestations, key=lambda a: a.attested_at)
    evidence = [_attestation_reference(vocabulary, attestation)]
    fasted = start - attestation.last_solid_food_at
    minimum = _hours(rules.fasting_minimum_hours.value)
    if fasted < minimum:
        yield Breach(
            "fasting_short",
            f"Fasted {duration_text(fasted)} from solid food (last at "
            f"{clock_text(attestation.last_solid_food_at)}) to the infusion start at "
            f"{clock_text(start)}; the site minimum is {duration_text(minimum)}.",
            start,
            evidence,
        )
    liquid_rule = rules.clear_liquid_minimum_hours
    if liquid_rule is not None and attestation.last_clear_liquid_at is not None:
        liquid = start - attestation.last_clear_liquid_at
        liquid_minimum = _hours(liquid_rule.value)
        if liquid < liquid_minimum:
            yield Breach(
                "clear_liquid_short",
                f"Fasted {duration_text(liquid)} from clear liquids (last at "
                f"{clock_text(attestation.last_clear_liquid_at)}) to the infusion start at "
                f"{clock_text(start)}; the site minimum is {duration_text(liquid_minimum)}.",
                start,
                evidence,
            )


def _transport(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    session = facts.session
    start = session.infusion_start
    if start is None:
        return
    attestations = [
        a for a in _of(facts, TransportAttestation) if isinstance(a, TransportAttestation)
    ]
    if not attestations:
        if _ended(session):
            when = session.discharged_at or session.infusion_end or start
            yield Breach(
                "transport_unattested",
                "No transport attestation was recorded for the ride home"
                + (f" by the discharge at {clock_text(when)}." if session.discharged_at else "."),
                when,
            )
        return
    latest = max(attestations, key=lambda a: a.attested_at)
    evidence = [_attestation_reference(vocabulary, latest)]
    if latest.mode == "none_arranged":
        yield Breach(
            "transport_none_arranged",
            f"No transport home was arranged (attested at {clock_text(latest.attested_at)}).",
            start,
            evidence,
        )
    if latest.patient_will_not_drive is not True:
        yield Breach(
            "transport_patient_drives",
            f"The patient did not confirm they will not drive (attested at "
            f"{clock_text(latest.attested_at)}).",
            start,
            evidence,
        )


def _monitoring(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    session, rules = facts.session, vocabulary.mappings.site.protocol
    discharged, end = session.discharged_at, session.infusion_end
    if discharged is None:
        return
    if end is not None:
        stayed = discharged - end
        minimum = timedelta(minutes=rules.monitoring_minimum_minutes.value)
        if stayed < minimum:
            yield Breach(
                "monitoring_short",
                f"Discharged at {clock_text(discharged)}, {duration_text(stayed)} after the "
                f"infusion ended at {clock_text(end)}; the site minimum is "
                f"{duration_text(minimum)} of monitoring.",
                discharged,
            )
    vitals = [v for v in _of(facts, Vitals) if isinstance(v, Vitals) and v.taken_at <= discharged]
    after_end = [v for v in vitals if end is None or v.taken_at >= end]
    if not any(v.phase == "recovery" for v in after_end):
        yield Breach(
            "recovery_vitals_missing",
            f"No recovery vitals were recorded between the infusion end and the discharge at "
            f"{clock_text(discharged)}.",
            discharged,
        )
    if not any(v.phase == "discharge" for v in after_end):
        yield Breach(
            "discharge_vitals_missing",
            f"No discharge vitals were recorded for the discharge at {clock_text(discharged)}.",
            discharged,
        )


def _discharge_pressure(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    rules = vocabulary.mappings.site.protocol
    readings = [
        v
        for v in _of(facts, Vitals)
        if isinstance(v, Vitals)
        and v.phase == "discharge"
        and v.systolic is not None
        and v.diastolic is not None
    ]
    if not readings:
        return
    last = max(readings, key=lambda v: v.taken_at)
    assert last.systolic is not None and last.diastolic is not None
    systolic_max, diastolic_max = rules.discharge_systolic_max, rules.discharge_diastolic_max
    if last.systolic >= systolic_max.value or last.diastolic >= diastolic_max.value:
        yield Breach(
            "discharge_blood_pressure_high",
            f"Blood pressure at discharge {number(last.systolic)}/{number(last.diastolic)} mmHg "
            f"(taken at {clock_text(last.taken_at)}) is not below the site's discharge limit of "
            f"{number(systolic_max.value)}/{number(diastolic_max.value)} mmHg.",
            last.taken_at,
            [vocabulary.reference("Observation", "vitals", f"{last.id}/blood_pressure")],
        )


def _completion(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    session = facts.session
    if session.status in ENDED_STATUSES and session.infusion_end is None:
        yield Breach(
            "completed_without_end",
            f"The session is marked {session.status.replace('_', ' ')} but no infusion end time "
            "was recorded: the monitoring after it cannot be verified.",
            session.discharged_at or session.infusion_start or session.scheduled_start,
        )


def _series(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    session = facts.session
    number_ = session.session_number
    if session.series_id is None or number_ is None:
        return
    others = [
        other
        for other in facts.series
        if other.id != session.id
        and other.patient.mrn == session.patient.mrn
        and not other.withdrawn
        and other.status not in ("cancelled", "no_show")
        and other.session_number is not None
    ]
    repeated = [other for other in others if other.session_number == number_]
    if repeated:
        yield Breach(
            "series_number_repeated",
            f"Session number {number_} of series {session.series_id} is also recorded for "
            f"{_listed(other.id for other in repeated)}.",
            session.scheduled_start,
            implicated=[_procedure(vocabulary, other.id) for other in repeated],
        )
    out_of_order = [
        other
        for other in others
        if other.session_number is not None
        and other.session_number != number_
        and (other.session_number < number_) != (other.scheduled_start < session.scheduled_start)
        and other.scheduled_start != session.scheduled_start
    ]
    if out_of_order:
        yield Breach(
            "series_out_of_order",
            f"Session {number_} of series {session.series_id}, scheduled "
            f"{clock_text(session.scheduled_start)}, is out of order with "
            + _listed(
                f"session {other.session_number} ({other.id}, scheduled "
                f"{clock_text(other.scheduled_start)})"
                for other in out_of_order
            )
            + ".",
            session.scheduled_start,
            implicated=[_procedure(vocabulary, other.id) for other in out_of_order],
        )


def _dose_total(vocabulary: Vocabulary, facts: SessionFacts) -> Iterator[Breach]:
    session = facts.session
    given = dose_from_rates(session)
    dose = session.dose
    if given is None or dose is None or dose.total_mg is None:
        return
    tolerance = vocabulary.mappings.site.protocol.dose_total_tolerance_percent.value
    if abs(given - dose.total_mg) <= dose.total_mg * tolerance / 100:
        return
    yield Breach(
        "dose_total_mismatch",
        dose_mismatch_text(session, given, tolerance),
        session.infusion_end or session.infusion_start or session.scheduled_start,
        implicated=[
            vocabulary.reference(
                "MedicationAdministration", "infusion_session", f"{session.id}/medication"
            )
        ],
    )


def dose_from_rates(session: InfusionSession) -> float | None:
    """The ketamine the rate periods and the dosing weight give, in mg; None when the record
    does not say enough (no start, end, weight or starting rate)."""
    dose, start, end = session.dose, session.infusion_start, session.infusion_end
    if dose is None or start is None or end is None:
        return None
    if dose.weight_kg is None or dose.rate_mg_per_kg_per_hr is None:
        return None
    changes = sorted(session.rate_changes, key=lambda change: change.at)
    moments = [start, *(min(max(change.at, start), end) for change in changes), end]
    rates = [dose.rate_mg_per_kg_per_hr, *(change.rate_mg_per_kg_per_hr for change in changes)]
    total = 0.0
    for index, rate in enumerate(rates):
        hours = (moments[index + 1] - moments[index]).total_seconds() / 3600
        total += rate * dose.weight_kg * max(hours, 0.0)
    return total


def dose_mismatch_text(session: InfusionSession, given: float, tolerance: float) -> str:
    assert session.dose is not None and session.dose.total_mg is not None
    return (
        f"The recorded total dose of {number(session.dose.total_mg)} mg differs from the "
        f"{given:.1f} mg that the rate periods and the dosing weight of "
        f"{number(session.dose.weight_kg or 0)} kg give (more than {number(tolerance)}% apart); "
        "both figures are as the clinic recorded them."
    )


def _hours(value: float) -> timedelta:
    return timedelta(minutes=round(value * 60))


def _listed(items: Iterator[str] | Sequence[str]) -> str:
    names = list(items)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _attestation_reference(
    vocabulary: Vocabulary, attestation: FastingAttestation | TransportAttestation
) -> Json:
    return vocabulary.reference("Observation", "attestation", attestation.id)


def _procedure(vocabulary: Vocabulary, session_id: str) -> Json:
    return vocabulary.reference("Procedure", "infusion_session", session_id)


_CHECKS: list[Callable[[Vocabulary, SessionFacts], Iterator[Breach]]] = [
    _fasting,
    _transport,
    _monitoring,
    _discharge_pressure,
    _completion,
    _series,
    _dose_total,
]
