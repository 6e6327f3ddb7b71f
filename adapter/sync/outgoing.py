"""The EHR's copy of a stored resource: the EHR's own ids in its references, the patient as a
literal reference, the site's extra codings, and nothing of the adapter's bookkeeping."""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from adapter.mapping.config import ExtraCoding

Json = dict[str, Any]
DROP = object()
"""What a resolver answers for a reference that cannot be given yet."""
Resolver = Callable[[str, str], str | object]
"""(resource type, adapter id) -> the reference to write, or DROP."""


@dataclass
class EhrCopy:
    text: str
    """The copy as compact JSON, without an id (a create); `with_id` gives that of an update."""
    dropped: list[str] = field(default_factory=list)
    """The adapter references left out (`Type/id`), to be put in by a later update."""

    def body(self) -> Json:
        parsed: Json = orjson.loads(self.text)
        return parsed

    def with_id(self, ehr_id: str) -> str:
        """The copy as the update of the EHR's resource `ehr_id`."""
        resource_type = _TYPE.match(self.text)
        if resource_type is None:
            return orjson.dumps({**self.body(), "id": ehr_id}).decode()
        return f'{resource_type[0]},"id":{_string(ehr_id)}{self.text[resource_type.end() :]}'


def identifiers(resource: Json) -> list[tuple[str, str]]:
    """(system, value) of each identifier (a list in most types, one in AdverseEvent)."""
    found = resource.get("identifier")
    listed = found if isinstance(found, list) else [found] if isinstance(found, dict) else []
    return [
        (str(i["system"]), str(i["value"])) for i in listed if i.get("system") and i.get("value")
    ]


def adapter_identifier(resource: Json, records_system: str) -> tuple[str, str] | None:
    """The identifier the adapter gave the resource (system, value): how the EHR's copy is
    found again, whatever happened to the request that created it."""
    for system, value in identifiers(resource):
        if system.startswith(records_system):
            return system, value
    return None


TEXT_TYPES = frozenset(
    {
        "Procedure",
        "Observation",
        "AdverseEvent",
        "MedicationAdministration",
        "DetectedIssue",
        "DocumentReference",
        "Encounter",
        "CarePlan",
    }
)
"""Types whose EHR copy can be made from the stored text: in R4 the patient is a top-level
element only (`subject`, or DetectedIssue's `patient`), and no other element has either name.
A resource with contained resources (an infusion's rate periods) is walked."""
_TYPE = re.compile(r'\{"resourceType":"[A-Za-z]+"')
_HEAD = re.compile(
    r'\{"resourceType":"(?P<type>[A-Za-z]+)","id":"[A-Za-z0-9.\-]{1,64}",'
    r'"meta":\{"versionId":"[^"\\]*","lastUpdated":"[^"\\]*"(?P<end>[,}])'
)
"""How the store writes every resource (resources.py): its type, its id, then meta with the
store's version and time first."""
_PATIENT = re.compile(
    r'"(?:subject|patient)":\{(?=(?P<own>"reference":"Patient/[^"\\]*",)?"type":"Patient",'
    r'"identifier":\{"system":"(?P<system>[^"\\]*)","value":"(?P<value>[^"\\]*)"\}'
    r'(?:,"display":"[^"\\]*")?\})'
)
"""A patient as the mapping writes it: the adapter's own Patient by reference (or, as stored
before Patients were served, no reference) and by identifier, and perhaps a display."""
_TEXT_REFERENCE = re.compile(r'"reference":"(?P<type>[^"/:\\]*)/(?P<id>[^"/:\\]*)"')
"""A literal `Type/id` reference in compact JSON (FHIR ids hold no quote, slash or colon)."""


def _string(value: str) -> str:
    return orjson.dumps(value).decode()


def references(contents: Iterable[str]) -> set[str]:
    """The adapter ids that these resources reference (`Type/id`), read from their stored
    compact JSON in one pass rather than by walking every element; the adapter's Patients
    aside, which the EHR never gets (its own Patient is put in their place)."""
    return {
        found[1]
        for content in contents
        for found in _TEXT_REFERENCE.findall(content)
        if found[0] != "Patient"
    }


