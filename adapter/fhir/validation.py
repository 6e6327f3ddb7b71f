"""Checks every resource the adapter emits: fhir.resources, then what it does not check.

fhir.resources validates structure (elements, types, cardinality) and each primitive value.
Resources built by the same code path share a structure, so the structure is validated by the
model once per shape (the keys, their nesting and their JSON types), and each later resource of
that shape has its primitive values checked by the very validators the model uses for those
elements. A value the model would refuse is refused either way; the adapter's own checks
(required bindings, reference targets, UCUM units, the vital signs profile, the US Core profiles
the resource claims) run on every resource.
"""

import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import TypeAdapter

from adapter.fhir import rules, us_core
from adapter.fhir.models import FHIRAbstractModel, ValidationError, model_class, parse


class InvalidResource(Exception):
    """A resource the adapter built and must not emit; each problem names the element."""

    def __init__(self, resource_type: str, problems: list[str]) -> None:
        super().__init__(f"{resource_type}: " + "; ".join(problems))
        self.resource_type = resource_type
        self.problems = problems


Leaf = Callable[[Any], Any]
Shape = tuple[Any, ...]
ACCEPTED_LIMIT = 20_000
"""Values remembered as accepted, at most: the codes, systems and units that recur are back
within a batch after the set is emptied, and the values seen once (ids, times, text) are what
fill it. At 200,000 it held some 40 MB of a long-running service's memory."""
PLANS_LIMIT = 2_000
"""Resource shapes remembered, at most (a few dozen in a day of the clinic's records)."""


@cache
def _leaf_validator(annotation: Any) -> Leaf:
    validate: Leaf = TypeAdapter(annotation).validator.validate_python
    return validate


def _primitive(annotation: Any) -> Any:
    """The Annotated[...] primitive inside Optional[...] / List[...] of a model field."""
    while typing.get_origin(annotation) in (typing.Union, list, typing.List) or (  # noqa: UP006
        type(annotation).__name__ == "UnionType"
    ):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


@cache
def _fields_by_alias(model: type[FHIRAbstractModel]) -> dict[str, tuple[str, Any]]:
    return {
        (field.alias or name): (name, field.annotation)
        for name, field in model.model_fields.items()
    }


_REFERENCE_ELEMENTS = frozenset(
    {
        "subject",
        "actor",
        "recorder",
        "location",
        "partOf",
        "performer",
        "device",
        "instance",
        "supportingInformation",
        "valueReference",
        "patient",
        "implicated",
        "detail",
        "author",
        "related",
        "reasonReference",
        "encounter",
        "basedOn",
        "context",
        "individual",
        "outcomeReference",
    }
)


