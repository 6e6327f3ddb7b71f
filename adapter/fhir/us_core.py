"""US Core 6.1.0 (https://hl7.org/fhir/us/core/STU6.1/): the profiles the adapter's resources
claim, and a check of what each profile makes mandatory, which neither fhir.resources nor the
base R4 rules check.

A resource claims a profile by its type (and an Observation by its LOINC code), and every
claimed profile is checked before the resource is emitted: a claim the resource does not meet
is a defect of the adapter, refused like any other invalid resource. AdverseEvent, DetectedIssue
and MedicationAdministration have no US Core 6.1 profile; the Observations of pain, sedation,
fasting and transport fit none of its Observation profiles, and claim none.
"""

from collections.abc import Callable, Iterator
from typing import Any

from adapter.fhir import rules

Json = dict[str, Any]
BASE = "http://hl7.org/fhir/us/core/StructureDefinition/"
PATIENT = f"{BASE}us-core-patient"
ENCOUNTER = f"{BASE}us-core-encounter"
PROCEDURE = f"{BASE}us-core-procedure"
CARE_PLAN = f"{BASE}us-core-careplan"
DOCUMENT_REFERENCE = f"{BASE}us-core-documentreference"
VITAL_SIGNS = f"{BASE}us-core-vital-signs"
LOINC = "http://loinc.org"
CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
DOCUMENT_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

VITAL_SIGN_PROFILES: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {
    "8867-4": (f"{BASE}us-core-heart-rate", frozenset({"8867-4"}), frozenset({"/min"})),
    "9279-1": (f"{BASE}us-core-respiratory-rate", frozenset({"9279-1"}), frozenset({"/min"})),
    "8310-5": (
        f"{BASE}us-core-body-temperature",
        frozenset({"8310-5"}),
        frozenset({"Cel", "[degF]"}),
    ),
    "29463-7": (
        f"{BASE}us-core-body-weight",
        frozenset({"29463-7"}),
        frozenset({"kg", "g", "[lb_av]"}),
    ),
    "59408-5": (
        f"{BASE}us-core-pulse-oximetry",
        frozenset({"59408-5", "2708-6"}),
        frozenset({"%"}),
    ),
    "85354-9": (f"{BASE}us-core-blood-pressure", frozenset({"85354-9"}), frozenset()),
}
"""LOINC code -> (the vital sign's profile, the LOINC codes it needs, its UCUM units)."""
BLOOD_PRESSURE_COMPONENTS = ("8480-6", "8462-4")
"""Systolic and diastolic, each a component in mm[Hg]."""


def _codes(concept: Any, system: str | None = None) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {
        str(c.get("code"))
        for c in concept.get("coding", [])
        if system is None or c.get("system") == system
    }


def _categories(resource: Json, system: str) -> set[str]:
    return {code for concept in resource.get("category", []) for code in _codes(concept, system)}


def _patient_reference(resource: Json, element: str) -> Iterator[str]:
    reference = resource.get(element)
    if not isinstance(reference, dict) or not str(reference.get("reference", "")).startswith(
        "Patient/"
    ):
        yield f"{element}: a reference to the Patient is mandatory"


def _present(resource: Json, *elements: str) -> Iterator[str]:
    for element in elements:
        if resource.get(element) in (None, "", [], {}):
            yield f"{element}: mandatory"


def _patient(resource: Json) -> Iterator[str]:
    yield from _present(resource, "identifier", "name", "gender")
    for index, identifier in enumerate(resource.get("identifier", [])):
        if not identifier.get("system") or not identifier.get("value"):
            yield f"identifier[{index}]: a system and a value are mandatory"
    for index, name in enumerate(resource.get("name", [])):
        absent = any(e.get("url") == DATA_ABSENT_REASON for e in name.get("extension", []))
        if not (name.get("family") or name.get("given")) and not absent:
            yield f"name[{index}]: us-core-6, a family or given name, or a data-absent-reason"


def _encounter(resource: Json) -> Iterator[str]:
    yield from _present(resource, "status", "class", "type")
    yield from _patient_reference(resource, "subject")


def _procedure(resource: Json) -> Iterator[str]:
    yield from _present(resource, "status", "code")
    yield from _patient_reference(resource, "subject")
    performed = "performedDateTime" in resource or "performedPeriod" in resource
    if resource.get("status") in ("completed", "in-progress") and not performed:
        yield "performed[x]: us-core-7, mandatory when the procedure is completed or in progress"


def _care_plan(resource: Json) -> Iterator[str]:
    yield from _present(resource, "status", "intent", "category")
    text = resource.get("text") or {}
    if not text.get("status") or not text.get("div"):
        yield "text: a narrative with its status is mandatory"
    if "assess-plan" not in _categories(resource, CAREPLAN_CATEGORY):
        yield f"category: the assess-plan category ({CAREPLAN_CATEGORY}) is mandatory"
    yield from _patient_reference(resource, "subject")


