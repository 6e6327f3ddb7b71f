"""Audit entries as FHIR AuditEvent resources in the shapes of IHE Basic Audit Log Patterns
(https://profiles.ihe.net/ITI/BALP/): Read (IHE.BasicAudit.Read), Query (IHE.BasicAudit.Query)
and Create (IHE.BasicAudit.Create) for the FHIR and intake interactions; other actions keep the
same agents and entities without claiming a profile. A refused request is outcome 4 (minor
failure) or 8 (serious failure), as BALP says failures are recorded, without the profile."""

import base64
from typing import Any

from adapter.fhir import rules
from adapter.security.audit import AuditEntry

CLIENT_SYSTEM = "urn:infusion-adapter:client"
"""The identifier system of the adapter's registered clients (their client ids)."""

SYSTEM_OBJECT = {"system": rules.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"}
"""The entity type of every entity the adapter records: resources, records, jobs, queries."""

PROFILED = {
    "read": ("Read", "read"),
    "vread": ("Read", "vread"),
    "history-instance": ("Read", "history-instance"),
    "record-read": ("Read", "read"),
    "search-type": ("Query", "search-type"),
    "history-type": ("Query", "history-type"),
    "intake": ("Create", "create"),
}
"""The adapter's interactions that a BALP profile covers: (profile, restful-interaction code).
Any other (export, token, admin actions) is an `operation` executed (E), with the agents of a
query, and claims no profile."""


def _role(code: str) -> dict[str, str]:
    return {"system": rules.DICOM, "code": code, "display": rules.DICOM_ROLES[code]}


def _outcome(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(entry: AuditEntry, server: str) -> dict[str, Any]:
    """One entry as a BALP-shaped AuditEvent; `server` is the adapter's base URL."""
    profile, code = PROFILED.get(entry.interaction, (None, "operation"))
    shape = rules.BALP_PROFILES[rules.BALP + (profile or "Query")]
    action = shape["action"] if profile else "E"
    outcome = _outcome(entry.outcome)
    client: dict[str, Any] = {
        "type": {"coding": [_role(shape["client_role"])]},
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": entry.client_id or "unknown"}},
        "requestor": True,
    }
    if entry.address:
        client["network"] = {"address": entry.address, "type": "2"}
    adapter = {
        "type": {"coding": [_role(shape["server_role"])]},
        "who": {"display": "infusion clinic EHR adapter"},
        "requestor": False,
        "network": {"address": server, "type": "5"},
    }
    entities: list[dict[str, Any]] = []
    for resource in entry.resource_ids or []:
        reference = resource.split("/_history/")[0]
        entities.append(
            {
                # FHIR resources by reference; clinic records and export jobs by name.
                "what": (
                    {"reference": reference}
                    if entry.resource_type and "/" in reference
                    else {"display": reference}
                ),
                "type": SYSTEM_OBJECT,
                "role": {"system": rules.OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    if entry.query or profile == "Query":
        raw = f"{entry.method} {entry.path}" + (f"?{entry.query}" if entry.query else "")
        entities.append(
            {
                "type": SYSTEM_OBJECT,
                "role": {"system": rules.OBJECT_ROLE, "code": rules.QUERY_ROLE, "display": "Query"},
                "query": base64.b64encode(raw.encode()).decode(),
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.id),
        "type": {"system": rules.AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": rules.RESTFUL_INTERACTION, "code": code}],
        "action": action,
        "recorded": entry.recorded_at.isoformat(),
        "outcome": outcome,
        "agent": [client, adapter],
        "source": {
            "observer": {"display": "infusion clinic EHR adapter"},
            "type": [
                {"system": rules.SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}
            ],
        },
    }
    if outcome != "0":
        event["outcomeDesc"] = f"HTTP {entry.outcome}"
    if entities:
        event["entity"] = entities
    if profile is not None and outcome == "0":
        event["meta"] = {"profile": [rules.BALP + profile]}
    return event