class _Walk:
    """One pass over a resource: its shape, its primitive leaves in document order, its
    references and quantities, and what FHIR JSON forbids (nulls, empty values)."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.leaves: list[Any] = []
        self.problems: list[str] = []
        self.references: list[tuple[str, dict[str, Any]]] = []
        self.quantities: list[tuple[str, dict[str, Any]]] = []
        self.shape = self._object(resource, "")

    def _object(self, value: dict[str, Any], path: str) -> Shape:
        parts: list[Any] = []
        for key, item in value.items():
            if key == "resourceType":
                parts.append((key, item))
                continue
            child = f"{path}.{key}" if path else key
            if isinstance(item, dict):
                parts.append((key, self._element(item, key, child)))
            elif isinstance(item, list):
                if not item:
                    self.problems.append(f"{child}: empty array (FHIR JSON forbids it)")
                elements: list[Any] = ["[]"]
                for element in item:
                    if isinstance(element, dict):
                        elements.append(self._element(element, key, child))
                    else:
                        elements.append(self._leaf(element, child))
                parts.append((key, tuple(elements)))
            else:
                parts.append((key, self._leaf(item, child)))
        return tuple(parts)

    def _element(self, value: dict[str, Any], key: str, path: str) -> Shape:
        if not value:
            self.problems.append(f"{path}: empty object (FHIR JSON forbids it)")
        if key in _REFERENCE_ELEMENTS and ("reference" in value or "identifier" in value):
            self.references.append((path, value))
        elif "value" in value and ("unit" in value or "code" in value):
            number = value["value"]
            if isinstance(number, int | float) and not isinstance(number, bool):
                self.quantities.append((path, value))
        return self._object(value, path)

    def _leaf(self, value: Any, path: str) -> type:
        if value is None or value == "":
            self.problems.append(f"{path}: null or empty value (FHIR JSON forbids it)")
        self.leaves.append(value)
        return type(value)


def _leaf_plan(model: FHIRAbstractModel, value: dict[str, Any]) -> list[Leaf]:
    """The validator of each primitive leaf of `value`, in document order, from the model."""
    plan: list[Leaf] = []
    fields = _fields_by_alias(type(model))
    for key, item in value.items():
        if key == "resourceType":
            continue
        name, annotation = fields[key]
        child = getattr(model, name)
        items, children = (item, child) if isinstance(item, list) else ([item], [child])
        for element, element_model in zip(items, children, strict=True):
            if isinstance(element, dict):
                plan += _leaf_plan(element_model, element)
            else:
                plan.append(_leaf_validator(_primitive(annotation)))
    return plan


@dataclass
class _Plan:
    leaves: list[Leaf]


class ResourceValidator:
    """Validates resources; remembers each validated shape so that its values are checked fast."""

    def __init__(self) -> None:
        self._plans: dict[Shape, _Plan] = {}
        # Values a leaf validator accepted before: the same validator accepts them again.
        self._accepted: set[tuple[Leaf, type, Any]] = set()

    def check(self, resource: dict[str, Any]) -> None:
        """Raise InvalidResource with every problem found in `resource`."""
        resource_type = str(resource.get("resourceType"))
        walk = _Walk(resource)
        problems = walk.problems
        if not problems:
            problems += self._structure_and_values(resource, walk.shape, walk.leaves)
        problems += list(_own_checks(resource, walk))
        if problems:
            raise InvalidResource(resource_type, problems)

    def _structure_and_values(
        self, resource: dict[str, Any], shape: Shape, leaves: list[Any]
    ) -> list[str]:
        plan = self._plans.get(shape)
        if plan is None:
            try:
                model_class(str(resource.get("resourceType")))
                model = parse(resource)
            except KeyError:
                return ["resourceType: not a FHIR R4 resource type"]
            except ValidationError as exc:
                return _model_problems(exc)
            if len(self._plans) >= PLANS_LIMIT:
                self._plans.clear()
            self._plans[shape] = _Plan(_leaf_plan(model, resource))
            return []
        problems = []
        accepted = self._accepted
        for validate, value in zip(plan.leaves, leaves, strict=True):
            key = (validate, type(value), value)
            if key in accepted:
                continue
            try:
                validate(value)
            except ValidationError as exc:
                problems.append(exc.errors(include_url=False)[0]["msg"])
                continue
            if len(accepted) >= ACCEPTED_LIMIT:
                accepted.clear()
            accepted.add(key)
        if problems:
            # Name the elements with the model's own messages.
            try:
                parse(resource)
            except ValidationError as exc:
                return _model_problems(exc)
        return problems


def _model_problems(exc: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _coded(value: Any) -> list[dict[str, Any]]:
    return list(value.get("coding", [])) if isinstance(value, dict) else []


def own_checks(resource: dict[str, Any]) -> Iterator[str]:
    """The rules fhir.resources does not check: bindings, reference targets, units, profiles."""
    return _own_checks(resource, _Walk(resource))


def _own_checks(resource: dict[str, Any], walk: _Walk) -> Iterator[str]:
    resource_type = str(resource.get("resourceType"))
    for (rtype, element), codes in rules.REQUIRED_CODES.items():
        if rtype == resource_type and element in resource and resource[element] not in codes:
            yield f"{element}: {resource[element]!r} is not in the required value set"
    for (rtype, element), (system, codes) in rules.REQUIRED_CODINGS.items():
        if rtype == resource_type and element in resource:
            for coding in _coded(resource[element]):
                if coding.get("system") != system or coding.get("code") not in codes:
                    yield f"{element}: {coding.get('code')!r} is not in the required value set"
    for path, reference in walk.references:
        allowed = rules.REFERENCE_TARGETS.get((resource_type, path))
        if allowed is None:
            yield f"{path}: a reference element the adapter has no target rule for"
            continue
        literal = str(reference.get("reference", ""))
        if literal.startswith("#"):
            continue  # a contained resource, or (`#`) the resource that contains this one
        target = literal.split("/")[0] or reference.get("type")
        if allowed and target not in allowed:
            yield f"{path}: {target!r} is not an allowed target ({', '.join(sorted(allowed))})"
    for path, quantity in walk.quantities:
        if quantity.get("system") != rules.UCUM or quantity.get("code") not in rules.UCUM_UNITS:
            yield f"{path}: unit must be a known UCUM code with system {rules.UCUM}"
        if "comparator" in quantity and quantity["comparator"] not in rules.QUANTITY_COMPARATORS:
            yield f"{path}.comparator: not in the required value set"
    if resource_type == "MedicationAdministration" and "dosage" in resource:
        dosage = resource["dosage"]
        if "dose" not in dosage and not any(key.startswith("rate") for key in dosage):
            yield "dosage: mad-1, a dosage needs a dose or a rate"
    if rules.VITAL_SIGNS_PROFILE in resource.get("meta", {}).get("profile", []):
        yield from _vital_signs_checks(resource)
    yield from us_core.problems(resource)
    for profile in resource.get("meta", {}).get("profile", []):
        if profile in rules.BALP_PROFILES:
            yield from _balp_checks(resource, rules.BALP_PROFILES[profile])


def _vital_signs_checks(resource: dict[str, Any]) -> Iterator[str]:
    """http://hl7.org/fhir/StructureDefinition/vitalsigns: category, subject, effective, value."""
    categories = [c for concept in resource.get("category", []) for c in _coded(concept)]
    if not any(
        c.get("system") == rules.OBSERVATION_CATEGORY and c.get("code") == "vital-signs"
        for c in categories
    ):
        yield "category: the vital signs profile needs the vital-signs category"
    if "subject" not in resource:
        yield "subject: required by the vital signs profile"
    if "effectiveDateTime" not in resource and "effectivePeriod" not in resource:
        yield "effective[x]: required by the vital signs profile"
    has_value = any(key.startswith("value") for key in resource) or "dataAbsentReason" in resource
    if not has_value and "component" not in resource and "hasMember" not in resource:
        yield "value[x]: vs-2, a value, a dataAbsentReason, a component or a hasMember is required"
    for index, component in enumerate(resource.get("component", [])):
        if (
            not any(k.startswith("value") for k in component)
            and "dataAbsentReason" not in component
        ):
            yield f"component[{index}]: vs-3, a value or a dataAbsentReason is required"
    quantity = resource.get("valueQuantity")
    if quantity is not None and not {"value", "unit", "system", "code"} <= set(quantity):
        yield "valueQuantity: the vital signs profile needs value, unit, system and code"