@dataclass(frozen=True)
class StoredText:
    """A stored resource's JSON text and what the sync reads of it without parsing it, read
    once when its batch is staged. `head` is None when the text is not in the store's own
    shape for one of TEXT_TYPES: the resource is then parsed wherever it is read."""

    content: str
    head: re.Match[str] | None
    patient_keys: int
    """How many `subject` and `patient` keys the text holds."""
    patient: re.Match[str] | None
    """The one `subject` or `patient`, when it gives the patient by identifier alone."""

    @classmethod
    def of(cls, content: str) -> "StoredText":
        head = _HEAD.match(content)
        if head is None or head["type"] not in TEXT_TYPES or '"contained":' in content:
            return cls(content, None, 0, None)
        keys = content.count('"subject":') + content.count('"patient":')
        return cls(content, head, keys, _PATIENT.search(content) if keys == 1 else None)

    @cached_property
    def resource(self) -> Json:
        """The resource parsed, for what only a walk can read."""
        parsed: Json = orjson.loads(self.content)
        return parsed

    def mrn(self, mrn_system: str) -> str | None:
        """`patient_mrn` of the resource, from its text where its shape allows."""
        if self.head is not None and self.patient_keys == 0:
            return None
        if self.head is not None and self.patient is not None:
            value = self.patient["value"]
            return (value or None) if self.patient["system"] == mrn_system else None
        return patient_mrn(self.resource, mrn_system)


def text_copy(
    stored: StoredText, patient_reference: str | None, resolve: Resolver, rules: list[ExtraCoding]
) -> EhrCopy | None:
    """`ehr_copy` made from the stored text, without parsing it: the store's id and meta
    fields taken out, adapter references swapped for the EHR's, the patient's reference put
    in. None where only the walk of `ehr_copy` can make it: a text not in the store's shape,
    a reference that must be left out, extra codings for the type."""
    head, content = stored.head, stored.content
    if head is None or any(rule.resource_type == head["type"] for rule in rules):
        return None
    if patient_reference and stored.patient is None:
        return None
    own = bool(stored.patient and stored.patient["own"])
    if own:
        # The adapter's Patient is swapped for the EHR's, as any reference is swapped.
        if not patient_reference:
            return None
        resolve = _patient_first(resolve, patient_reference)
    # Otherwise the patient's reference goes in just inside its `subject`: the text is cut there.
    cut = stored.patient.end() if patient_reference and stored.patient and not own else len(content)
    before, after = content[head.end() : cut], content[cut:]
    references = _TEXT_REFERENCE.findall(before) + _TEXT_REFERENCE.findall(after)
    if len(references) != content.count('"reference":'):
        return None
    swaps: dict[tuple[str, str], str] = {}
    for target_type, target_id in dict.fromkeys(references):
        target = resolve(target_type, target_id)
        if target is DROP:
            return None
        swaps[(target_type, target_id)] = f'"reference":{_string(str(target))}'

    def swapped(part: str) -> str:
        return _TEXT_REFERENCE.sub(lambda found: swaps[(found["type"], found["id"])], part)

    # Without the store's two fields, meta keeps the rest, or goes when nothing is left.
    start = f'{{"resourceType":"{head["type"]}"' + (',"meta":{' if head["end"] == "," else "")
    patient = f'"reference":{_string(patient_reference)},' if patient_reference and not own else ""
    return EhrCopy(start + swapped(before) + patient + swapped(after))


WITHDRAWN = "entered-in-error"


def withdrawn(content: str, local_code_system: str) -> bool:
    """Whether a stored resource withdraws what its record said: its status, or for a type
    without one (AdverseEvent in R4), the site's entered-in-error tag."""
    if WITHDRAWN not in content:
        return False
    resource = orjson.loads(content)
    if resource.get("status") == WITHDRAWN:
        return True
    return any(
        tag.get("system") == local_code_system and tag.get("code") == WITHDRAWN
        for tag in resource.get("meta", {}).get("tag", [])
    )


def patient_mrn(resource: Json, mrn_system: str) -> str | None:
    subject = resource.get("subject") or resource.get("patient") or {}
    identifier = subject.get("identifier") or {}
    if identifier.get("system") == mrn_system and subject.get("type", "Patient") == "Patient":
        value = identifier.get("value")
        return str(value) if value else None
    return None


def ehr_copy(
    resource: Json,
    patient_reference: str | None,
    resolve: Resolver,
    extra_codings: list[ExtraCoding],
) -> EhrCopy:
    body, dropped = ehr_body(resource, patient_reference, resolve, extra_codings)
    return EhrCopy(orjson.dumps(body).decode(), dropped)


