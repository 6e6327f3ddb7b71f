"""What the EHR takes, read from its CapabilityStatement and the site's overrides: per resource
type, whether to deliver it at all, in which kind of request, and with which safeguards."""

from dataclasses import dataclass
from typing import Any, Literal

from adapter.mapping.config import EhrRules, TypeDelivery

Mode = Literal["transaction", "batch", "single"]


@dataclass(frozen=True)
class DeliveryPlan:
    deliver: bool
    mode: Mode
    conditional_create: bool
    if_match: bool
    reason: str | None = None
    """Why the type is not delivered, when it is not."""


def _choice(override: str, found: bool) -> bool:
    return found if override == "auto" else override == "yes"


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
    for resource_type in ("Procedure", "MedicationAdministration", "AdverseEvent", "Observation"):
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
        )
    return plans