def _balp_checks(event: dict[str, Any], shape: dict[str, Any]) -> Iterator[str]:
    """An AuditEvent against what a BALP profile fixes (rules.BALP_PROFILES)."""
    kind = event.get("type", {})
    if (kind.get("system"), kind.get("code")) != (rules.AUDIT_EVENT_TYPE, "rest"):
        yield "type: BALP needs audit-event-type rest"
    if not any(
        c.get("system") == rules.RESTFUL_INTERACTION and c.get("code") in shape["subtypes"]
        for c in event.get("subtype", [])
    ):
        yield f"subtype: BALP needs one of {', '.join(sorted(shape['subtypes']))}"
    if event.get("action") != shape["action"]:
        yield f"action: BALP needs {shape['action']}"
    if event.get("outcome") != "0":
        yield "outcome: the BALP profiles record successes (0)"

    def agent(role: str) -> dict[str, Any] | None:
        for candidate in event.get("agent", []):
            codings = candidate.get("type", {}).get("coding", [])
            if any(c.get("system") == rules.DICOM and c.get("code") == role for c in codings):
                return dict(candidate)
        return None

    client, server = agent(shape["client_role"]), agent(shape["server_role"])
    if client is None or "who" not in client or "network" not in client:
        yield f"agent: BALP needs the client ({shape['client_role']}) with who and network"
    if server is None or "who" not in server:
        yield f"agent: BALP needs the server ({shape['server_role']}) with who"
    if "source" not in event:
        yield "source: required"
    if shape.get("query") and not any(
        (e.get("role", {}).get("system"), e.get("role", {}).get("code"))
        == (rules.OBJECT_ROLE, rules.QUERY_ROLE)
        and e.get("query")
        for e in event.get("entity", [])
    ):
        yield "entity: BALP Query needs the query entity (role 24) with the query"
