"""A session's protocol breaches -> DetectedIssue resources, each with its clinical note."""

from adapter.mapping.common import Built, Json, Vocabulary, clock_text, instant
from adapter.mapping.notes import note
from adapter.mapping.protocol import SessionFacts, breaches
from adapter.mapping.session import procedure_reference

SOURCE_TYPE = "protocol"
"""The source of the resources the checks of a session make: (protocol, session id). Their
identifiers are `{records}/protocol` with `{session id}/{rule}`."""


def protocol_to_resources(vocabulary: Vocabulary, facts: SessionFacts) -> Built:
    """A DetectedIssue and its note for every breach of the session's protocol, now."""
    session = facts.session
    rules = vocabulary.mappings.detected_issue.rules
    built = Built()
    procedure = procedure_reference(vocabulary, session.id)
    for breach in breaches(vocabulary, facts):
        rule = getattr(rules, breach.rule)
        value = f"{session.id}/{breach.rule.replace('_', '-')}"
        issue = vocabulary.resource("DetectedIssue", SOURCE_TYPE, value)
        issue["status"] = "final"
        issue["code"] = vocabulary.concept(rule)
        issue["severity"] = rule.severity
        issue["patient"] = vocabulary.patient(session.patient.mrn)
        issue["identifiedDateTime"] = instant(breach.identified)
        issue["implicated"] = [procedure, vocabulary.encounter(session.id), *breach.implicated]
        if breach.evidence:
            issue["evidence"] = [{"detail": breach.evidence}]
        issue["detail"] = breach.detail
        built.resources.append(issue)
        started = session.infusion_start or session.scheduled_start
        text = "\n".join(
            [
                f"Infusion protocol breach: {rule.text}",
                f"Severity: {rule.severity}",
                f"Session: {session.id}, infusion "
                + ("started" if session.infusion_start else "scheduled")
                + f" {clock_text(started)}",
                breach.detail,
            ]
        )
        built.resources.append(
            note(
                vocabulary,
                SOURCE_TYPE,
                f"{value}/note",
                subject=issue["patient"],
                recorded=breach.identified,
                author=None,
                description=f"Infusion protocol breach: {rule.text}",
                text=text + "\n",
                related=[{"reference": f"DetectedIssue/{issue['id']}"}, procedure],
                period=None,
                encounter=vocabulary.encounter(session.id),
                withdrawn=False,
                withdrawn_text="",
            )
        )
    return built


def breach_summary(resource: Json) -> Json:
    """A DetectedIssue as `GET /api/v1/records/infusion_session/{id}` lists it."""
    return {
        "id": resource["id"],
        "code": resource["code"].get("text"),
        "severity": resource.get("severity"),
        "status": resource.get("status"),
        "identified": resource.get("identifiedDateTime"),
        "detail": resource.get("detail"),
    }