def _patient_first(resolve: Resolver, patient_reference: str) -> Resolver:
    """`resolve`, with the adapter's Patients answered by the EHR's Patient."""

    def resolved(resource_type: str, target_id: str) -> str | object:
        return (
            patient_reference if resource_type == "Patient" else resolve(resource_type, target_id)
        )

    return resolved


def ehr_body(
    resource: Json,
    patient_reference: str | None,
    resolve: Resolver,
    extra_codings: list[ExtraCoding],
) -> tuple[Json, list[str]]:
    """The EHR's copy by a walk of the parsed resource, and the references it left out. The
    adapter's own Patient references become the EHR's Patient, or, with none known, go."""
    body = {key: value for key, value in resource.items() if key != "id"}
    if patient_reference:
        resolve = _patient_first(resolve, patient_reference)
    else:
        for key in ("subject", "patient"):
            element = body.get(key)
            if isinstance(element, dict) and str(element.get("reference", "")).startswith(
                "Patient/"
            ):
                body[key] = {k: v for k, v in element.items() if k != "reference"}
    meta = {k: v for k, v in body.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta", None)
    dropped: list[str] = []
    for key in list(body):
        value = body[key]
        if key == "meta" or not isinstance(value, dict | list):
            continue
        if b'"reference"' not in orjson.dumps(value):
            continue  # nothing to rewrite below: the walk is skipped
        rewritten = _rewrite(body[key], resolve, dropped)
        if rewritten is DROP:
            del body[key]
        else:
            body[key] = rewritten
    if patient_reference:
        for key in ("subject", "patient"):
            if isinstance(body.get(key), dict) and "identifier" in body[key]:
                body[key] = {**body[key], "reference": patient_reference}
    _add_codings(body, extra_codings)
    return body, dropped


def _rewrite(value: Any, resolve: Resolver, dropped: list[str]) -> Any:
    """Rewrite adapter references; a reference that cannot be given yet takes with it the
    nearest list element (or top-level element) holding it, so that nothing is left half."""
    if isinstance(value, list):
        kept = [_rewrite(item, resolve, dropped) for item in value]
        kept = [item for item in kept if item is not DROP]
        return kept if kept else DROP
    if not isinstance(value, dict):
        return value
    reference = value.get("reference")
    if isinstance(reference, str) and reference.count("/") == 1 and ":" not in reference:
        resource_type, resource_id = reference.split("/")
        target = resolve(resource_type, resource_id)
        if target is DROP:
            dropped.append(reference)
            return DROP
        value = {**value, "reference": target}
    result = {}
    for key, item in value.items():
        rewritten = _rewrite(item, resolve, dropped)
        if rewritten is DROP:
            return DROP
        result[key] = rewritten
    return result


def _add_codings(body: Json, rules: list[ExtraCoding]) -> None:
    codings = body.get("code", {}).get("coding", [])
    present = {(c.get("system"), c.get("code")) for c in codings}
    for rule in rules:
        if rule.resource_type != body.get("resourceType"):
            continue
        if (rule.match.system, rule.match.code) in present:
            added = {"system": rule.add.system, "code": rule.add.code, "display": rule.add.display}
            if (added["system"], added["code"]) not in present:
                codings.append(added)
                present.add((added["system"], added["code"]))


def says_the_same(ours: Json, theirs: Json) -> bool:
    """Whether the EHR's copy says what ours says: every element we send, unchanged (the EHR
    may add its own, such as meta or a narrative)."""
    return all(theirs.get(key) == value for key, value in ours.items() if key != "meta")


def provably_ours(
    copies: list[Json], resource: Json, extra_codings: list[ExtraCoding]
) -> Json | None:
    """Of several EHR copies carrying a resource's identifier, the first stored, when every one
    says what the adapter sends apart from its references (each a write of the adapter's own,
    stored twice, whose references point at copies of its own Bundle); None when any says
    something else (someone may have changed it: a person decides)."""
    ours, _ = ehr_body(resource, None, lambda kind, _: f"{kind}/?", extra_codings)
    plain = _unreferenced(ours)
    if not all(says_the_same(plain, _unreferenced(theirs)) for theirs in copies):
        return None
    return min(copies, key=lambda c: (str(c.get("meta", {}).get("lastUpdated", "")), str(c["id"])))


def _unreferenced(value: Any) -> Any:
    """A copy of the value without its `reference` elements."""
    if isinstance(value, list):
        return [_unreferenced(item) for item in value]
    if isinstance(value, dict):
        return {k: _unreferenced(v) for k, v in value.items() if k != "reference"}
    return value
