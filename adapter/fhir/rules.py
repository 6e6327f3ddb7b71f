"""What FHIR R4 requires that fhir.resources does not check, as data the checks read.

Sources: the R4 (4.0.1) resource pages, https://hl7.org/fhir/R4/, and the vital signs profile,
https://hl7.org/fhir/R4/observation-vitalsigns.html.
"""

from typing import Any, Literal, get_args

UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"

EventStatus = Literal[
    "preparation",
    "in-progress",
    "not-done",
    "on-hold",
    "stopped",
    "completed",
    "entered-in-error",
    "unknown",
]
MedicationAdministrationStatus = Literal[
    "in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown"
]
AdverseEventOutcome = Literal[
    "resolved", "recovering", "ongoing", "resolvedWithSequelae", "fatal", "unknown"
]

OBSERVATION_STATUS = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)

REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Procedure", "status"): frozenset(get_args(EventStatus)),
    ("Observation", "status"): OBSERVATION_STATUS,
    ("DetectedIssue", "status"): OBSERVATION_STATUS,
    ("DetectedIssue", "severity"): frozenset({"high", "moderate", "low"}),
    ("DocumentReference", "status"): frozenset({"current", "superseded", "entered-in-error"}),
    ("DocumentReference", "docStatus"): frozenset(
        {"preliminary", "final", "amended", "entered-in-error"}
    ),
    ("Encounter", "status"): frozenset(
        {
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("CarePlan", "status"): frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
    ("CarePlan", "intent"): frozenset({"proposal", "plan", "order", "option"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("MedicationAdministration", "status"): frozenset(get_args(MedicationAdministrationStatus)),
    ("AdverseEvent", "actuality"): frozenset({"actual", "potential"}),
    ("AuditEvent", "action"): frozenset({"C", "R", "U", "D", "E"}),
    ("AuditEvent", "outcome"): frozenset({"0", "4", "8", "12"}),
}
"""Required bindings on a resource's own code elements: (resourceType, element) -> codes."""

REQUIRED_CODINGS: dict[tuple[str, str], tuple[str, frozenset[str]]] = {
    ("AdverseEvent", "severity"): (
        "http://terminology.hl7.org/CodeSystem/adverse-event-severity",
        frozenset({"mild", "moderate", "severe"}),
    ),
    ("AdverseEvent", "outcome"): (
        "http://terminology.hl7.org/CodeSystem/adverse-event-outcome",
        frozenset(get_args(AdverseEventOutcome)),
    ),
}
"""Required bindings on CodeableConcepts: (resourceType, element) -> (system, codes)."""

QUANTITY_COMPARATORS = frozenset({"<", "<=", ">=", ">"})

REFERENCE_TARGETS: dict[tuple[str, str], frozenset[str]] = {
    ("AuditEvent", "agent.who"): frozenset(
        {"PractitionerRole", "Practitioner", "Organization", "Device", "Patient", "RelatedPerson"}
    ),
    ("AuditEvent", "source.observer"): frozenset(
        {"PractitionerRole", "Practitioner", "Organization", "Device", "Patient", "RelatedPerson"}
    ),
    ("AuditEvent", "entity.what"): frozenset(),
    ("Procedure", "subject"): frozenset({"Patient", "Group"}),
    ("Procedure", "performer.actor"): frozenset(
        {"Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson", "Device"}
    ),
    ("Procedure", "recorder"): frozenset(
        {"Patient", "RelatedPerson", "Practitioner", "PractitionerRole"}
    ),
    ("Procedure", "location"): frozenset({"Location"}),
    ("Observation", "subject"): frozenset({"Patient", "Group", "Device", "Location"}),
    ("Observation", "partOf"): frozenset(
        {
            "MedicationAdministration",
            "MedicationDispense",
            "MedicationStatement",
            "Procedure",
            "Immunization",
            "ImagingStudy",
        }
    ),
    ("Observation", "performer"): frozenset(
        {"Practitioner", "PractitionerRole", "Organization", "CareTeam", "Patient", "RelatedPerson"}
    ),
    ("Observation", "device"): frozenset({"Device", "DeviceMetric"}),
    ("MedicationAdministration", "subject"): frozenset({"Patient", "Group"}),
    ("MedicationAdministration", "partOf"): frozenset({"MedicationAdministration", "Procedure"}),
    ("MedicationAdministration", "contained.subject"): frozenset({"Patient", "Group"}),
    ("MedicationAdministration", "contained.partOf"): frozenset(
        {"MedicationAdministration", "Procedure"}
    ),
    ("MedicationAdministration", "performer.actor"): frozenset(
        {"Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Device"}
    ),
    ("MedicationAdministration", "supportingInformation"): frozenset(),
    ("AdverseEvent", "subject"): frozenset({"Patient", "Group", "Practitioner", "RelatedPerson"}),
    ("AdverseEvent", "recorder"): frozenset(
        {"Patient", "Practitioner", "PractitionerRole", "RelatedPerson"}
    ),
    ("AdverseEvent", "suspectEntity.instance"): frozenset(
        {
            "Immunization",
            "Procedure",
            "Substance",
            "Medication",
            "MedicationAdministration",
            "MedicationStatement",
            "Device",
        }
    ),
    ("AdverseEvent", "extension.valueReference"): frozenset(),
    ("MedicationAdministration", "reasonReference"): frozenset(
        {"Condition", "Observation", "DiagnosticReport"}
    ),
    ("DetectedIssue", "patient"): frozenset({"Patient"}),
    ("DetectedIssue", "implicated"): frozenset(),
    ("DetectedIssue", "evidence.detail"): frozenset(),
    ("DocumentReference", "subject"): frozenset({"Patient", "Practitioner", "Group", "Device"}),
    ("DocumentReference", "author"): frozenset(
        {"Practitioner", "PractitionerRole", "Organization", "Device", "Patient", "RelatedPerson"}
    ),
    ("DocumentReference", "context.related"): frozenset(),
    ("DocumentReference", "context.encounter"): frozenset({"Encounter", "EpisodeOfCare"}),
    ("Procedure", "encounter"): frozenset({"Encounter"}),
    ("Procedure", "basedOn"): frozenset({"CarePlan", "ServiceRequest"}),
    ("Observation", "encounter"): frozenset({"Encounter"}),
    ("MedicationAdministration", "context"): frozenset({"Encounter", "EpisodeOfCare"}),
    ("AdverseEvent", "encounter"): frozenset({"Encounter"}),
    ("Encounter", "subject"): frozenset({"Patient", "Group"}),
    ("Encounter", "participant.individual"): frozenset(
        {"Practitioner", "PractitionerRole", "RelatedPerson"}
    ),
    ("Encounter", "location.location"): frozenset({"Location"}),
    ("CarePlan", "subject"): frozenset({"Patient", "Group"}),
    ("CarePlan", "activity.outcomeReference"): frozenset(),
}
"""Allowed target types of each reference element the adapter emits; an empty set means Any.
A reference element not listed here is an error: every reference the adapter emits is declared."""

UCUM_UNITS = frozenset(
    {
        "/min",
        "mm[Hg]",
        "%",
        "Cel",
        "[degF]",
        "{score}",
        "kg",
        "mg",
        "ug",
        "g",
        "mL",
        "mg/kg/h",
        "h",
        "min",
    }
)
"""The UCUM codes the adapter may emit, each checked against https://ucum.org/ucum."""

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_ROLES = {"110152": "Destination Role ID", "110153": "Source Role ID"}
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
QUERY_ROLE = "24"
"""object-role `Query`: the entity of a BALP Query event that carries the query."""
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_PROFILES: dict[str, dict[str, Any]] = {
    BALP + "Read": {
        "subtypes": frozenset({"read", "vread", "history-instance"}),
        "action": "R",
        "client_role": "110152",
        "server_role": "110153",
    },
    BALP + "Query": {
        "subtypes": frozenset({"search", "search-type", "search-system", "history-type"}),
        "action": "E",
        "client_role": "110153",
        "server_role": "110152",
        "query": True,
    },
    BALP + "Create": {
        "subtypes": frozenset({"create"}),
        "action": "C",
        "client_role": "110153",
        "server_role": "110152",
    },
}
"""IHE Basic Audit Log Patterns 1.1.3 (https://profiles.ihe.net/ITI/BALP/): what the Read,
Query and Create profiles fix on an AuditEvent (type rest, the subtype, the action, outcome 0,
the client and server agents by their DICOM role, the query entity)."""
