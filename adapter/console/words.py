"""Why a record or a resource is where it is, in words a person acts on."""

from typing import Any

from adapter.operations.outcomes import ITEM_OUTCOMES
from adapter.sync.patients import CONFIRMABLE, NOT_FOUND

DELIVERY_STATES = {
    "delivered": "in the EHR",
    "pending": "queued for the next run",
    "waiting": "held back",
    "dead": "refused by the EHR",
    "skipped": "not for this EHR",
    None: "not queued",
}
MAPPING_STATES = {
    "pending": "being mapped",
    "mapped": "mapped",
    "uncoded": "mapped, a code as text alone",
    "waiting": "held",
    "failed": "could not be mapped",
}


def code_words(missing: dict[str, Any]) -> str:
    return (
        f"the {missing.get('field', 'code')} code “{missing.get('code')}” has no row in "
        f"{missing.get('table')}"
    )


def mapping_reason(state: str, detail: dict[str, Any]) -> str:
    """Why a record is held (or sent with text alone), from its mapping detail."""
    if detail.get("missing"):
        return "waiting for a mapping row: " + "; ".join(code_words(m) for m in detail["missing"])
    if detail.get("waiting_for"):
        return f"waiting for {detail['waiting_for']}"
    if detail.get("uncoded"):
        return "sent with the clinic's text alone: " + "; ".join(
            code_words(m) for m in detail["uncoded"]
        )
    if state == "failed":
        problems = "; ".join(str(p) for p in detail.get("problems", [])[:3])
        return f"mapping made an invalid {detail.get('resource_type', 'resource')}: {problems}"
    return MAPPING_STATES.get(state, state)


def outcome_text(outcome: Any) -> str:
    """The diagnostics of an OperationOutcome, in one line."""
    if not isinstance(outcome, dict):
        return ""
    said = [
        str(issue.get("diagnostics") or issue.get("details", {}).get("text") or issue.get("code"))
        for issue in outcome.get("issue", [])
        if isinstance(issue, dict)
    ]
    return "; ".join(s for s in said if s and s != "None")


def delivery_reason(state: str | None, detail: dict[str, Any]) -> str:
    """Why a resource is not in the EHR (or how it got there), from its outbox detail."""
    reason = str(detail.get("reason") or "")
    if state == "dead":
        said = outcome_text(detail.get("outcome"))
        status = f"the EHR answered {detail['status']}" if detail.get("status") else "refused"
        return f"{status}: {reason}" + (f" — the EHR says: {said}" if said else "")
    if state == "waiting":
        mrn = f" (MRN {detail['patient_mrn']})" if detail.get("patient_mrn") else ""
        return f"{reason}{mrn}" if reason else ITEM_OUTCOMES["waiting"]
    if state == "pending" and detail.get("left_out"):
        return ITEM_OUTCOMES["delivered_partially"]
    if state == "pending" and reason:
        return f"to be tried again: {reason}"
    return reason or DELIVERY_STATES.get(state, state or "")


def what_to_do(state: str, reason: str) -> str:
    """What a person does about a held or refused reason."""
    if reason in CONFIRMABLE:
        return (
            "Open the MRN to compare the EHR's Patient with the clinic's records; confirm it there "
            "if it is the same person, then replay."
        )
    if reason == NOT_FOUND:
        return (
            "The MRN is wrong in the EHR or in the clinic's system: correct it there (the clinic's "
            "system sends a new revision of the record), then replay."
        )
    if state == "dead":
        return "Fix what the EHR says (a mapping row, the EHR's settings), then replay."
    return ""
