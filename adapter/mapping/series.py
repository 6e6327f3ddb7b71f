"""An infusion series -> CarePlan: the planned sessions, each with its Procedure once done."""

from html import escape

from adapter.intake.records import InfusionSession
from adapter.mapping.common import Json, Vocabulary, clock_text, instant
from adapter.mapping.session import procedure_reference

SOURCE_TYPE = "series"
"""The source of a series' CarePlan: (series, series id)."""
RECORD_TYPE = "infusion_series"
_DONE = {"completed": "completed", "stopped_early": "stopped"}
_ACTIVITY_STATUS = {
    "scheduled": "scheduled",
    "checked_in": "scheduled",
    "in_progress": "in-progress",
    "completed": "completed",
    "stopped_early": "stopped",
    "cancelled": "cancelled",
    "no_show": "cancelled",
}
"""Session status -> CarePlan.activity.detail.status (http://hl7.org/fhir/care-plan-activity-status)."""


def series_to_care_plan(
    vocabulary: Vocabulary, series_id: str, sessions: list[InfusionSession]
) -> Json | None:
    """The series' CarePlan, from its sessions (withdrawn ones aside); None when none is left."""
    current = sorted(
        (s for s in sessions if not s.withdrawn), key=lambda s: (s.scheduled_start, s.id)
    )
    if not current:
        return None
    mapping = vocabulary.mappings.care_plan
    latest = current[-1]
    planned = max(
        [s.sessions_planned for s in current if s.sessions_planned]
        + [s.session_number for s in current if s.session_number]
        + [len(current)]
    )
    plan = vocabulary.resource("CarePlan", RECORD_TYPE, series_id)
    plan["identifier"].append({"system": vocabulary.systems.series, "value": series_id})
    by_number = {s.session_number: s for s in current if s.session_number}
    done = [s for s in current if s.status in _DONE]
    open_ = [s for s in current if s.status not in (*_DONE, "cancelled", "no_show")]
    status = "completed" if not open_ and len(done) >= planned else "active"
    title = mapping.title.replace("{planned}", str(planned))
    summary = f"{title}: {len(done)} done" + (
        f", the last on {clock_text(done[-1].infusion_start or done[-1].scheduled_start)}"
        if done
        else ""
    )
    plan["text"] = {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{escape(summary)}</div>',
    }
    plan["status"] = status
    plan["intent"] = "plan"
    plan["category"] = [vocabulary.concept(mapping.category)]
    plan["title"] = title
    plan["subject"] = vocabulary.patient(latest.patient.mrn)
    period: Json = {"start": instant(current[0].scheduled_start)}
    if status == "completed":
        last = current[-1]
        period["end"] = instant(last.discharged_at or last.infusion_end or last.scheduled_start)
    plan["period"] = period
    code = vocabulary.concept(vocabulary.mappings.procedure.code)
    activities = []
    for number in range(1, planned + 1):
        session = by_number.get(number)
        detail: Json = {
            "code": code,
            "status": _ACTIVITY_STATUS[session.status] if session else "not-started",
            "description": f"Session {number} of {planned}",
        }
        if session is not None:
            detail["scheduledString"] = clock_text(session.scheduled_start)
        activity: Json = {"detail": detail}
        if session is not None and session.status in _DONE:
            activity["outcomeReference"] = [procedure_reference(vocabulary, session.id)]
        activities.append(activity)
    unnumbered = [s for s in current if not s.session_number]
    for session in unnumbered:
        activities.append(
            {
                "detail": {
                    "code": code,
                    "status": _ACTIVITY_STATUS[session.status],
                    "description": f"Session {session.id} (no session number recorded)",
                    "scheduledString": clock_text(session.scheduled_start),
                },
                **(
                    {"outcomeReference": [procedure_reference(vocabulary, session.id)]}
                    if session.status in _DONE
                    else {}
                ),
            }
        )
    plan["activity"] = activities
    return plan
