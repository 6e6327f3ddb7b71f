"""The clinic's protocol checked per session: each rule, its boundaries, the DetectedIssue."""

import base64
from typing import Any

import pytest

from adapter.intake.records import InfusionSession
from adapter.mapping.mapper import Mapper
from adapter.mapping.protocol import SessionFacts
from tests.conftest import ROOT, fasting, session, transport, vitals
from tests.mapping.helpers import mapper, record


@pytest.fixture(scope="module")
def shipped() -> Mapper:
    return mapper(ROOT / "mappings")


SAFE_DAY = [
    fasting(),
    transport(),
    vitals(id="VIT-R", phase="recovery", taken_at="2026-11-20T13:30:00-05:00"),
    vitals(
        id="VIT-D",
        phase="discharge",
        taken_at="2026-11-20T14:00:00-05:00",
        systolic=128,
        diastolic=82,
    ),
]
"""A session's records that break nothing (the session below: 09:05 to 13:05, discharge 14:10)."""
SAFE_SESSION = session(
    discharged_at="2026-11-20T14:10:00-05:00",
    dose={"weight_kg": 68.5, "rate_mg_per_kg_per_hr": 0.5, "total_mg": 137.0},
)


def check(
    shipped: Mapper,
    body: dict[str, Any] | None = None,
    records: list[dict[str, Any]] | None = None,
    series: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The DetectedIssues of a session, by their rule's code."""
    parsed = record(body or SAFE_SESSION)
    assert isinstance(parsed, InfusionSession)
    siblings = [record(other) for other in series or []]
    facts = SessionFacts(
        parsed,
        [record(r) for r in (SAFE_DAY if records is None else records)],
        [s for s in siblings if isinstance(s, InfusionSession)],
    )
    resources = shipped.protocol(facts).resources
    issues = [r for r in resources if r["resourceType"] == "DetectedIssue"]
    assert len(resources) == 2 * len(issues), "every DetectedIssue has its note"
    return {issue["code"]["coding"][0]["code"]: issue for issue in issues}


def replace(
    records: list[dict[str, Any]], index: int, body: dict[str, Any]
) -> list[dict[str, Any]]:
    return [body if i == index else r for i, r in enumerate(records)]


def test_a_session_that_keeps_the_protocol_has_no_issue(shipped: Mapper) -> None:
    assert check(shipped) == {}


def test_a_short_fast_is_a_high_severity_issue_with_its_evidence(shipped: Mapper) -> None:
    short = fasting(last_solid_food_at="2026-11-20T01:06:00-05:00")  # 7 h 59 min to 09:05

    issues = check(shipped, records=replace(SAFE_DAY, 0, short))

    issue = issues["fasting-below-minimum"]
    assert issue["status"] == "final"
    assert issue["severity"] == "high"
    assert issue["identifiedDateTime"] == "2026-11-20T09:05:00-05:00"
    assert issue["patient"]["identifier"]["value"] == "900001"
    assert issue["implicated"][0]["reference"].startswith("Procedure/")
    assert issue["evidence"][0]["detail"][0]["reference"].startswith("Observation/")
    assert issue["detail"] == (
        "Fasted 7 h 59 min from solid food (last at 2026-11-20 01:06 -05:00) to the infusion "
        "start at 2026-11-20 09:05 -05:00; the site minimum is 8 h."
    )


def test_a_fast_of_exactly_the_minimum_is_kept(shipped: Mapper) -> None:
    exact = fasting(last_solid_food_at="2026-11-20T01:05:00-05:00")

    assert check(shipped, records=replace(SAFE_DAY, 0, exact)) == {}


def test_no_fast_is_judged_before_the_infusion_starts(shipped: Mapper) -> None:
    waiting = session(status="checked_in", infusion_start=None, infusion_end=None)
    short = fasting(last_solid_food_at="2026-11-20T04:00:00-05:00")

    assert check(shipped, waiting, replace(SAFE_DAY, 0, short)) == {}


def test_a_missing_fasting_attestation_is_an_issue_once_the_session_ended(
    shipped: Mapper,
) -> None:
    running = session(status="in_progress", infusion_end=None)

    assert "fasting-not-attested" not in check(shipped, running, SAFE_DAY[1:])
    ended = check(shipped, records=SAFE_DAY[1:])
    assert ended["fasting-not-attested"]["detail"] == (
        "No fasting attestation was recorded before the infusion started at "
        "2026-11-20 09:05 -05:00."
    )


def test_a_fast_attested_after_the_start_is_an_issue(shipped: Mapper) -> None:
    late = fasting(attested_at="2026-11-20T09:30:00-05:00")

    issues = check(shipped, records=replace(SAFE_DAY, 0, late))

    assert list(issues) == ["fasting-attested-late"]
    assert "after the infusion started" in issues["fasting-attested-late"]["detail"]
    assert issues["fasting-attested-late"]["severity"] == "moderate"


def test_a_late_attestation_does_not_hide_a_short_fast(shipped: Mapper) -> None:
    late_and_short = fasting(
        attested_at="2026-11-20T09:30:00-05:00", last_solid_food_at="2026-11-20T07:00:00-05:00"
    )

    issues = check(shipped, records=replace(SAFE_DAY, 0, late_and_short))

    assert sorted(issues) == ["fasting-attested-late", "fasting-below-minimum"]


def test_absent_will_not_drive_is_not_taken_for_safe(shipped: Mapper) -> None:
    unsaid = transport(patient_will_not_drive=None)

    assert list(check(shipped, records=replace(SAFE_DAY, 1, unsaid))) == [
        "transport-patient-may-drive"
    ]


def test_a_series_is_checked_among_the_sessions_of_one_patient(shipped: Mapper) -> None:
    third = {**SAFE_SESSION, "series_id": "SER-1", "session_number": 3}
    someone_else = session(
        id="SES-9", series_id="SER-1", session_number=3, patient={"mrn": "900002"}
    )

    assert check(shipped, third, series=[someone_else]) == {}


def test_vitals_after_the_discharge_do_not_count_for_it(shipped: Mapper) -> None:
    after = [
        *SAFE_DAY[:2],
        vitals(id="VIT-R", phase="recovery", taken_at="2026-11-20T14:30:00-05:00"),
        vitals(id="VIT-D", phase="discharge", taken_at="2026-11-20T14:40:00-05:00"),
    ]

    assert {"recovery-vitals-missing", "discharge-vitals-missing"} <= set(
        check(shipped, records=after)
    )


@pytest.mark.parametrize(
    ("fields", "codes"),
    [
        ({"mode": "none_arranged"}, ["transport-none-arranged"]),
        ({"patient_will_not_drive": False}, ["transport-patient-may-drive"]),
        (
            {"mode": "none_arranged", "patient_will_not_drive": False},
            ["transport-none-arranged", "transport-patient-may-drive"],
        ),
    ],
)
def test_an_unsafe_ride_home_is_an_issue(
    shipped: Mapper, fields: dict[str, Any], codes: list[str]
) -> None:
    issues = check(shipped, records=replace(SAFE_DAY, 1, transport(**fields)))

    assert sorted(issues) == codes
    assert all(issues[code]["severity"] == "high" for code in codes)


def test_no_transport_attestation_is_an_issue_once_the_session_ended(shipped: Mapper) -> None:
    without = [SAFE_DAY[0], *SAFE_DAY[2:]]

    assert "transport-not-attested" in check(shipped, records=without)
    running = session(status="in_progress", infusion_end=None)
    assert "transport-not-attested" not in check(shipped, running, without)


@pytest.mark.parametrize(
    ("discharged", "short"),
    [("2026-11-20T14:05:00-05:00", False), ("2026-11-20T14:04:00-05:00", True)],
)
def test_monitoring_is_compared_exactly_with_the_minimum(
    shipped: Mapper, discharged: str, short: bool
) -> None:
    body = {**SAFE_SESSION, "discharged_at": discharged}
    records = [*SAFE_DAY[:3], vitals(id="VIT-D", phase="discharge", taken_at=discharged)]

    issues = check(shipped, body, records)

    assert ("monitoring-below-minimum" in issues) is short
    if short:
        assert issues["monitoring-below-minimum"]["detail"] == (
            "Discharged at 2026-11-20 14:04 -05:00, 59 min after the infusion ended at "
            "2026-11-20 13:05 -05:00; the site minimum is 1 h of monitoring."
        )


def test_a_discharge_without_recovery_or_discharge_vitals_is_an_issue(shipped: Mapper) -> None:
    issues = check(shipped, records=SAFE_DAY[:2])

    assert {"recovery-vitals-missing", "discharge-vitals-missing"} <= set(issues)
    assert issues["recovery-vitals-missing"]["severity"] == "moderate"


def test_withdrawn_vitals_do_not_count(shipped: Mapper) -> None:
    withdrawn = {**SAFE_DAY[2], "revision": 2, "status": "entered_in_error"}

    assert "recovery-vitals-missing" in check(shipped, records=replace(SAFE_DAY, 2, withdrawn))


@pytest.mark.parametrize(
    ("systolic", "diastolic", "high"),
    [(159, 99, False), (160, 90, True), (150, 100, True)],
)
def test_blood_pressure_above_the_discharge_limit_is_an_issue(
    shipped: Mapper, systolic: int, diastolic: int, high: bool
) -> None:
    reading = {**SAFE_DAY[3], "systolic": systolic, "diastolic": diastolic}

    issues = check(shipped, records=replace(SAFE_DAY, 3, reading))

    assert ("discharge-blood-pressure-high" in issues) is high
    if high:
        issue = issues["discharge-blood-pressure-high"]
        assert f"{systolic}/{diastolic} mmHg" in issue["detail"]
        assert issue["evidence"][0]["detail"][0]["reference"].startswith("Observation/")


@pytest.mark.parametrize("status", ["completed", "stopped_early"])
def test_an_ended_session_without_an_infusion_end_is_an_issue(shipped: Mapper, status: str) -> None:
    body = {**SAFE_SESSION, "status": status}
    body.pop("infusion_end")

    issue = check(shipped, body)["ended-without-infusion-end"]

    assert "cannot be verified" in issue["detail"]


def test_session_numbers_of_a_series_repeated_or_out_of_order(shipped: Mapper) -> None:
    third = {**SAFE_SESSION, "series_id": "SER-1", "session_number": 3}
    also_third = session(id="SES-2", series_id="SER-1", session_number=3)
    later_second = session(
        id="SES-3", series_id="SER-1", session_number=2, scheduled_start="2026-11-21T09:00:00-05:00"
    )
    cancelled_third = session(id="SES-4", series_id="SER-1", session_number=3, status="cancelled")

    issues = check(shipped, third, series=[also_third, later_second, cancelled_third])

    repeated, disorder = issues["series-number-repeated"], issues["series-out-of-order"]
    assert "also recorded for SES-2" in repeated["detail"]
    assert "SES-4" not in repeated["detail"]
    assert len(repeated["implicated"]) == 3  # the session's Procedure and visit, and SES-2
    assert "session 2 (SES-3" in disorder["detail"]


def test_a_recorded_total_far_from_the_rates_is_a_low_issue(shipped: Mapper) -> None:
    issues = check(shipped, session(discharged_at="2026-11-20T14:10:00-05:00"))

    issue = issues["dose-total-mismatch"]
    assert issue["severity"] == "low"
    assert issue["implicated"][2]["reference"].startswith("MedicationAdministration/")


@pytest.mark.parametrize("status", ["scheduled", "cancelled", "no_show", "entered_in_error"])
def test_sessions_that_gave_nothing_are_not_checked(shipped: Mapper, status: str) -> None:
    body = session(status=status, infusion_start=None, infusion_end=None)

    assert check(shipped, body, records=[]) == {}


def test_each_issue_has_a_readable_note(shipped: Mapper) -> None:
    facts = SessionFacts(record(SAFE_SESSION), [record(r) for r in SAFE_DAY[:2]])  # type: ignore[arg-type]

    resources = shipped.protocol(facts).resources

    notes = [r for r in resources if r["resourceType"] == "DocumentReference"]
    text = base64.b64decode(notes[0]["content"][0]["attachment"]["data"]).decode()
    assert text.startswith("Infusion protocol breach: Discharged without recovery vitals")
    assert "Severity: moderate" in text
    assert notes[0]["context"]["related"][0]["reference"].startswith("DetectedIssue/")
