"""The search parameters the FHIR endpoint supports, as data: name, type, and element read.

Names and types follow the R4 SearchParameter registry (https://hl7.org/fhir/R4/searchparameter-registry.html).
"""

from dataclasses import dataclass
from typing import Literal

ParamType = Literal["token", "reference", "date", "string"]


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: ParamType
    element: str
    """Top-level element: a token element (code, CodeableConcept, Identifier), a Reference, or a
    date element given by its [x] stem (`effective` reads effectiveDateTime / effectivePeriod)."""
    description: str
    target: str | None = None
    """The type a reference parameter points at (every subject here is a Patient); the first
    of `targets`, where it may point at several."""
    parts: tuple[str, ...] = ()
    """For a string parameter on a HumanName: the parts it reads (family, given, ...)."""
    others: tuple[str, ...] = ()
    """The other types a reference parameter may point at here."""

    @property
    def targets(self) -> tuple[str, ...]:
        """Every type a reference parameter may point at here."""
        return ((self.target,) if self.target else ()) + self.others


def _patient(element: str) -> list[SearchParam]:
    """`patient` and `subject`, by the reference element that holds the patient."""
    return [
        SearchParam(
            "patient",
            "reference",
            element,
            "The patient, by identifier (patient:identifier=system|mrn)",
            "Patient",
        ),
        SearchParam(
            "subject",
            "reference",
            element,
            "The subject, by identifier (subject:identifier=system|mrn)",
            "Patient",
        ),
    ]


def _common(date_element: str, code_element: str = "code") -> list[SearchParam]:
    return [
        SearchParam("identifier", "token", "identifier", "A business identifier"),
        SearchParam("status", "token", "status", "The status"),
        *_patient("subject"),
        SearchParam("code", "token", code_element, "The code"),
        SearchParam("date", "date", date_element, "When it happened"),
    ]


SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    "Observation": {
        p.name: p
        for p in [
            *_common("effective"),
            SearchParam("category", "token", "category", "The classification of the observation"),
            SearchParam(
                "part-of", "reference", "partOf", "The procedure it is part of", "Procedure"
            ),
            SearchParam("encounter", "reference", "encounter", "The visit", "Encounter"),
        ]
    },
    "Procedure": {
        p.name: p
        for p in [
            *_common("performed"),
            SearchParam("category", "token", "category", "The classification of the procedure"),
            SearchParam("encounter", "reference", "encounter", "The visit", "Encounter"),
            SearchParam("based-on", "reference", "basedOn", "The series' care plan", "CarePlan"),
        ]
    },
    "MedicationAdministration": {
        p.name: p
        for p in [
            *[q for q in _common("effective", "medicationCodeableConcept") if q.name != "date"],
            SearchParam("effective-time", "date", "effective", "When the medication was given"),
            SearchParam("context", "reference", "context", "The visit", "Encounter"),
        ]
    },
    "AdverseEvent": {
        p.name: p
        for p in [
            SearchParam(
                "subject",
                "reference",
                "subject",
                "The subject, by identifier (subject:identifier=system|mrn)",
                "Patient",
            ),
            SearchParam("date", "date", "date", "When the event occurred"),
            SearchParam("event", "token", "event", "The type of event"),
            SearchParam("seriousness", "token", "seriousness", "Seriousness of the event"),
            SearchParam("severity", "token", "severity", "Severity of the event"),
            SearchParam("actuality", "token", "actuality", "actual or potential"),
        ]
    },
    "Patient": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A patient identifier (the MRN)"),
            SearchParam("gender", "token", "gender", "Gender"),
            SearchParam("birthdate", "date", "birthDate", "The patient's date of birth"),
            SearchParam(
                "name",
                "string",
                "name",
                "Any part of the name: starts with, ignoring case and accents",
                parts=("text", "family", "given", "prefix", "suffix"),
            ),
            SearchParam("family", "string", "name", "The family name", parts=("family",)),
            SearchParam("given", "string", "name", "A given name", parts=("given",)),
        ]
    },
    "Encounter": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A business identifier"),
            SearchParam("status", "token", "status", "The status"),
            SearchParam("type", "token", "type", "The kind of visit"),
            *_patient("subject"),
            SearchParam("date", "date", "period", "When the visit was"),
        ]
    },
    "CarePlan": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A business identifier"),
            SearchParam("status", "token", "status", "The status"),
            SearchParam("category", "token", "category", "The kind of plan"),
            _patient("subject")[0],
            SearchParam("date", "date", "period", "The period the plan covers"),
        ]
    },
    "DetectedIssue": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A business identifier"),
            _patient("patient")[0],
            SearchParam("code", "token", "code", "The kind of breach of the protocol"),
            SearchParam("identified", "date", "identified", "When the breach happened"),
            SearchParam("date", "date", "identified", "When the breach happened (as identified)"),
            SearchParam(
                "implicated",
                "reference",
                "implicated",
                "The session's Procedure, its visit, its administration, other sessions",
                "Procedure",
                others=("Encounter", "MedicationAdministration"),
            ),
        ]
    },
    "Organization": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A business identifier"),
        ]
    },
    "Location": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A business identifier"),
            SearchParam(
                "organization", "reference", "managingOrganization", "Who runs it", "Organization"
            ),
        ]
    },
    "DocumentReference": {
        p.name: p
        for p in [
            SearchParam("identifier", "token", "identifier", "A business identifier"),
            SearchParam("status", "token", "status", "current or entered-in-error"),
            *_patient("subject"),
            SearchParam("type", "token", "type", "The kind of note"),
            SearchParam("category", "token", "category", "The category of the note"),
            SearchParam("date", "date", "date", "When the note was written"),
            SearchParam("encounter", "reference", "context.encounter", "The visit", "Encounter"),
        ]
    },
}


def _includes() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """`_include` and `_revinclude` values: every reference parameter, from its type to its
    target's and back (`Observation:encounter` on Observation, and on Encounter)."""
    includes: dict[str, list[str]] = {}
    revincludes: dict[str, list[str]] = {}
    for source, params in SEARCH_PARAMS.items():
        for param in params.values():
            if param.type == "reference" and param.target is not None:
                includes.setdefault(source, []).append(f"{source}:{param.name}")
                revincludes.setdefault(param.target, []).append(f"{source}:{param.name}")
    return includes, revincludes


INCLUDES, REVINCLUDES = _includes()
