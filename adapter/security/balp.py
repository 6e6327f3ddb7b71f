"""Audit entries as FHIR AuditEvent resources in the shapes of IHE Basic Audit Log Patterns
(https://profiles.ihe.net/ITI/BALP/): Read (IHE.BasicAudit.Read), Query (IHE.BasicAudit.Query)
and Create (IHE.BasicAudit.Create) for the FHIR and intake interactions; other actions keep the
same agents and entities without claiming a profile. A refused request is outcome 4 (minor
failure) or 8 (serious failure), as BALP says failures are recorded, without the profile."""

import base64
from typing import Any

from adapter.security.audit import AuditEntry

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
CLIENT_SYSTEM = "urn:infusion-adapter:client"
"""The identifier system of the adapter's registered clients (their client ids)."""

SOURCE_ROLE = {"system": DCM, "code": "110153", "display": "Source Role ID"}
DESTINATION_ROLE = {"system": DCM, "code": "110152", "display": "Destination Role ID"}

# interaction -> (profile, restful-interaction code, action)
_SHAPES = {
    "read": ("Read", "read", "R"),
    "vread": ("Read", "vread", "R"),
    "history-instance": ("Read", "history-instance", "R"),
    "record-read": ("Read", "read", "R"),
    "search-type": ("Query", "search-type", "E"),
    "history-type": ("Query", "history-type", "E"),
    "intake": ("Create", "create", "C"),
    "export": (None, "operation", "E"),
}


def _outcome(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(entry: AuditEntry, server: str) -> dict[str, Any]:
    """One entry as a BALP-shaped AuditEvent; `server` is the adapter's base URL."""
    profile, code, action = _SHAPES.get(entry.interaction, (None, "operation", "E"))
    outcome = _outcome(entry.outcome)
    client: dict[str, Any] = {
        "type": {"coding": [SOURCE_ROLE if action != "R" else DESTINATION_ROLE]},
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": entry.client_id or "unknown"}},
        "requestor": True,
    }
    if entry.address:
        client["network"] = {"address": entry.address, "type": "2"}
    adapter = {
        "type": {"coding": [DESTINATION_ROLE if action != "R" else SOURCE_ROLE]},
        "who": {"display": "infusion clinic EHR adapter"},
        "requestor": False,
        "network": {"address": server, "type": "5"},
    }
    entities: list[dict[str, Any]] = []
    for resource in entry.resource_ids or []:
        reference = resource.split("/_history/")[0]
        entities.append(
            {
                "what": {"reference": reference} if "/" in reference else {"display": reference},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    if entry.query or profile == "Query":
        raw = f"{entry.method} {entry.path}" + (f"?{entry.query}" if entry.query else "")
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(raw.encode()).decode(),
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.id),
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL, "code": code}],
        "action": action,
        "recorded": entry.recorded_at.isoformat(),
        "outcome": outcome,
        "agent": [client, adapter],
        "source": {
            "observer": {"display": "infusion clinic EHR adapter"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if outcome != "0":
        event["outcomeDesc"] = f"HTTP {entry.outcome}"
    if entities:
        event["entity"] = entities
    if profile is not None and outcome == "0":
        event["meta"] = {"profile": [BALP + profile]}
    return event