def _document_reference(resource: Json) -> Iterator[str]:
    yield from _present(resource, "status", "type", "category", "content")
    if "clinical-note" not in _categories(resource, DOCUMENT_CATEGORY):
        yield f"category: the clinical-note category ({DOCUMENT_CATEGORY}) is mandatory"
    yield from _patient_reference(resource, "subject")
    for index, content in enumerate(resource.get("content", [])):
        attachment = content.get("attachment", {})
        if not attachment.get("contentType"):
            yield f"content[{index}].attachment.contentType: mandatory"
        if "url" not in attachment and "data" not in attachment:
            yield f"content[{index}].attachment: us-core-6, a url or data is mandatory"


def _quantity_units(quantity: Any, units: frozenset[str], path: str) -> Iterator[str]:
    if not isinstance(quantity, dict):
        return
    if not {"value", "unit", "system", "code"} <= set(quantity):
        yield f"{path}: value, unit, system and code are mandatory"
    if quantity.get("system") != rules.UCUM or (units and quantity.get("code") not in units):
        yield f"{path}: the unit must be one of {', '.join(sorted(units))} (UCUM)"


def _vital_signs(resource: Json) -> Iterator[str]:
    yield from _present(resource, "status", "code")
    if "vital-signs" not in _categories(resource, rules.OBSERVATION_CATEGORY):
        yield "category: the vital-signs category is mandatory"
    yield from _patient_reference(resource, "subject")
    if "effectiveDateTime" not in resource and "effectivePeriod" not in resource:
        yield "effective[x]: a dateTime or a Period is mandatory"
    codes = _codes(resource.get("code"), LOINC)
    for code, (profile, needed, units) in VITAL_SIGN_PROFILES.items():
        if code not in codes:
            continue
        name = profile.removeprefix(BASE)
        for missing in sorted(needed - codes):
            yield f"code: {name} needs the LOINC code {missing}"
        yield from _quantity_units(resource.get("valueQuantity"), units, "valueQuantity")
        if code == "85354-9":
            yield from _blood_pressure(resource)


def _blood_pressure(resource: Json) -> Iterator[str]:
    for needed in BLOOD_PRESSURE_COMPONENTS:
        found = [c for c in resource.get("component", []) if needed in _codes(c.get("code"), LOINC)]
        if len(found) != 1:
            yield f"component: us-core-blood-pressure needs one component coded {needed}"
            continue
        if "valueQuantity" not in found[0] and "dataAbsentReason" not in found[0]:
            yield f"component {needed}: a valueQuantity or a dataAbsentReason is mandatory"
        yield from _quantity_units(
            found[0].get("valueQuantity"), frozenset({"mm[Hg]"}), f"component {needed}"
        )


CHECKS: dict[str, Callable[[Json], Iterator[str]]] = {
    PATIENT: _patient,
    ENCOUNTER: _encounter,
    PROCEDURE: _procedure,
    CARE_PLAN: _care_plan,
    DOCUMENT_REFERENCE: _document_reference,
    VITAL_SIGNS: _vital_signs,
}
BY_TYPE = {
    "Patient": PATIENT,
    "Encounter": ENCOUNTER,
    "Procedure": PROCEDURE,
    "CarePlan": CARE_PLAN,
    "DocumentReference": DOCUMENT_REFERENCE,
}
SUPPORTED_PROFILES: dict[str, list[str]] = {
    **{resource_type: [profile] for resource_type, profile in BY_TYPE.items()},
    "Observation": [VITAL_SIGNS, *(profile for profile, _, _ in VITAL_SIGN_PROFILES.values())],
}
"""Per type, the US Core profiles its resources may claim (the CapabilityStatement's list)."""


def profiles(resource: Json) -> list[str]:
    """The US Core profiles a resource claims: by its type, or for a vital sign by its code."""
    resource_type = resource.get("resourceType")
    if resource_type in BY_TYPE:
        return [BY_TYPE[str(resource_type)]]
    if resource_type != "Observation":
        return []
    if "vital-signs" not in _categories(resource, rules.OBSERVATION_CATEGORY):
        return []
    codes = _codes(resource.get("code"), LOINC)
    specific = [profile for code, (profile, _, _) in VITAL_SIGN_PROFILES.items() if code in codes]
    return [VITAL_SIGNS, *specific]


def claim(resource: Json) -> None:
    """Add the resource's US Core profiles to `meta.profile`, after those it already claims."""
    claimed = profiles(resource)
    if not claimed:
        return
    meta = resource.setdefault("meta", {})
    existing = list(meta.get("profile", []))
    meta["profile"] = existing + [p for p in claimed if p not in existing]


def problems(resource: Json) -> Iterator[str]:
    """What a resource lacks of the US Core profiles it claims, each naming the profile and the
    element (a vital sign's own profile is checked with the vital signs profile it builds on)."""
    claimed = resource.get("meta", {}).get("profile", [])
    checks = {CHECKS[p] for p in claimed if p in CHECKS}
    if any(p in SUPPORTED_PROFILES["Observation"] for p in claimed):
        checks.add(_vital_signs)
    for check in sorted(checks, key=lambda c: c.__name__):
        for problem in check(resource):
            yield f"US Core {check.__name__.strip('_').replace('_', ' ')}: {problem}"
