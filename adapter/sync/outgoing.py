"""The EHR's copy of a stored resource: the EHR's own ids in its references, the patient as a
literal reference, the site's extra codings, and nothing of the adapter's bookkeeping."""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
    body: Json
    dropped: list[str] = field(default_factory=list)
    """The adapter references left out (`Type/id`), to be put in by a later update."""


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


_REFERENCE = re.compile(rb'"reference":"[A-Za-z]+/([^"/]+)"')
"""A literal `Type/id` reference in compact JSON (FHIR ids hold no quote or slash)."""


def references(contents: Iterable[str]) -> set[str]:
    """The adapter ids that these resources reference (`Type/id`), read from their stored
    compact JSON in one pass rather than by walking every element."""
    return {
        target.decode() for content in contents for target in _REFERENCE.findall(content.encode())
    }


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
    body = {key: value for key, value in resource.items() if key != "id"}
    meta = {k: v for k, v in body.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta", None)
    copy = EhrCopy(body)
    for key in list(body):
        value = body[key]
        if key == "meta" or not isinstance(value, dict | list):
            continue
        if b'"reference"' not in orjson.dumps(value):
            continue  # nothing to rewrite below: the walk is skipped
        rewritten = _rewrite(body[key], resolve, copy.dropped)
        if rewritten is DROP:
            del body[key]
        else:
            body[key] = rewritten
    if patient_reference:
        for key in ("subject", "patient"):
            if isinstance(body.get(key), dict) and "identifier" in body[key]:
                body[key] = {**body[key], "reference": patient_reference}
    _add_codings(body, extra_codings)
    return copy


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
