"""What the EHR takes, read from its CapabilityStatement and the site's overrides: per resource
type, whether to deliver it at all, in which kind of request, and with which safeguards."""

from dataclasses import dataclass, replace
from typing import Any, Literal

from adapter.mapping.config import DeliveredType, EhrRules, TypeDelivery
from adapter.store.outbox import STAND_INS
from adapter.sync.errors import EhrConfigurationError, TemporaryEhrError

Mode = Literal["transaction", "batch", "single"]
DELIVERED_TYPES: tuple[DeliveredType, ...] = (
    "Encounter",
    "CarePlan",
    "Procedure",
    "MedicationAdministration",
    "AdverseEvent",
    "Observation",
    "DetectedIssue",
    "DocumentReference",
)
WITHOUT_STATUS = frozenset({"AdverseEvent"})
"""Types whose withdrawal no status can say in R4: deleted where the EHR allows it."""


@dataclass(frozen=True)
class DeliveryPlan:
    deliver: bool
    mode: Mode
    conditional_create: bool
    if_match: bool
    reason: str | None = None
    """Why the type is not delivered, when it is not."""
    withdraw_by_delete: bool = False
    """A withdrawn resource deletes the EHR's copy rather than updating it."""


def _choice(override: str, found: bool) -> bool:
    return found if override == "auto" else override == "yes"


def check_statement(statement: dict[str, Any] | None, rules: EhrRules) -> dict[str, Any]:
    """The EHR's answer to `GET metadata` when it is a CapabilityStatement of a server that
    speaks a FHIR version the site accepts. An answer that is not one is the EHR failing (an
    error, never read as "the EHR accepts nothing"); another FHIR version is for a person to
    decide (`fhir_versions` in mappings/ehr.yaml)."""
    if not statement or statement.get("resourceType") != "CapabilityStatement":
        kind = (statement or {}).get("resourceType", "nothing")
        raise TemporaryEhrError(
            200, f"GET metadata answered {kind}, not a CapabilityStatement", sent=False
        )
    if not any(part.get("mode") == "server" for part in statement.get("rest", [])):
        raise TemporaryEhrError(
            200, "the EHR's CapabilityStatement describes no server (rest.mode)", sent=False
        )
    announced = str(statement.get("fhirVersion") or "")
    if not any(announced == v or announced.startswith(f"{v}.") for v in rules.fhir_versions):
        raise EhrConfigurationError(
            f"the EHR announces FHIR version {announced or '(none)'} and the adapter sends R4 "
            f"(4.0.1) resources: the site accepts {', '.join(rules.fhir_versions)} "
            "(fhir_versions in mappings/ehr.yaml); nothing is sent"
        )
    return statement


def deletable(statement: dict[str, Any]) -> set[str]:
    """The resource types whose CapabilityStatement entry lists `delete`."""
    rest: dict[str, Any] = next(
        (part for part in statement.get("rest", []) if part.get("mode") == "server"), {}
    )
    return {
        str(entry.get("type"))
        for entry in rest.get("resource", [])
        if any(i.get("code") == "delete" for i in entry.get("interaction", []))
    }


def plan_delivery(statement: dict[str, Any], rules: EhrRules) -> dict[str, DeliveryPlan]:
    """A plan for every resource type the adapter emits (those named in `rules` and the rest)."""
    rest: dict[str, Any] = next(
        (part for part in statement.get("rest", []) if part.get("mode") == "server"),
        {},
    )
    system = {entry.get("code") for entry in rest.get("interaction", [])}
    found_mode: Mode = (
        "transaction" if "transaction" in system else "batch" if "batch" in system else "single"
    )
    described = {entry.get("type"): entry for entry in rest.get("resource", [])}
    plans: dict[str, DeliveryPlan] = {}
    for resource_type in DELIVERED_TYPES:
        entry = described.get(resource_type, {})
        override = rules.resource_types.get(resource_type, TypeDelivery())
        interactions = {i.get("code") for i in entry.get("interaction", [])}
        writable = {"create", "update"} <= interactions
        deliver = _choice(override.deliver, writable)
        reason = None
        if not deliver:
            reason = (
                "mappings/ehr.yaml says not to deliver it"
                if override.deliver == "no"
                else f"the EHR's CapabilityStatement lists no create and update for "
                f"{resource_type}; it stays available to pull"
            )
        plans[resource_type] = DeliveryPlan(
            deliver=deliver,
            mode=found_mode if override.mode == "auto" else override.mode,
            conditional_create=_choice(
                override.conditional_create, entry.get("conditionalCreate") is True
            ),
            if_match=_choice(override.if_match, entry.get("versioning") == "versioned-update"),
            reason=reason,
            withdraw_by_delete=override.withdraw == "delete"
            or (
                override.withdraw == "auto"
                and resource_type in WITHOUT_STATUS
                and "delete" in interactions
            ),
        )
    plans["Encounter"] = _encounters(plans["Encounter"], rules)
    for (_, stand_in), stood_for in STAND_INS.items():
        plans[f"{stood_for}>{stand_in}"] = _stand_in(plans, rules, stood_for, stand_in)
    return plans


def _encounters(plan: DeliveryPlan, rules: EhrRules) -> DeliveryPlan:
    """The adapter's Encounters are delivered as ehr.yaml `encounters.use` says: `auto` as the
    CapabilityStatement allows; `create` always; never with `ehr` (the EHR's own is named)
    or `omit` (none is)."""
    use = rules.encounters.use
    if use == "create":
        return replace(plan, deliver=True, reason=None)
    if use == "ehr":
        return replace(
            plan,
            deliver=False,
            reason="mappings/ehr.yaml encounters.use is ehr: the EHR's own Encounter for the "
            "visit is referenced instead",
        )
    if use == "omit":
        return replace(
            plan,
            deliver=False,
            reason="mappings/ehr.yaml encounters.use is omit: no Encounter is referenced",
        )
    return plan


def _stand_in(
    plans: dict[str, DeliveryPlan], rules: EhrRules, stood_for: str, resource_type: str
) -> DeliveryPlan:
    """The plan of a resource standing in for `stood_for`: its own type's, delivered when the
    EHR does not take `stood_for` (or as ehr.yaml `stand_ins` says)."""
    own, original = plans[resource_type], plans[stood_for]
    rule = getattr(rules.stand_ins, stood_for)
    wanted = resource_type in rule.types and (
        rule.deliver == "yes" or (rule.deliver == "auto" and not original.deliver)
    )
    reason = None
    if not wanted:
        reason = (
            f"the EHR takes {stood_for}, which this {resource_type} stands in for"
            if original.deliver and rule.deliver == "auto"
            else f"mappings/ehr.yaml stand_ins.{stood_for} does not ask for it"
        )
    elif not own.deliver:
        reason = own.reason
    return replace(own, deliver=wanted and own.deliver, reason=reason)
